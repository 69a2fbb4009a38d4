"""ONNX export and the onnxruntime predict path, on real JPEG files (generated, and the real hymenoptera data)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from features.backbones import load_backbone
from features.identity import FeatureIdentity
from pipeline.affine import AffineHead, load_affine
from pipeline.export import export_model
from pipeline.fusing import fuse_head
from pipeline.model_meta import read_model_meta
from pipeline.predict import expand_inputs
from pipeline.rebuild import rebuild_backbone
from pipeline.train_head import HeadConfig, train_head
from tests.conftest import make_imagefolder, one_line_error, run_cli

onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra (part of the test extra) is not installed")


def _session(path: str):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def _onnx_logits(session, x: torch.Tensor) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _images(backbone, paths: list[str]) -> torch.Tensor:
    transform = backbone.preprocessing.eval_transform()
    return torch.stack([transform(backbone.preprocessing.load(p)) for p in paths])


def _eager_fused(head_dir: str):
    """The fused network built afresh from the head folder, in eval mode (what the export started from)."""
    head = load_affine(head_dir)
    backbone = rebuild_backbone(head.feature_identity)
    fuse_head(backbone, head)
    return backbone, backbone.model.eval()


def test_onnx_matches_eager_on_jpegs_random_weights(tmp_path):
    data = make_imagefolder(str(tmp_path / "data"), {"": {"ants": 5, "bees": 5}})
    backbone = load_backbone("tiny_cnn", "none")
    rng = np.random.default_rng(0)
    identity = FeatureIdentity.of_backbone(backbone, ["ants", "bees"])
    head = AffineHead(rng.normal(size=(2, backbone.feature_dim)) * 0.05, rng.normal(size=2), ["ants", "bees"], identity,
                      "logreg")
    model = fuse_head(backbone, head).eval()
    images = _images(backbone, expand_inputs([data]))
    results = export_model(model, images[:4], str(tmp_path / "out"))
    assert results["onnx"]["file"] == "model.onnx" and results["onnx"]["max_abs_diff"] < 1e-4
    session = _session(str(tmp_path / "out" / "model.onnx"))
    for batch in (images, images[4:5]):  # batch sizes other than the one exported with
        with torch.inference_mode():
            eager = model(batch).numpy()
        assert np.abs(_onnx_logits(session, batch) - eager).max() < 1e-4


@pytest.mark.slow
def test_onnx_matches_eager_lite0_on_hymenoptera(hymenoptera, hymenoptera_lite0, tmp_path):
    head = str(tmp_path / "head")
    train_head(HeadConfig(hymenoptera_lite0, head, clf="logreg", n_jobs=1))
    model_dir = str(tmp_path / "model")
    fused = run_cli("-m pipeline.fuse", "--head", head, "--out", model_dir, "--onnx", "--input-size", "224", "--quiet")
    assert fused.returncode == 0, fused.stderr
    assert "export onnx: model.onnx matches eager" in fused.stdout
    backbone, model = _eager_fused(head)
    paths = expand_inputs([os.path.join(hymenoptera, "val")])
    session = _session(os.path.join(model_dir, "model.onnx"))
    worst = 0.0
    for i in range(0, len(paths), 32):
        batch = _images(backbone, paths[i:i + 32])
        with torch.inference_mode():
            eager = model(batch).numpy()
        worst = max(worst, float(np.abs(_onnx_logits(session, batch) - eager).max()))
    print(f"ONNX vs eager on {len(paths)} hymenoptera val images: max abs diff {worst:.3g}")
    assert worst < 1e-4
    _assert_runtimes_agree(model_dir, [os.path.join(hymenoptera, "val")], 153)


def _predict(model_dir: str, inputs: list[str], runtime: str) -> dict:
    r = run_cli("-m pipeline.predict", "--model", model_dir, *inputs, "--format", "jsonl", "--top-k", "2",
                "--runtime", runtime)
    assert r.returncode == 0, r.stderr
    return {row["path"]: row for row in map(json.loads, r.stdout.splitlines())}


def _assert_runtimes_agree(model_dir: str, inputs: list[str], n_images: int) -> None:
    torch_rows, onnx_rows = _predict(model_dir, inputs, "torch"), _predict(model_dir, inputs, "onnxruntime")
    assert len(torch_rows) == n_images and torch_rows.keys() == onnx_rows.keys()
    for path, row in torch_rows.items():
        other = onnx_rows[path]
        assert row["class"] == other["class"] and len(row["top"]) == len(other["top"]) == 2, (path, row, other)
        for a, b in zip(row["top"], other["top"]):
            assert a["class"] == b["class"] and abs(a["prob"] - b["prob"]) <= 1e-4, (path, row, other)


def test_fused_folder_lists_onnx_with_its_sha256(tiny_model):
    data, head, model_dir = tiny_model
    fuse_log = open(os.path.join(os.path.dirname(model_dir), "fuse.log"), encoding="utf-8").read()
    assert "export onnx: model.onnx matches eager" in fuse_log and "model.onnx" in fuse_log.splitlines()[-1]
    meta = read_model_meta(model_dir)
    assert meta["exports"]["onnx"]["file"] == "model.onnx" and len(meta["exports"]["onnx"]["sha256"]) == 64
    assert sorted(os.listdir(model_dir)) == ["model.json", "model.onnx", "model.pt2", "model.ts"]  # no side data file


def test_predict_runtimes_agree_on_jpegs(tiny_model):
    data, head, model_dir = tiny_model
    _assert_runtimes_agree(model_dir, [os.path.join(data, "val")], 12)


def test_onnx_runtime_matches_eager_on_jpegs(tiny_model):
    data, head, model_dir = tiny_model
    backbone, model = _eager_fused(head)
    batch = _images(backbone, expand_inputs([os.path.join(data, "val")]))
    with torch.inference_mode():
        eager = model(batch).numpy()
    assert np.abs(_onnx_logits(_session(os.path.join(model_dir, "model.onnx")), batch) - eager).max() < 1e-4


def test_tampered_onnx_is_refused_before_loading(tiny_model, tmp_path):
    data, head, model_dir = tiny_model
    copy = str(tmp_path / "model")
    shutil.copytree(model_dir, copy)
    path = os.path.join(copy, "model.onnx")
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)  # inside the weights, which fill most of the file
        fh.write(b"\x7f\x7f\x7f\x7f")
    _session(path)  # the file still parses: onnxruntime alone would run it
    image = os.path.join(data, "val", "ants", "img_000.jpg")
    r = run_cli("-m pipeline.predict", "--model", copy, image, "--runtime", "onnxruntime")
    assert r.returncode == 2
    one_line_error(r.stderr, "damaged model folder", "model.onnx does not match the SHA-256")


def test_fuse_no_onnx_then_predict_onnxruntime_is_refused(tiny_model, tmp_path):
    data, head, _ = tiny_model
    model_dir = str(tmp_path / "model")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", model_dir, "--no-onnx", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "export onnx: not requested" in r.stdout and not os.path.exists(os.path.join(model_dir, "model.onnx"))
    image = os.path.join(data, "val", "ants", "img_000.jpg")
    r = run_cli("-m pipeline.predict", "--model", model_dir, image, "--runtime", "onnxruntime")
    assert r.returncode == 2
    one_line_error(r.stderr, "has no model.onnx", "--no-onnx", "--runtime torch")
