"""Label files, unlabeled splits and probable misreads, on generated Kaggle-style layouts of real JPEGs."""

import csv
import json
import os

import numpy as np
import pytest

from features.data import DatasetError, discover
from features.extract import ExtractConfig, extract
from features.labels import LabelFileError, read_label_file
from features.store import FeatureFile
from tests.conftest import make_imagefolder, make_kaggle, run_cli, write_image


def _extract(data, out, **kw):
    return extract(ExtractConfig(data_root=data, out_path=out, backbone="tiny_cnn", weights="none", progress=False, **kw))


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def kaggle(tmp_path):
    root = str(tmp_path / "dogs")
    truth = make_kaggle(root, {"beagle": 6, "dingo": 5, "pug": 7}, {"beagle": 2, "dingo": 2, "pug": 2})
    return root, truth


def test_label_file_maps_ids_to_classes_and_test_folder_is_unlabeled(kaggle, tmp_path):
    root, truth = kaggle
    out = str(tmp_path / "f.h5")
    summary = _extract(root, out, labels=os.path.join(root, "labels.csv"))
    notes = "\n".join(summary.notes)
    assert "image column 'id', label column 'breed'" in notes and "unlabeled split 'test'" in notes
    with FeatureFile(out) as f:
        assert f.classes == ["beagle", "dingo", "pug"] and f.splits == ["train", "test"]
        train, test = f.read_split("train"), f.read_split("test")
        config = f.config
    assert len(train.labels) == 18 and sorted(np.bincount(train.labels)) == [5, 6, 7]
    assert all(p.startswith("train/") and p.endswith(".jpg") for p in train.paths)
    assert (test.labels == -1).all() and {os.path.basename(p)[:-4] for p in test.paths} == set(truth)
    assert config["unlabeled_splits"] == ["test"] and config["id_form"] == "stem"
    with open(os.path.join(root, "labels.csv"), "rb") as fh:
        import hashlib
        assert config["labels"]["sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert config["labels"]["image_column"] == "id" and config["labels"]["label_column"] == "breed"
    # each id's label is the label file's
    with open(os.path.join(root, "labels.csv"), encoding="utf-8") as fh:
        expected = {r["id"]: r["breed"] for r in csv.DictReader(fh)}
    got = {os.path.basename(p)[:-4]: ["beagle", "dingo", "pug"][y] for p, y in zip(train.paths, train.labels)}
    assert got == expected


def test_kaggle_root_without_labels_option_uses_the_label_file_with_a_note(kaggle):
    root, _ = kaggle
    layout = discover(root)
    assert layout.classes == ["beagle", "dingo", "pug"] and layout.unlabeled == ["test"]
    assert any("found in the root" in n and "--labels none" in n for n in layout.notes)
    folders = discover(root, labels="none")  # told otherwise: folders are classes, with a warning
    assert folders.classes == ["test", "train"] and folders.label_file is None
    assert any(n.startswith("warning: classes test, train are named like splits") and "--labels FILE" in n
               for n in folders.notes)


def test_split_named_folders_without_any_label_file_warn(tmp_path):
    root = str(tmp_path / "r")
    for part in ("train", "test"):
        for i in range(3):
            write_image(os.path.join(root, part, f"{i}.jpg"), i)
    layout = discover(root)
    assert layout.classes == ["test", "train"]
    assert any("named like splits and hold images directly" in n and "--unlabeled DIR" in n for n in layout.notes)


def test_label_file_in_root_not_passed_is_warned_about(small_dataset):
    _write_csv(os.path.join(small_dataset, "labels.csv"), ["file", "label"], [["train/a/img_000.jpg", "x"]])
    layout = discover(small_dataset)
    assert layout.classes == ["a", "b", "c"]  # folders still decide
    assert any("holds labels.csv, which was not used" in n and "--labels" in n for n in layout.notes)


def test_flat_test_folder_beside_class_splits_is_an_unlabeled_split(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    for i in range(4):
        write_image(os.path.join(root, "test", f"t{i}.png"), 40 + i, fmt="PNG")
    layout = discover(root)
    assert layout.classes == ["a", "b"] and list(layout.splits) == ["train", "val", "test"]
    assert layout.unlabeled == ["test"] and {s.label for s in layout.splits["test"]} == {-1}
    assert any("test/ holds 4 files and no class folders" in n for n in layout.notes)


def test_explicit_unlabeled_folder_outside_the_root(small_dataset, tmp_path):
    new = tmp_path / "new_photos"
    for i in range(3):
        write_image(str(new / f"p{i}.jpg"), i)
    out = str(tmp_path / "f.h5")
    summary = _extract(small_dataset, out, unlabeled=(str(new),))
    assert any("unlabeled split 'new_photos': 3 files from --unlabeled" in n for n in summary.notes)
    with FeatureFile(out) as f:
        rows = f.read_split("new_photos")
        assert f.config["unlabeled_splits"] == ["new_photos"] and (rows.labels == -1).all()
        assert all(os.path.isfile(os.path.join(f.data_root, p)) for p in rows.paths)


def test_paths_and_split_column(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"pics": {"x": 4, "y": 4}})
    rows = [[f"pics/{c}/img_{i:03d}.jpg", c.upper(), "train" if i < 3 else "holdout"] for c in "xy" for i in range(4)]
    labels = _write_csv(tmp_path / "l.csv", ["Path", "Label", "Split"], rows)
    layout = discover(root, labels=labels)
    assert layout.classes == ["X", "Y"] and list(layout.splits) == ["holdout", "train"]
    assert len(layout.splits["train"]) == 6 and len(layout.splits["holdout"]) == 2
    assert layout.train_split_name() == "train" and layout.id_form == "path"
    with pytest.raises(DatasetError, match="assigns splits"):
        discover(root, labels=labels, val_fraction=0.2)


def test_val_fraction_on_a_label_file_is_stratified(kaggle):
    root, _ = kaggle
    layout = discover(root, labels=os.path.join(root, "labels.csv"), val_fraction=0.4, seed=1)
    assert list(layout.splits) == ["train", "val", "test"]
    val_counts = np.bincount([s.label for s in layout.splits["val"]])
    assert list(val_counts) == [2, 2, 3]  # round(0.4 * n) per class: 6, 5, 7 images
    assert not {s.path for s in layout.splits["val"]} & {s.path for s in layout.splits["train"]}


def test_bom_crlf_tsv_and_named_columns(kaggle, tmp_path):
    root, _ = kaggle
    with open(os.path.join(root, "labels.csv"), encoding="utf-8") as fh:
        plain = list(csv.reader(fh))
    body = "\r\n".join("\t".join(r) for r in [["picture", "kind", "note"]] + [r + ["n"] for r in plain[1:]]) + "\r\n"
    odd = tmp_path / "labels.tsv"
    odd.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    with pytest.raises(LabelFileError, match=r"no image column \(columns found: picture, kind, note\)"):
        read_label_file(str(odd))
    table = read_label_file(str(odd), image_column="picture", label_column="kind")
    assert table.columns == ["picture", "kind", "note"] and len(table.rows) == 18
    assert not table.rows[0].image.startswith("\ufeff") and not table.rows[0].label.endswith("\r")
    a = discover(root, labels=str(odd), image_column="picture", label_column="kind")
    b = discover(root, labels=os.path.join(root, "labels.csv"))
    assert a.classes == b.classes and a.splits == b.splits


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\xff\xfe\x00i\x00d", "not UTF-8"),
    (b"name,kind,colour\nabc,x,red\n", r"no image column \(columns found: name, kind, colour\)"),
    (b"id,a,b\nabc,x,y\n", r"no label column \(columns found: id, a, b\)"),
    (b"id,label\n", "no rows"),
    (b"id,label\nabc,x\nabd,\nabe,\n", "2 rows have an empty 'label' \\(first: line 3, abd\\)"),
    (b"id,label\nabc,x\nabd,y\nabc,y\n", "abc is labelled 'x' on line 2 and 'y' on line 4"),
])
def test_bad_label_files(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LabelFileError, match=message):
        read_label_file(str(path))


