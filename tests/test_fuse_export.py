"""Fuse, fine-tune, export and predict, on generated images and on real Lite0."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from features.backbones import load_backbone
from features.hooks import capture_features
from features.identity import FeatureIdentity
from features.preprocessing import Preprocessing
from pipeline.affine import AffineHead
from pipeline.build_model import BuildConfig, build_model
from pipeline.export import export_model
from pipeline.finetune import freeze_lowest, parameter_groups, set_train_mode, stages
from pipeline.fusing import FusedHeadMismatch, fuse_head, verify_fused
from pipeline.train_head import HeadConfig, train_head
from tests.conftest import REPO, run_cli


def _random_head(dim, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(n_classes)]
    identity = FeatureIdentity("random", "none", "none", dim, Preprocessing(36, 32, "bilinear", (0.5,) * 3, (0.5,) * 3),
                               tuple(classes))
    return AffineHead(rng.normal(size=(n_classes, dim)) * 0.05, rng.normal(size=n_classes), classes, identity, "logreg")


@pytest.mark.parametrize("name, weights", [pytest.param("efficientnet_lite0", "DEFAULT", marks=pytest.mark.slow),
                                           ("resnet50", "none"),
                                           ("squeezenet1_1", "none"), ("vgg11", "none"), ("densenet121", "none")])
def test_fused_logits_equal_head_of_features(name, weights):
    backbone = load_backbone(name, weights)
    head = _random_head(backbone.feature_dim, 3)
    x = torch.randn(2, 3, backbone.preprocessing.crop_size, backbone.preprocessing.crop_size)
    with torch.inference_mode(), capture_features(backbone.model, backbone.spec) as cap:
        backbone.model(x)
        features = cap.pop().double().numpy()
    fuse_head(backbone, head)
    assert verify_fused(backbone, head, x) < 1e-4
    with torch.inference_mode():
        np.testing.assert_allclose(backbone.model(x).double().numpy(), head.logits(features), rtol=1e-4, atol=1e-4)


def test_verify_fused_catches_a_wrong_slot():
    backbone = load_backbone("tiny_cnn", "none")
    head = _random_head(32, 2)
    fuse_head(backbone, head)
    with torch.no_grad():
        backbone.model.fc.bias.add_(1.0)  # the network no longer computes the head
    with pytest.raises(FusedHeadMismatch):
        verify_fused(backbone, head, torch.randn(2, 3, 32, 32))


def test_parameter_groups_get_their_learning_rates():
    backbone = load_backbone("resnet18", "none")
    fuse_head(backbone, _random_head(512, 2))
    model = backbone.model.requires_grad_(True)
    groups = parameter_groups(model, "fc", lr=0.01, head_lr_mult=10)
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(groups[0]["params"]) == len(list(model.parameters())) - 2
    opt = torch.optim.SGD(groups, lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]


def _train_steps(model, opt, steps: int = 3) -> None:
    """A few SGD steps of a 32x32 tiny_cnn on random images."""
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1])).backward()
        opt.step()


def test_frozen_stages_do_not_change(tmp_path):
    backbone = load_backbone("tiny_cnn", "none")
    names = [n for n, _ in stages(backbone.model, "fc")]
    assert names == ["features.0", "features.1", "features.3", "features.4"]
    fuse_head(backbone, _random_head(32, 2))
    model = backbone.model.requires_grad_(True)
    frozen = freeze_lowest(model, "fc", 2)
    assert frozen == ["features.0", "features.1"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(parameter_groups(model, "fc", 0.1, 10), lr=0.1, momentum=0.9)
    set_train_mode(model, frozen, train_bn=True)
    assert not model.features[1].training and model.features[4].training
    _train_steps(model, opt)
    after = model.state_dict()
    for key in ("features.0.weight", "features.1.weight", "features.1.running_mean", "features.1.running_var"):
        assert torch.equal(before[key], after[key]), key
    for key in ("features.3.weight", "features.4.running_mean", "fc.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_batchnorm_statistics_kept_unless_train_bn():
    backbone = load_backbone("tiny_cnn", "none")
    fuse_head(backbone, _random_head(32, 2))
    model = backbone.model.requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(parameter_groups(model, "fc", 0.1, 10), lr=0.1)
    set_train_mode(model, [], train_bn=False)
    assert not model.features[1].training
    _train_steps(model, opt)
    after = model.state_dict()
    assert torch.equal(before["features.1.running_mean"], after["features.1.running_mean"])
    assert torch.equal(before["features.4.running_var"], after["features.4.running_var"])
    assert not torch.equal(before["features.1.weight"], after["features.1.weight"])  # BN affine still learns


def test_dropout_runs_as_at_inference_unless_asked():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5))
    set_train_mode(model, [])
    assert not model[1].training and not model[2].training
    x = torch.randn(8, 4)
    assert torch.equal(model(x), model(x))  # no random units dropped
    set_train_mode(model, [], train_bn=True, dropout=True)
    assert model[1].training and model[2].training


@pytest.mark.parametrize("name, weights", [("tiny_cnn", "none"),
                                           pytest.param("efficientnet_lite0", "DEFAULT", marks=pytest.mark.slow)])
def test_export_matches_eager(tmp_path, name, weights):
    backbone = load_backbone(name, weights)
    model = fuse_head(backbone, _random_head(backbone.feature_dim, 3))
    size = backbone.preprocessing.crop_size
    x = torch.randn(3, 3, size, size)
    results = export_model(model, x, str(tmp_path))
    assert results["torchscript"]["max_abs_diff"] < 1e-4 and results["torch.export"]["max_abs_diff"] < 1e-4
    other = torch.randn(5, 3, size, size)  # another batch size through the dynamic dimension
    with torch.inference_mode():
        eager = model(other)
        exported = torch.export.load(str(tmp_path / "model.pt2")).module()(other)
        scripted = torch.jit.load(str(tmp_path / "model.ts"))(other)
    assert torch.allclose(eager, exported, atol=1e-4) and torch.allclose(eager, scripted, atol=1e-4)


def test_build_model_without_finetune_reproduces_head_accuracy(tiny_pipeline, tmp_path):
    data, feats, head = tiny_pipeline
    out = str(tmp_path / "model")
    sidecar = build_model(BuildConfig(head, out), log=lambda *_: None)
    assert sidecar["classes"] == ["ants", "bees"] and sidecar["input_size"] == 32 and sidecar["finetune"] is None
    from pipeline.predict import predict_images

    preds, skipped = predict_images(out, [os.path.join(data, "val", c, f"img_{i:03d}.jpg") for c in ("ants", "bees") for i in range(6)])
    truth = ["ants"] * 6 + ["bees"] * 6
    accuracy = np.mean([p.top[0][0] == t for p, t in zip(preds, truth)])
    assert not skipped and accuracy == pytest.approx(sidecar["head"]["splits"]["val"]["accuracy"])


def test_finetune_resume_after_killing_a_real_run(tiny_pipeline, tmp_path):
    data, feats, head = tiny_pipeline
    args = ["--head", head, "--finetune-epochs", "25", "--lr", "0.01", "--batch-size", "8", "--precision", "fp32", "--quiet"]
    env = dict(os.environ, PYTHONPATH=REPO)
    cut = str(tmp_path / "cut")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.fuse", *args, "--out", cut], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(cut + ".partial", "checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not os.path.exists(cut), "the run finished before it could be killed (or left a half-written folder)"
    killed_at = torch.load(os.path.join(cut + ".partial", "checkpoint.pt"), weights_only=True)["epoch"]  # plain values only
    other = [a if a != "0.01" else "0.02" for a in args]
    refused = run_cli("-m pipeline.fuse", *other, "--out", cut, "--resume")
    assert refused.returncode == 2 and "other options: lr 0.01 (now 0.02)" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    resumed = run_cli("-m pipeline.fuse", *args, "--out", cut, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole = run_cli("-m pipeline.fuse", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    a = json.load(open(os.path.join(cut, "model.json")))["finetune"]
    b = json.load(open(os.path.join(tmp_path / "whole", "model.json")))["finetune"]
    assert a["resumed_from_epoch"] == killed_at < 25
    assert [h["train_loss"] for h in a["history"][1:]] == pytest.approx([h["train_loss"] for h in b["history"][1:]], rel=1e-5)
    assert a["best_epoch"] == b["best_epoch"]


def test_finetuning_that_does_not_beat_the_head_says_so(tiny_pipeline, tmp_path):
    data, feats, head = tiny_pipeline
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "m"), "--finetune-epochs", "1",
                "--lr", "50", "--batch-size", "8", "--precision", "fp32", "--quiet", "--no-onnx")
    assert r.returncode == 0, r.stderr
    assert "fine-tuning did not improve on the head: kept epoch 0" in r.stdout and "--lr" in r.stdout
    history = json.load(open(tmp_path / "m" / "model.json"))["finetune"]["history"]
    assert [h["epoch"] for h in history] == [0, 1] and history[1]["val_accuracy"] <= history[0]["val_accuracy"]


def test_fuse_command_module_is_loaded_once():
    """``python -m pipeline.fuse`` runs the command module as __main__; nothing imports it a second time."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.fuse", "--help"], capture_output=True,
                       text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line]
    assert r.returncode == 0 and "Fuse a trained head" in r.stdout
    assert "pipeline.fusing" in imported and "pipeline.fuse" not in imported


