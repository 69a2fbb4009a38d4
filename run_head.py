#!/usr/bin/env python
"""Stage two: train a classifier on cached features, or predict with one. See ``--help``."""

from features.entry import run_entry_point

if __name__ == "__main__":
    run_entry_point("pipeline.head_cli")
