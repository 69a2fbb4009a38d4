"""Dataset discovery: layouts, label mapping, stratified splits, bad roots."""

import os

import numpy as np
import pytest

from features.data import DatasetError, discover, find_train_split, stratified_split
from tests.conftest import make_imagefolder


def test_split_layout_and_sorted_classes(small_dataset):
    layout = discover(small_dataset)
    assert list(layout.splits) == ["train", "val"]
    assert layout.classes == ["a", "b", "c"]
    assert len(layout.splits["train"]) == 18 and len(layout.splits["val"]) == 9
    assert all(s.path.startswith("train/") for s in layout.splits["train"])


def test_class_missing_from_val_does_not_shift_labels(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"ants": 2, "bees": 2, "wasps": 2}, "val": {"ants": 1, "wasps": 1}})
    layout = discover(root)
    assert layout.classes == ["ants", "bees", "wasps"]
    val_labels = {s.path.split("/")[1]: s.label for s in layout.splits["val"]}
    assert val_labels == {"ants": 0, "wasps": 2}


def test_class_only_in_val_is_in_the_union(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 2}, "val": {"a": 1, "z": 1}})
    assert discover(root).classes == ["a", "z"]


def test_single_imagefolder_with_val_fraction_is_stratified_and_reproducible(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"": {"x": 10, "y": 20}})
    one = discover(root, val_fraction=0.2, seed=3)
    two = discover(root, val_fraction=0.2, seed=3)
    other = discover(root, val_fraction=0.2, seed=4)
    assert [s.path for s in one.splits["val"]] == [s.path for s in two.splits["val"]]
    assert [s.path for s in one.splits["val"]] != [s.path for s in other.splits["val"]]
    assert sorted(s.label for s in one.splits["val"]) == [0, 0] + [1] * 4
    assert not {s.path for s in one.splits["val"]} & {s.path for s in one.splits["train"]}


def test_single_imagefolder_without_fraction_is_train_only(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"": {"x": 2, "y": 2}})
    assert list(discover(root).splits) == ["train"]


def test_other_split_names(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"training_set": {"a": 1}, "test_set": {"a": 1}})
    layout = discover(root)
    assert set(layout.splits) == {"training_set", "test_set"} and layout.train_split_name() == "training_set"
    assert find_train_split(["val", "test"]) is None


def test_empty_class_folder_is_reported(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 2}, "val": {"a": 1}})
    os.makedirs(os.path.join(root, "train", "b"))
    layout = discover(root)
    assert layout.classes == ["a", "b"] and layout.empty_classes == {"train": ["b"]}


def test_stratified_split_keeps_each_class_on_both_sides():
    labels = np.array([0] * 2 + [1] * 50)
    mask = stratified_split(labels, 0.1, seed=0)
    assert mask[:2].sum() == 1 and mask[2:].sum() == 5


@pytest.mark.parametrize("setup, message", [
    (lambda p: str(p / "missing"), "does not exist"),
    (lambda p: (p / "file").write_text("x") and str(p / "file"), "not a folder"),
    (lambda p: (p / "empty").mkdir() or str(p / "empty"), "no class folders"),
    (lambda p: ((p / "r" / "a").mkdir(parents=True), str(p / "r"))[1], "no files found"),
])
def test_bad_roots(tmp_path, setup, message):
    with pytest.raises(DatasetError, match=message):
        discover(setup(tmp_path))


def test_val_fraction_refused_on_split_layout(small_dataset):
    with pytest.raises(DatasetError, match="already has splits"):
        discover(small_dataset, val_fraction=0.2)
