"""The ``tlcache`` command: every step under one group, the same exit codes as the stage scripts."""

import json
import os

import numpy as np
import pytest
import torch

from features.devices import default_batch_size
from tests.conftest import blobs, make_imagefolder, run_cli, write_feature_file


def test_one_group_runs_every_step(tmp_path):
    r = run_cli("-m pipeline.cli", "--help")
    assert r.returncode == 0
    for name in ("extract", "verify", "head", "fit", "predict-features", "audit", "fuse", "predict"):
        assert f"  {name} " in r.stdout
    data = make_imagefolder(str(tmp_path / "data"), {"train": {"a": 6, "b": 6}, "val": {"a": 3, "b": 3}})
    feats = str(tmp_path / "f.h5")
    r = run_cli("-m pipeline.cli", "extract", "--data", data, "--backbone", "tiny_cnn", "--weights", "none",
                "--out", feats, "--quiet", "--report", str(tmp_path / "extract.json"))
    assert r.returncode == 0 and "written" in r.stdout, r.stderr
    report = json.load(open(tmp_path / "extract.json"))
    assert report["status"] == "written" and report["feature_dim"] == 32
    batch = default_batch_size(torch.device(report["device"]))  # 16 on the CPU, 32 on a GPU
    assert report["batch_size"] == batch and f", batch {batch}" in r.stdout
    assert [(s["split"], s["images"], s["processed"]) for s in report["splits"]] == [("train", 12, 12), ("val", 6, 6)]
    assert all(s["forward_seconds"] > 0 and "waiting_seconds" in s for s in report["splits"])  # see test_extract
    assert run_cli("-m pipeline.cli", "verify", feats).returncode == 0
    head = str(tmp_path / "head")
    r = run_cli("-m pipeline.cli", "head", "--features", feats, "--C", "1", "--out", head)
    assert r.returncode == 0 and os.path.exists(os.path.join(head, "head.npz")), r.stderr
    r = run_cli("-m pipeline.cli", "predict-features", "--head", head, "--features", feats)
    assert r.returncode == 0 and r.stdout.startswith("val: 6 rows")


def test_errors_are_one_line_with_the_shared_exit_codes(tmp_path):
    X, y = blobs(6, 2, 4, seed=0)
    one_class = write_feature_file(str(tmp_path / "one.h5"), {"train": (X, np.zeros_like(y))}, ["a", "b"])
    cases = [
        (("-m pipeline.cli", "head", "--features", str(tmp_path / "missing.h5")), 2, "no such file"),
        (("-m pipeline.cli", "head", "--features", one_class, "--out", str(tmp_path / "h")), 2, "single class"),
        (("-m pipeline.cli", "fuse", "--head", str(tmp_path / "nohead"), "--out", str(tmp_path / "m")), 2,
         "does not exist"),
    ]
    for args, code, words in cases:
        r = run_cli(*args)
        assert r.returncode == code and words in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    empty = tmp_path / "empty" / "a"
    empty.mkdir(parents=True)
    (empty / "x.jpg").write_bytes(b"not an image")
    r = run_cli("-m pipeline.cli", "extract", "--data", str(tmp_path / "empty"), "--backbone", "tiny_cnn",
                "--weights", "none", "--out", str(tmp_path / "e.h5"), "--quiet")
    assert r.returncode == 1 and r.stderr.startswith("error: "), r.stderr


def test_fit_in_one_process_writes_what_the_two_commands_write(tmp_path):
    data = make_imagefolder(str(tmp_path / "data"), {"train": {"a": 8, "b": 8}, "val": {"a": 4, "b": 4}})
    common = ["--backbone", "tiny_cnn", "--weights", "none"]
    one = run_cli("-m pipeline.cli", "fit", "--data", data, *common, "--features", str(tmp_path / "one.h5"),
                  "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr
    assert "written" in one.stdout and "val: accuracy" in one.stdout
    two = [run_cli("run_extract.py", "--data", data, *common, "--out", str(tmp_path / "two.h5"), "--quiet"),
           run_cli("run_head.py", "--features", str(tmp_path / "two.h5"), "--out", str(tmp_path / "two"))]
    assert all(r.returncode == 0 for r in two), [r.stderr for r in two]
    import h5py
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        for split in ("train", "val"):
            np.testing.assert_array_equal(a[split]["features"][:], b[split]["features"][:])
    heads = [np.load(tmp_path / name / "head.npz") for name in ("one", "two")]
    assert sorted(heads[0].files) == sorted(heads[1].files)
    for key in heads[0].files:
        np.testing.assert_array_equal(heads[0][key], heads[1][key])
    reports = [json.load(open(tmp_path / name / "report.json")) for name in ("one", "two")]
    assert reports[0]["C"] == reports[1]["C"] and reports[0]["splits"] == reports[1]["splits"]
    bad = run_cli("-m pipeline.cli", "fit", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_image_size_through_the_commands(tmp_path):
    """--image-size reaches the feature file through `tlcache fit`; a rerun that forgets it names both sizes."""
    from features.cli_common import default_features_path
    from features.store import FeatureFile

    assert default_features_path("/d/ants", "resnet50") == "ants-resnet50.h5"
    assert default_features_path("/d/ants", "resnet50", 288) == "ants-resnet50-288px.h5"
    data = make_imagefolder(str(tmp_path / "data"), {"train": {"a": 6, "b": 6}, "val": {"a": 3, "b": 3}})
    feats = str(tmp_path / "f.h5")
    common = ["--data", data, "--backbone", "tiny_cnn", "--weights", "none", "--quiet"]
    r = run_cli("-m pipeline.cli", "fit", *common, "--image-size", "64", "--features", feats, "--out", str(tmp_path / "h"))
    assert r.returncode == 0 and "64-px input" in r.stdout, r.stderr
    with FeatureFile(feats) as ff:
        assert ff.identity().preprocessing.crop_size == 64
    again = run_cli("run_extract.py", *common, "--out", feats)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "image size: 32 px asked, 64 px in the file" in again.stderr


@pytest.mark.parametrize("value, said", [("-1", "must be positive"), ("nan", "must be positive"),
                                         ("big", "neither 'auto' nor a number")])
def test_auto_or_number_options_refuse_bad_values(tmp_path, value, said):
    r = run_cli("run_head.py", "--features", str(tmp_path / "f.h5"), "--C", value)
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr
