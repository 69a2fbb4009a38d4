"""Dataset discovery: splits, classes and the ordered list of files to extract.

Every input becomes the same thing, a :class:`DatasetLayout` (classes and, per split,
a sorted list of :class:`Sample`); nothing after discovery depends on where labels
came from. Layouts recognised under ``root``:

* split layout: every sub-folder of ``root`` is a split (``train``, ``val``, ``test``,
  ``training_set``, ...) that itself holds class folders;
* single ImageFolder: the sub-folders of ``root`` are the classes. A stratified,
  seeded ``val`` split can then be carved out with ``val_fraction``;
* label file (``labels=FILE``, see :mod:`features.labels`): a CSV/TSV maps images to
  classes and optionally to splits;
* unlabeled splits: a folder of images with neither class folders nor labels (Kaggle's
  ``test/``), passed with ``unlabeled`` or found beside labeled data. Its samples
  carry the label ``UNLABELED`` (-1).

A layout that is probably misread (class folders named like splits that hold images
directly, a label file in the root that was not passed) gets a note or warning in
``DatasetLayout.notes`` saying what was understood and how to say otherwise.

Every regular, non-hidden file inside a class folder is a candidate: its format is
detected from its content when it is decoded, so files that are not images are
recorded as skipped with a reason instead of being silently ignored.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from features.labels import (LabelTable, label_file_candidates, looks_like_label_file, read_label_file,
                             resolve_labels, usable_label_file)
from features.samples import UNLABELED, DatasetError, Sample

__all__ = ["COMMON_IMAGE_EXTENSIONS", "DatasetError", "DatasetLayout", "Sample", "UNLABELED", "discover",
           "find_train_split", "stratified_split"]

COMMON_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"}
# Folder names that say "split", not "class": a class folder named so is probably a misread.
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "train_images", "test_images",
               "unlabeled", "unlabelled"}
# Flat folders beside a label file that are taken for unlabeled splits.
UNLABELED_NAMES = {"test", "testing", "test_images", "test_set", "unlabeled", "unlabelled"}


@dataclass
class DatasetLayout:
    """What was found under a dataset root.

    Attributes
    ----------
    root : str
        Absolute path of the dataset root.
    classes : list of str
        Sorted class names (class folders, or the label file's values); the index is the label.
    splits : dict of str to list of Sample
        Candidate files per split, sorted by path. Labeled splits first, unlabeled last.
    empty_classes : dict of str to list of str
        For each split, the class folders that hold no candidate file.
    unlabeled : list of str
        The splits whose samples carry no label (``UNLABELED``).
    notes : list of str
        What the user should read: how an unusual layout was understood.
    label_file : dict or None
        What was used of a label file (:meth:`features.labels.LabelTable.record`).
    id_form : str
        How images are named in a submission: ``"stem"`` (file name without extension,
        the default), or as the label file names them (``"name"``, ``"path"``).
    """

    root: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    empty_classes: dict[str, list[str]] = field(default_factory=dict)
    unlabeled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_file: dict | None = None
    id_form: str = "stem"

    def unusual_extensions(self) -> list[str]:
        """Candidate files whose extension is not a common image one (they are still decoded by content)."""
        return [s.path for samples in self.splits.values() for s in samples
                if not s.missing and os.path.splitext(s.path)[1].lower() not in COMMON_IMAGE_EXTENSIONS]

    def labeled_splits(self) -> list[str]:
        return [name for name in self.splits if name not in self.unlabeled]

    def train_split_name(self) -> str | None:
        """The split used for training: ``train`` or the one labeled split whose name starts with it."""
        return find_train_split(self.labeled_splits())


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


def _folder_kind(path: str) -> str:
    """``"tree"`` (sub-folders, no files), ``"flat"`` (files, no sub-folders), ``"mixed"`` or ``"empty"``."""
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    has_files = any(e.is_file() for e in entries)
    has_dirs = any(e.is_dir() for e in entries)
    return {(False, True): "tree", (True, False): "flat", (True, True): "mixed"}.get((has_files, has_dirs), "empty")


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



def _carve_val(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    is_val = stratified_split(np.array([s.label for s in samples]), val_fraction, seed)
    return [s for s, v in zip(samples, is_val) if not v], [s for s, v in zip(samples, is_val) if v]


def _check_root(root: str) -> None:
    if not os.path.exists(root):
        raise DatasetError(f"data root {root!r} does not exist")
    if not os.path.isdir(root):
        raise DatasetError(f"data root {root!r} is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"data root {root!r} is not readable (permission denied)")


def _from_label_table(root: str, table: LabelTable, val_fraction: float | None, seed: int, how: str) -> DatasetLayout:
    """A layout whose classes and splits come from a label file."""
    resolved = resolve_labels(table, root)
    splits = resolved.splits
    if val_fraction:
        if table.split_column:
            raise DatasetError(f"{table.path} assigns splits (column {table.split_column!r}); "
                               "--val-fraction applies only to a label file without one")
        train, val = _carve_val(splits["train"], val_fraction, seed)
        splits = {"train": train, "val": val}
    columns = f"image column {table.image_column!r}, label column {table.label_column!r}"
    if table.split_column:
        columns += f", split column {table.split_column!r}"
    notes = [f"note: labels from {table.path} ({how}): {columns}; {len(resolved.classes)} classes"] + resolved.notes
    return DatasetLayout(root=root, classes=resolved.classes, splits=splits, notes=notes, label_file=table.record(),
                         id_form=table.id_form())


def _unused_label_files(root: str) -> list[str]:
    return [os.path.basename(p) for p in label_file_candidates(root) if looks_like_label_file(p) is not None]


def _from_folders(root: str, val_fraction: float | None, seed: int, excluded: set[str],
                  look_for_labels: bool) -> DatasetLayout:
    """A layout whose classes are folder names (split layout or single ImageFolder)."""
    top = [name for name in _subdirs(root) if name not in excluded]
    kinds = {name: _folder_kind(os.path.join(root, name)) for name in top}
    trees = [n for n in top if kinds[n] == "tree"]
    flat_split_named = [n for n in top if kinds[n] == "flat" and n.lower() in SPLIT_NAMES]
    notes: list[str] = []
    beside: list[str] = []  # flat split-named folders beside split folders: unlabeled splits
    if trees and len(trees) + len(flat_split_named) == len(top):
        split_dirs = trees
        beside = flat_split_named
        classes = sorted({c for s in trees for c in _subdirs(os.path.join(root, s))})
    else:
        split_dirs = [""]
        classes = top
        if flat_split_named:
            candidates = label_file_candidates(root) if look_for_labels else []
            tables = [t for t in (usable_label_file(p, root) for p in candidates) if t]
            if len(tables) == 1:
                return _from_label_table(root, tables[0], val_fraction, seed,
                                         f"found in the root, since {', '.join(flat_split_named)} hold images "
                                         "directly; pass --labels none to read the folders as classes")
            found = f" ({len(tables)} label files found: pass one with --labels FILE)" if len(tables) > 1 else ""
            notes.append(f"warning: classes {', '.join(flat_split_named)} are named like splits and hold images "
                         f"directly: read as {len(classes)} classes of one ImageFolder{found}. If they are splits, "
                         "pass --labels FILE (a CSV/TSV of image and class) and --unlabeled DIR for images "
                         "without labels")
    if not classes:
        raise DatasetError(f"no class folders found under {root!r} (expected ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE, "
                           "or pass --labels FILE)")
    labeled_dirs = split_dirs
    if val_fraction and len(labeled_dirs) > 1:
        raise DatasetError(f"{root!r} already has splits ({', '.join(labeled_dirs)}); --val-fraction applies only "
                           "to a single ImageFolder")
    if look_for_labels:
        for name in _unused_label_files(root):
            notes.append(f"warning: {root} holds {name}, which was not used: classes are the folder names. "
                         f"To use it, pass --labels {os.path.join(root, name)}")

    splits: dict[str, list[Sample]] = {}
    empty: dict[str, list[str]] = {}
    for split_dir in labeled_dirs:
        samples, empty_cls = _scan_split(root, split_dir, classes)
        name = split_dir or "train"
        splits[name] = samples
        if empty_cls:
            empty[name] = empty_cls
    if not any(splits.values()):
        raise DatasetError(f"no files found under {root!r}")
    if val_fraction:
        (name, samples), = splits.items()
        train, val = _carve_val(samples, val_fraction, seed)
        splits = {name: train, "val": val}
    layout = DatasetLayout(root=root, classes=classes, splits=splits, empty_classes=empty, notes=notes)
    for name in beside:
        _add_unlabeled(layout, os.path.join(root, name), explicit=False)
    return layout


def _add_unlabeled(layout: DatasetLayout, folder: str, explicit: bool) -> None:
    """Add ``folder``'s files as an unlabeled split named after the folder."""
    name = os.path.basename(os.path.normpath(folder))
    shown = os.path.relpath(folder, layout.root)
    if name in layout.splits:
        raise DatasetError(f"--unlabeled {folder}: a split named {name!r} exists already; rename the folder")
    files = _files_under(folder)
    if not files:
        if explicit:
            raise DatasetError(f"--unlabeled {folder} holds no files")
        return
    layout.splits[name] = [Sample(os.path.normpath(os.path.join(shown, f)), UNLABELED) for f in files]
    layout.unlabeled.append(name)
    if explicit:
        layout.notes.append(f"note: unlabeled split {name!r}: {len(files)} files from --unlabeled {folder} "
                            "(label -1; heads report no metrics for it)")
    else:
        layout.notes.append(f"note: {shown}/ holds {len(files)} files and no class folders or labels: extracted as "
                            f"the unlabeled split {name!r} (label -1; heads report no metrics for it). "
                            "Move it out of the root to leave it out")


def _auto_unlabeled_beside_labels(layout: DatasetLayout, excluded: set[str]) -> None:
    """Flat test-like folders of the root that the label file does not use become unlabeled splits."""
    used = {s.path.split("/", 1)[0] for samples in layout.splits.values() for s in samples if "/" in s.path}
    for name in _subdirs(layout.root):
        if (name.lower() in UNLABELED_NAMES and name not in used and name not in excluded
                and name not in layout.splits and _folder_kind(os.path.join(layout.root, name)) == "flat"):
            _add_unlabeled(layout, os.path.join(layout.root, name), explicit=False)


def _small_class_notes(layout: DatasetLayout) -> list[str]:
    train = layout.train_split_name()
    if train is None:
        return []
    counts = Counter(s.label for s in layout.splits[train] if not s.missing)
    single = [layout.classes[c] for c, n in sorted(counts.items()) if n == 1]
    if not single:
        return []
    return [f"warning: {len(single)} classes have a single {train} image ({', '.join(single[:5])}"
            f"{', ...' if len(single) > 5 else ''}): cross-validating C needs 2 per class, so give run_head.py a "
            "fixed --C, or add images"]


def discover(root: str, val_fraction: float | None = None, seed: int = 0, labels: str | None = None,
             image_column: str | None = None, label_column: str | None = None,
             unlabeled: tuple[str, ...] | list[str] = ()) -> DatasetLayout:
    """Find splits, classes and candidate files under ``root``.

    Parameters
    ----------
    root : str
        Dataset folder (see the module docstring for the layouts).
    val_fraction : float, optional
        For a single labeled split (one ImageFolder, or a label file without a
        ``split`` column): fraction of each class moved to a ``val`` split.
    seed : int
        Seed of the stratified split.
    labels : str, optional
        A label file. ``None`` reads class folders, and takes a label file found in
        the root when the folders are clearly splits, not classes; ``"none"`` reads
        class folders and never looks for a label file.
    image_column, label_column : str, optional
        Columns of the label file (auto-detected by default).
    unlabeled : sequence of str
        Folders of images without labels, each extracted as a split named after it.

    Returns
    -------
    DatasetLayout

    Raises
    ------
    DatasetError
        Missing or unreadable root, no class folders, no candidate files at all,
        ``val_fraction`` given for a root that already has splits, or an unusable
        label file (:class:`features.labels.LabelFileError`).
    """
    _check_root(root)
    root = os.path.abspath(root)
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    use_file = labels is not None and labels != "none"
    if (image_column or label_column) and not use_file:
        raise DatasetError("--image-column and --label-column need --labels FILE")
    folders = []
    for folder in unlabeled:
        if not os.path.isdir(folder):
            raise DatasetError(f"--unlabeled {folder}: no such folder")
        folders.append(os.path.abspath(folder))
    excluded = {os.path.basename(f) for f in folders if os.path.dirname(f) == root}
    try:
        if use_file:
            layout = _from_label_table(root, read_label_file(labels, image_column, label_column), val_fraction, seed,
                                       "--labels")
        else:
            layout = _from_folders(root, val_fraction, seed, excluded, look_for_labels=labels is None)
        if layout.label_file is not None:
            _auto_unlabeled_beside_labels(layout, excluded)
        for folder in folders:
            _add_unlabeled(layout, folder, explicit=True)
    except PermissionError as exc:
        raise DatasetError(f"cannot read {exc.filename!r} (permission denied)") from None
    layout.notes += _small_class_notes(layout)
    return layout
