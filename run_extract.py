#!/usr/bin/env python
"""Stage one: cache a frozen backbone's pooled features in HDF5. See ``--help``."""

import sys

try:
    from features.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load
    print("error: interrupted before anything was started", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # outside the commands' own handling (option parsing, the closing summary)
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
