#!/usr/bin/env python
"""Stage one: cache a frozen backbone's pooled features in HDF5. See ``--help``."""

from features.entry import run_entry_point

if __name__ == "__main__":
    run_entry_point("features.cli")
