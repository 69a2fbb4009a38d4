#!/usr/bin/env python
"""Stage two: train a classifier on cached features, or predict with one. See ``--help``."""

import sys

try:
    from pipeline.head_cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load
    print("error: interrupted before anything was started", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # outside the commands' own handling (option parsing, the closing summary)
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
