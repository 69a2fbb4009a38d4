"""The unit every dataset layout is turned into: one candidate file with its label."""

from __future__ import annotations

from dataclasses import dataclass

UNLABELED = -1  # the label of every row of an unlabeled split


class DatasetError(Exception):
    """The dataset root cannot be used; ``str(exc)`` is a one-line explanation."""


@dataclass(frozen=True)
class Sample:
    """One candidate file.

    Attributes
    ----------
    path : str
        Path relative to the dataset root.
    label : int
        Index into the classes, or ``UNLABELED`` (-1) in an unlabeled split.
    missing : str or None
        Why the file cannot be read although the dataset lists it (a label-file row
        naming a file that does not exist); extraction records it as skipped.
    """

    path: str
    label: int
    missing: str | None = None
