"""Measuring scripts behind ``make bench``; they write BENCHMARKS.md from a real run."""