def test_fuse_cli_bad_inputs(tiny_pipeline, tmp_path):
    data, feats, head = tiny_pipeline
    r = run_cli("-m pipeline.fuse", "--head", str(tmp_path / "nohead"), "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "m"), "--data", str(tmp_path / "missing"))
    assert r.returncode == 2 and "pass --data ROOT" in r.stderr
    meta = json.load(open(os.path.join(head, "head.json")))
    meta["feature_identity"]["weights"] = "sha256:" + "0" * 64
    json.dump(meta, open(os.path.join(head, "head.json"), "w"))
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "weights sha256:000" in r.stderr and "not available" in r.stderr
    rbf = str(tmp_path / "rbf")
    train_head(HeadConfig(feats, rbf, clf="svm", kernel="rbf", n_jobs=1))
    r = run_cli("-m pipeline.fuse", "--head", rbf, "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "not linear" in r.stderr


def test_predict_cli_real_and_broken_images(tiny_pipeline, tmp_path):
    data, feats, head = tiny_pipeline
    out = str(tmp_path / "model")
    build_model(BuildConfig(head, out), log=lambda *_: None)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "zero.jpg").write_bytes(b"")
    (broken / "text.png").write_text("hello")
    r = run_cli("-m pipeline.predict", "--model", out, os.path.join(data, "val", "bees"), str(broken), "--format", "jsonl",
                "--top-k", "2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 6 and {"path", "class", "prob"} <= set(rows[0]) and len(rows[0]["top"]) == 2
    assert "skipped" in r.stderr and "zero.jpg: empty file" in r.stderr and "text.png" in r.stderr
    only_bad = run_cli("-m pipeline.predict", "--model", out, str(broken))
    assert only_bad.returncode == 1
    csv_out = run_cli("-m pipeline.predict", "--model", out, os.path.join(data, "val", "ants"), "--format", "csv")
    assert csv_out.stdout.splitlines()[0] == "path,class,prob" and len(csv_out.stdout.splitlines()) == 7


def test_predict_in_pooled_batches_equals_one_image_at_a_time(tiny_pipeline, tmp_path):
    from pipeline.predict import predict_images

    data, feats, head = tiny_pipeline
    out = str(tmp_path / "model")
    build_model(BuildConfig(head, out), log=lambda *_: None)
    (tmp_path / "zero.jpg").write_bytes(b"")
    images = [os.path.join(data, "val", c, f"img_{i:03d}.jpg") for c in ("ants", "bees") for i in range(6)]
    paths = images[:5] + [str(tmp_path / "zero.jpg"), str(tmp_path / "missing.png")] + images[5:]
    batched, skipped = predict_images(out, paths, top_k=2, batch_size=4)  # batches mixing readable and broken files
    alone, skipped_alone = predict_images(out, paths, top_k=2, batch_size=1)
    assert skipped == skipped_alone == [(str(tmp_path / "zero.jpg"), "empty file (0 bytes)"),
                                        (str(tmp_path / "missing.png"), "file not found")]
    assert [p.path for p in batched] == [p.path for p in alone] == images  # input order, broken files left out
    for b, a in zip(batched, alone):
        assert [c for c, _ in b.top] == [c for c, _ in a.top]
        assert np.allclose([v for _, v in b.top], [v for _, v in a.top], atol=1e-5)


def test_rebuild_refuses_a_weights_file_that_changed(tmp_path):
    from pipeline.affine import HeadError
    from pipeline.rebuild import rebuild_backbone

    path = str(tmp_path / "w.pth")
    torch.save(load_backbone("tiny_cnn", "none").model.state_dict(), path)
    original = load_backbone("tiny_cnn", path)
    identity = FeatureIdentity.of_backbone(original, ["a", "b"])
    assert rebuild_backbone(identity).weights.identity == original.weights.identity
    state = original.model.state_dict()
    state["fc.bias"] += 1
    torch.save(state, path)  # the same file name now holds other weights
    with pytest.raises(HeadError, match="differ"):
        rebuild_backbone(identity)


def test_fuse_says_when_the_head_was_trained_on_bf16_features(tiny_pipeline, tmp_path):
    from features.extract import ExtractConfig, extract

    data, _, fp32_head = tiny_pipeline  # its features are fp32: no note
    heard = []
    build_model(BuildConfig(fp32_head, str(tmp_path / "m32"), onnx=False), log=heard.append)
    assert not any("bf16 features" in line for line in heard)
    feats, head = str(tmp_path / "bf16.h5"), str(tmp_path / "head16")
    extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", precision="bf16",
                          progress=False))
    train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    heard.clear()
    build_model(BuildConfig(head, str(tmp_path / "m16"), onnx=False), log=heard.append)
    assert any(line.startswith("note: the head was trained on bf16 features") for line in heard), heard


