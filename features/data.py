"""Dataset discovery: splits, classes and the ordered list of files to extract.

Two layouts are recognised under ``root``:

* split layout: every sub-folder of ``root`` is a split (``train``, ``val``, ``test``,
  ``training_set``, ...) that itself holds class folders;
* single ImageFolder: the sub-folders of ``root`` are the classes. A stratified,
  seeded ``val`` split can then be carved out with ``val_fraction``.

Every regular, non-hidden file inside a class folder is a candidate: its format is
detected from its content when it is decoded, so files that are not images are
recorded as skipped with a reason instead of being silently ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


COMMON_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"}


class DatasetError(Exception):
    """The dataset root cannot be used; ``str(exc)`` is a one-line explanation."""


@dataclass(frozen=True)
class Sample:
    """One candidate file: its path relative to the dataset root and its label."""

    path: str
    label: int


@dataclass
class DatasetLayout:
    """What was found under a dataset root.

    Attributes
    ----------
    root : str
        Absolute path of the dataset root.
    classes : list of str
        Sorted union of the class-folder names; the index is the label.
    splits : dict of str to list of Sample
        Candidate files per split, sorted by path. Split order is the discovery order.
    empty_classes : dict of str to list of str
        For each split, the class folders that hold no candidate file.
    """

    root: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    empty_classes: dict[str, list[str]] = field(default_factory=dict)

    def unusual_extensions(self) -> list[str]:
        """Candidate files whose extension is not a common image one (they are still decoded by content)."""
        return [s.path for samples in self.splits.values() for s in samples
                if os.path.splitext(s.path)[1].lower() not in COMMON_IMAGE_EXTENSIONS]

    def train_split_name(self) -> str | None:
        """The split used for training: ``train`` or the one split whose name starts with it."""
        return find_train_split(list(self.splits))


def find_train_split(names: list[str]) -> str | None:
    """Pick the training split among ``names`` (``train``, else a unique ``train*`` name)."""
    if "train" in names:
        return "train"
    candidates = [n for n in names if n.lower().startswith("train")]
    return candidates[0] if len(candidates) == 1 else None


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _files_under(folder: str) -> list[str]:
    """All regular non-hidden files below ``folder`` (recursively), as sorted relative paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, name), folder))
    return sorted(found)


def _is_split_layout(root: str, top: list[str]) -> bool:
    """True when every top-level folder contains class folders and no files of its own."""
    if not top:
        return False
    for name in top:
        entries = [e for e in os.scandir(os.path.join(root, name)) if not e.name.startswith(".")]
        if any(e.is_file() for e in entries) or not any(e.is_dir() for e in entries):
            return False
    return True


def _scan_split(root: str, split_dir: str, classes: list[str]) -> tuple[list[Sample], list[str]]:
    samples, empty = [], []
    present = set(_subdirs(os.path.join(root, split_dir)))
    for label, cls in enumerate(classes):
        if cls not in present:
            continue
        files = _files_under(os.path.join(root, split_dir, cls))
        if not files:
            empty.append(cls)
        # os.path.join("", cls, f) == "cls/f": single-ImageFolder paths carry no split prefix.
        samples.extend(Sample(os.path.join(split_dir, cls, f), label) for f in files)
    samples.sort(key=lambda s: s.path)
    return samples, empty


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: ``round(val_fraction * n_c)`` per class, seeded.

    Every class with at least two samples keeps at least one in each part.
    """
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        n_val = int(round(val_fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        chosen = rng.permutation(idx)[:n_val]
        is_val[chosen] = True
    return is_val


def discover(root: str, val_fraction: float | None = None, seed: int = 0) -> DatasetLayout:
    """Find splits, classes and candidate files under ``root``.

    Parameters
    ----------
    root : str
        Dataset folder (split layout or single ImageFolder, see the module docstring).
    val_fraction : float, optional
        Only for a single ImageFolder: fraction of each class moved to a ``val`` split.
    seed : int
        Seed of the stratified split.

    Returns
    -------
    DatasetLayout

    Raises
    ------
    DatasetError
        Missing or unreadable root, no class folders, no candidate files at all, or
        ``val_fraction`` given for a root that already has splits.
    """
    if not os.path.exists(root):
        raise DatasetError(f"data root {root!r} does not exist")
    if not os.path.isdir(root):
        raise DatasetError(f"data root {root!r} is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"data root {root!r} is not readable (permission denied)")
    root = os.path.abspath(root)
    try:
        top = _subdirs(root)
        split_layout = _is_split_layout(root, top)
        if split_layout:
            classes = sorted({c for s in top for c in _subdirs(os.path.join(root, s))})
            split_dirs = top
        else:
            classes = top
            split_dirs = [""]
    except PermissionError as exc:
        raise DatasetError(f"cannot read {exc.filename!r} (permission denied)") from None
    if not classes:
        raise DatasetError(f"no class folders found under {root!r} (expected ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE)")
    if split_layout and val_fraction:
        raise DatasetError(f"{root!r} already has splits ({', '.join(top)}); --val-fraction applies only to a single ImageFolder")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")

    splits: dict[str, list[Sample]] = {}
    empty: dict[str, list[str]] = {}
    try:
        for split_dir in split_dirs:
            samples, empty_cls = _scan_split(root, split_dir, classes)
            name = split_dir or "train"
            splits[name] = samples
            if empty_cls:
                empty[name] = empty_cls
    except PermissionError as exc:
        raise DatasetError(f"cannot read {exc.filename!r} (permission denied)") from None
    if not any(splits.values()):
        raise DatasetError(f"no files found under {root!r}")

    if not split_layout and val_fraction:
        samples = splits["train"]
        is_val = stratified_split(np.array([s.label for s in samples]), val_fraction, seed)
        splits = {
            "train": [s for s, v in zip(samples, is_val) if not v],
            "val": [s for s, v in zip(samples, is_val) if v],
        }
    return DatasetLayout(root=root, classes=classes, splits=splits, empty_classes=empty)
