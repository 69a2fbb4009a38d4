"""The splits a feature file records: which are labeled, and the images and labels of each.

Every step after extraction (heads, fuse check, fine-tuning, prediction) takes its
images from here, never by discovering the dataset folder again: with label files,
``--val-fraction``, ``--limit`` and unreadable files, the rows a feature file records are
the only truth about which image belongs to which split.
"""

from __future__ import annotations

import numpy as np

from features.data import find_train_split
from features.samples import UNLABELED
from features.store import FeatureFile

VAL_NAMES = ("val", "valid", "validation", "dev")


def unlabeled_splits(ff: FeatureFile) -> list[str]:
    """Splits whose rows carry no label: listed in ``config["unlabeled_splits"]``, or every label is -1."""
    listed = set(ff.config.get("unlabeled_splits") or [])
    found = []
    for split in ff.splits:
        if split in listed:
            found.append(split)
            continue
        n = ff.n_rows(split)
        if n and bool((ff.read_columns(split, 0, n)[0] == UNLABELED).all()):
            found.append(split)
    return found


def labeled_splits(ff: FeatureFile) -> list[str]:
    """The file's splits with labels, in file order."""
    unlabeled = set(unlabeled_splits(ff))
    return [s for s in ff.splits if s not in unlabeled]


def train_and_val(ff: FeatureFile) -> tuple[str | None, str | None]:
    """The training split and the split used to validate: ``val``-like names first, else the next labeled one."""
    labeled = labeled_splits(ff)
    train = find_train_split(labeled)
    others = [s for s in labeled if s != train]
    val = next((s for s in others if s.lower() in VAL_NAMES), others[0] if others else None)
    return train, val


def split_images(ff: FeatureFile, split: str) -> list[tuple[str, int]]:
    """``(path relative to the data root, label)`` of every image of ``split`` (its centre-crop rows), in file order."""
    data = ff.read_split(split)
    keep = data.view == 0
    return [(str(p), int(y)) for p, y in zip(data.paths[keep], np.asarray(data.labels)[keep])]