def test_image_size_flows_from_extraction_to_the_model(tmp_path):
    """Features at --image-size 64 (tiny_cnn's own is 32): the head, the fused model and its predictions on the
    image files all use the recorded 64-px recipe, and the model's probabilities are the head's on the features."""
    from features.extract import ExtractConfig, extract
    from features.store import FeatureFile
    from pipeline.affine import load_affine
    from pipeline.predict import predict_images
    from tests.conftest import make_imagefolder

    data = make_imagefolder(str(tmp_path / "data"), {"train": {"ants": 12, "bees": 12}, "val": {"ants": 6, "bees": 6}})
    feats = str(tmp_path / "f.h5")
    extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", precision="fp32",
                          image_size=64, progress=False))
    with FeatureFile(feats) as ff:
        prep = ff.identity().preprocessing
        val = ff.read_split("val").clean()
    assert (prep.crop_size, prep.resize_size) == (64, 72)  # tiny_cnn's 36/32 ratio kept
    head = str(tmp_path / "head")
    train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    out = str(tmp_path / "model")
    sidecar = build_model(BuildConfig(head, out, input_size=64), log=lambda *_: None)
    assert sidecar["input_size"] == 64 and sidecar["preprocessing"]["resize_size"] == 72
    logits = load_affine(head).logits(val.features)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    preds, skipped = predict_images(out, [os.path.join(data, p) for p in val.paths], top_k=2)
    classes = sidecar["classes"]
    got = np.array([[dict(p.top)[c] for c in classes] for p in preds])
    assert not skipped
    np.testing.assert_allclose(got, expected, atol=1e-4)
