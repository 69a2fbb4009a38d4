"""Exclude lists: files of dataset-relative paths to leave out (``exclude.txt`` from an audit).

One path per line, relative to the dataset root, as the feature file stores them
(``train/ants/0013035.jpg``); blank lines and lines starting with ``#`` are ignored.
The list's SHA-256 goes into the identity of whatever was made without those files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ExcludeList:
    """The paths of an exclude file and its identity.

    Attributes
    ----------
    path : str
        Absolute path of the file.
    sha256 : str
        Hash of the file's bytes.
    paths : frozenset of str
        Normalised dataset-relative paths.
    """

    path: str
    sha256: str
    paths: frozenset

    def record(self, matched: int) -> dict:
        """What an output records in its identity: the list's hash, how many paths it lists, how many matched.

        The file's location is left out, so moving the list does not change the identity.
        """
        return {"sha256": self.sha256, "listed": len(self.paths), "excluded": matched}


def read_exclude(path: str) -> ExcludeList:
    """Read an exclude file.

    Raises
    ------
    ValueError
        Missing or unreadable file (one line, for the CLI's ``error:``).
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ValueError(f"--exclude {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--exclude {path}: not a UTF-8 text file of paths") from None
    lines = (line.strip() for line in text.splitlines())
    paths = frozenset(os.path.normpath(line) for line in lines if line and not line.startswith("#"))
    return ExcludeList(os.path.abspath(path), hashlib.sha256(raw).hexdigest(), paths)
