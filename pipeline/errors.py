"""Stage two's errors whose home modules load torch, kept here so that the exit-code table does not."""


class ExportMismatch(Exception):
    """An exported program disagrees with the eager model."""