def test_conflict_between_id_and_file_name_of_one_image(kaggle, tmp_path):
    root, _ = kaggle
    first = sorted(os.listdir(os.path.join(root, "train")))[0]
    labels = _write_csv(tmp_path / "l.csv", ["id", "label"], [[first[:-4], "a"], [first, "b"]])
    with pytest.raises(LabelFileError, match=f"train/{first} is labelled 'a' .* and 'b'"):
        discover(root, labels=labels)


@pytest.mark.parametrize("ref", ["../outside.jpg", "train/../../outside.jpg", "/etc/hostname"])
def test_ids_outside_the_root_are_refused(kaggle, tmp_path, ref):
    root, _ = kaggle
    write_image(str(tmp_path / "outside.jpg"), 1)
    labels = _write_csv(tmp_path / "l.csv", ["image", "label"], [[ref, "a"]])
    with pytest.raises(LabelFileError, match="points outside --data .*; refused"):
        discover(root, labels=labels)


def test_rows_naming_missing_files_are_skipped_and_recorded(kaggle, tmp_path):
    root, _ = kaggle
    with open(os.path.join(root, "labels.csv"), encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    labels = _write_csv(tmp_path / "l.csv", ["id", "breed"], rows + [["gone1", "pug"], ["gone2", "dingo"]])
    out = str(tmp_path / "f.h5")
    summary = _extract(root, out, labels=labels)
    assert any("2 of 20 images listed in l.csv were not found" in n for n in summary.notes)
    train = next(s for s in summary.splits if s.split == "train")
    assert train.images == 20 and train.rows == 18 and {p for p, _ in train.skipped} == {"gone1", "gone2"}
    assert "not found (l.csv line 20" in dict(train.skipped)["gone1"]
    with FeatureFile(out) as f:
        assert {p for p, _ in f.read_split("train").skipped} == {"gone1", "gone2"}


def test_label_file_whose_images_are_nowhere(kaggle, tmp_path):
    root, _ = kaggle
    labels = _write_csv(tmp_path / "l.csv", ["id", "breed"], [["nope1", "a"], ["nope2", "b"]])
    with pytest.raises(LabelFileError, match="none of the 2 images listed in l.csv was found.*point --data"):
        discover(root, labels=labels)


def test_single_image_class_is_warned_about(kaggle, tmp_path):
    root, _ = kaggle
    with open(os.path.join(root, "labels.csv"), encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    rows[0][1] = "lonely"
    layout = discover(root, labels=_write_csv(tmp_path / "l.csv", ["id", "breed"], rows))
    assert "lonely" in layout.classes
    assert any("1 classes have a single train image (lonely)" in n and "--C" in n for n in layout.notes)


def test_cli_label_file_bad_inputs_and_changed_file(kaggle, tmp_path):
    root, _ = kaggle
    out = str(tmp_path / "f.h5")
    common = ["--data", root, "--backbone", "tiny_cnn", "--weights", "none", "--out", out, "--quiet"]
    r = run_cli("run_extract.py", *common, "--labels", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and r.stderr.startswith("error: label file") and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    labels = os.path.join(root, "labels.csv")
    r = run_cli("run_extract.py", *common, "--labels", labels, "--label-column", "colour")
    assert r.returncode == 2 and "no label column 'colour' (columns found: id, breed)" in r.stderr
    r = run_cli("run_extract.py", *common, "--labels", labels)
    assert r.returncode == 0, r.stderr
    assert "note: labels from" in r.stdout and "unlabeled split 'test'" in r.stdout
    with open(labels, "a", encoding="utf-8") as fh:  # same classes, one more image: another dataset
        first = sorted(os.listdir(os.path.join(root, "test")))[0][:-4]
        fh.write(f"{first},pug\n")
    os.remove(os.path.join(root, "test", first + ".jpg"))
    r = run_cli("run_extract.py", *common, "--labels", labels)
    assert r.returncode == 2 and "exists and differs" in r.stderr and "config" in r.stderr
    with FeatureFile(out) as f:  # the old file is untouched
        assert f.n_rows("train") == 18 and json.loads(f.attrs["config"])["labels"]["file"] == "labels.csv"
