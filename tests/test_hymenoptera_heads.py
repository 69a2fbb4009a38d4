"""Stage two on real Lite0 features of the real ants/bees data: the accuracy targets."""

import os

import numpy as np
import pytest
import torch

from features.backbones import load_backbone
from features.images import load_rgb
from features.store import FeatureFile
from pipeline.affine import load_affine
from pipeline.train_head import HeadConfig, train_head

pytestmark = pytest.mark.slow


def _val_accuracy(features, tmp_path, **kw):
    result = train_head(HeadConfig(features, str(tmp_path / kw["clf"]), **kw))
    print(f"{kw}: C={result.report['C']:.3g} cv={result.report['cv_score']:.4f} "
          f"val={result.report['splits']['val']['accuracy']:.4f} fit={result.report['fit_seconds']:.2f}s")
    return result.report["splits"]["val"]["accuracy"]


def test_logreg_with_augmented_views_reaches_095(hymenoptera_lite0_views, tmp_path):
    assert _val_accuracy(hymenoptera_lite0_views, tmp_path, clf="logreg") >= 0.95


def test_svm_reaches_094(hymenoptera_lite0, tmp_path):
    assert _val_accuracy(hymenoptera_lite0, tmp_path, clf="svm") >= 0.94


def test_linear_imagenet_init_reaches_097(hymenoptera_lite0, tmp_path):
    assert _val_accuracy(hymenoptera_lite0, tmp_path, clf="linear", init="imagenet") >= 0.97


def test_imagenet_init_with_zero_epochs_is_the_backbones_own_classifier(hymenoptera, hymenoptera_lite0, tmp_path):
    out = str(tmp_path / "zero")
    result = train_head(HeadConfig(hymenoptera_lite0, out, clf="linear", init="imagenet", epochs=0, C=1.0))
    assert result.report["imagenet_matches"] == {"ants": 310, "bees": 309}
    head = load_affine(out)
    with FeatureFile(hymenoptera_lite0) as f:
        val = f.read_split("val")
    rows = np.arange(0, 153, 19)
    backbone = load_backbone("efficientnet_lite0")
    x = torch.stack([backbone.preprocessing.eval_transform()(load_rgb(os.path.join(hymenoptera, p))) for p in val.paths[rows]])
    with torch.inference_mode():
        own = backbone.model(x)[:, [310, 309]].double().numpy()
    np.testing.assert_allclose(head.logits(val.features[rows]), own, rtol=1e-4, atol=1e-4)


def test_fused_lite0_reproduces_head_val_accuracy_exactly(hymenoptera, hymenoptera_lite0, tmp_path):
    from pipeline.build_model import BuildConfig, build_model
    from pipeline.predict import expand_inputs, predict_images

    head = str(tmp_path / "head")
    report = train_head(HeadConfig(hymenoptera_lite0, head, clf="linear", init="imagenet")).report
    model = str(tmp_path / "model")
    build_model(BuildConfig(head, model, input_size=224), log=lambda *_: None)  # the extraction size: the head's
    paths = expand_inputs([os.path.join(hymenoptera, "val")])

    def exported_accuracy(model_dir: str) -> float:
        predictions, skipped = predict_images(model_dir, paths)
        truth = [os.path.basename(os.path.dirname(p.path)) for p in predictions]
        assert not skipped and len(predictions) == 153
        return float(np.mean([p.top[0][0] == t for p, t in zip(predictions, truth)]))

    assert exported_accuracy(model) == report["splits"]["val"]["accuracy"]
    # --input-size auto: scored as exported at each side; at 224 that is the head itself, at the chosen side the
    # exported model on the image files.
    auto = str(tmp_path / "auto")
    choice = build_model(BuildConfig(head, auto), log=lambda *_: None)["input_size_choice"]
    assert choice["val_accuracy"]["224"] == report["splits"]["val"]["accuracy"]
    assert exported_accuracy(auto) == choice["val_accuracy"][str(choice["size"])]


def test_a_logreg_head_refitted_at_a_larger_side_exports_what_it_scored(hymenoptera, hymenoptera_lite0, tmp_path):
    """The real Lite0 weights: a logreg head is refitted at each larger side, and the exported model, on the image
    files, scores what was measured for the head it holds at the side it was given."""
    from pipeline.build_model import BuildConfig, build_model
    from pipeline.predict import expand_inputs, predict_images

    head = str(tmp_path / "head")
    train_head(HeadConfig(hymenoptera_lite0, head, clf="logreg"))
    model = str(tmp_path / "model")
    choice = build_model(BuildConfig(head, model, onnx=False), log=lambda *_: None)["input_size_choice"]
    assert sorted(choice["val_accuracy_refit"]) == sorted(choice["refit_C"]) == ["256", "288"]
    size = str(choice["size"])
    scores = choice["val_accuracy_refit"] if choice["head"] == "refitted" else choice["val_accuracy"]
    predictions, skipped = predict_images(model, expand_inputs([os.path.join(hymenoptera, "val")]))
    truth = [os.path.basename(os.path.dirname(p.path)) for p in predictions]
    assert not skipped and len(predictions) == 153
    assert np.mean([p.top[0][0] == t for p, t in zip(predictions, truth)]) == pytest.approx(scores[size])


def test_ctrl_c_while_the_sides_are_scored_and_refitted_leaves_no_model(hymenoptera_lite0, tmp_path):
    """SIGINT after the fuse check, while the sizes are scored and the head refitted: one line, exit 130, and no
    model folder that looks complete."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, one_line_error

    head = str(tmp_path / "head")
    train_head(HeadConfig(hymenoptera_lite0, head, clf="logreg"))
    out = str(tmp_path / "model")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.fuse", "--head", head, "--out", out, "--no-onnx"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO))
    for line in proc.stdout:  # the scoring of the sides (tens of seconds here) starts after this line
        if line.startswith("fused logreg head"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    one_line_error(err, f"interrupted; nothing was written to {out}; rerun the command")
    assert not os.path.exists(out)
