#!/usr/bin/env python
"""Stage two: train a classifier on cached features, or predict with one. See ``--help``."""

from pipeline.head_cli import main

if __name__ == "__main__":
    main()
