#!/usr/bin/env python
"""Stage one: cache a frozen backbone's pooled features in HDF5. See ``--help``."""

from features.cli import main

if __name__ == "__main__":
    main()
