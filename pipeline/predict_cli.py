"""Console-script entry point for ``tlcache-predict`` (same as ``python -m pipeline.predict``)."""

from pipeline.predict import main

__all__ = ["main"]
