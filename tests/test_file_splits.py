"""Fuse and fine-tuning take each split's images from the feature file, never from the folder again."""

import os

import pytest

from features.extract import ExtractConfig, extract
from features.store import FeatureFile
from pipeline.build_model import BuildConfig, build_model, file_splits
from pipeline.finetune import FinetuneConfig
from pipeline.affine import load_affine
from pipeline.train_head import HeadConfig, train_head
from tests.conftest import make_imagefolder, run_cli, write_image


@pytest.fixture
def val_fraction_pipeline(tmp_path):
    data = make_imagefolder(str(tmp_path / "photos"), {"": {"ants": 12, "bees": 12}})
    feats = str(tmp_path / "f.h5")
    extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", progress=False,
                          val_fraction=0.25))
    # Images added after extraction: a new look at the folder would train on them.
    for i in range(5):
        write_image(os.path.join(data, "ants", f"late_{i}.jpg"), 500 + i)
    head = str(tmp_path / "head")
    train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    return data, feats, head


def test_val_fraction_dataset_finetunes_on_train_rows_and_validates_on_val_rows(val_fraction_pipeline, tmp_path):
    data, feats, head = val_fraction_pipeline
    with FeatureFile(feats) as ff:
        train_paths = set(ff.read_split("train").paths)
        val_paths = set(ff.read_split("val").paths)
    assert len(train_paths) == 18 and len(val_paths) == 6 and not train_paths & val_paths
    cfg = BuildConfig(head, str(tmp_path / "model"), finetune=FinetuneConfig(epochs=1, batch_size=8, progress=False),
                      precision="fp32")
    splits = file_splits(cfg, load_affine(head))
    assert {p for p, _ in splits.train} == train_paths and {p for p, _ in splits.val} == val_paths
    logged = []
    sidecar = build_model(cfg, log=logged.append)
    ft = sidecar["finetune"]
    assert (ft["train_split"], ft["train_images"], ft["val_split"], ft["val_images"]) == ("train", 18, "val", 6)
    assert all(h["val_accuracy"] is not None for h in ft["history"])  # a val split chose the best epoch
    assert any("fine-tuning 1 epochs on train (18 images), validating on val (6 images)" in line for line in logged)


def test_fuse_cli_says_where_the_splits_come_from_and_needs_the_feature_file(val_fraction_pipeline, tmp_path):
    data, feats, head = val_fraction_pipeline
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "m"), "--finetune-epochs", "1",
                "--batch-size", "8", "--precision", "fp32", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "on train (18 images), validating on val (6 images), as the feature file records them" in r.stdout
    moved = feats + ".moved"
    os.rename(feats, moved)
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "m2"))
    assert r.returncode == 2 and "is not found; pass --features FILE" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "m3"), "--features", moved)
    assert r.returncode == 0, r.stderr
