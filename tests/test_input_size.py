"""The exported model's input size: candidates, the choice on val, rebuilt padding, and the fuse command."""

import json
import os

import numpy as np
import pytest
import torch

from features.backbones import load_backbone
from pipeline.fusing import fuse_head
from pipeline.input_size import at_size, best_size, candidate_sizes
from tests.conftest import make_imagefolder, run_cli
from tests.test_fuse_export import _random_head


def test_candidate_sizes_are_the_extraction_size_and_larger_multiples_of_32():
    assert candidate_sizes(224) == [224, 256, 288]
    assert candidate_sizes(288) == [288, 320, 384]
    assert candidate_sizes(64) == [64, 96]
    assert candidate_sizes(32) == [32]  # 8/7 and 9/7 of 32 round back to 32
    assert candidate_sizes(112) == [112, 128, 160]  # 9/7 of 112 is 144, halfway: halves round up


def test_a_larger_size_is_kept_only_when_strictly_better():
    assert best_size({224: 0.95, 256: 0.96, 288: 0.97}, 224) == 288
    assert best_size({224: 0.98, 256: 0.98, 288: 0.98}, 224) == 224  # a tie keeps the cheaper side
    assert best_size({224: 0.95, 256: 0.97, 288: 0.97}, 224) == 256
    assert best_size({224: 0.97, 256: 0.96, 288: 0.90}, 224) == 224
    assert best_size({224: None, 256: None}, 224) == 224  # no readable image: nothing to choose on


def test_each_side_counts_with_the_better_of_its_two_heads():
    from pipeline.input_size import size_and_head

    fed = {224: 0.95, 256: 0.89, 288: 0.63}
    assert size_and_head(fed, {256: 0.95, 288: 0.96}, {256, 288}, 224) == (288, True)  # refitted, 288 pays
    assert size_and_head(fed, {256: 0.95, 288: 0.95}, {256, 288}, 224) == (224, False)  # a tie keeps the smaller
    fed = {224: 0.948, 256: 0.954, 288: 0.967}
    assert size_and_head(fed, {256: 0.961, 288: 0.974}, {256, 288}, 224) == (288, True)
    assert size_and_head(fed, {256: 0.941, 288: 0.961}, {256, 288}, 224) == (288, False)  # fed wins at 288
    assert size_and_head(fed, {256: 0.941, 288: 0.967}, {256, 288}, 224) == (288, True)  # a tie goes to the refit
    assert size_and_head(fed, {}, set(), 224) == (288, False)  # --no-refit-head
    assert size_and_head({288: 0.90}, {288: 0.89}, {288}, 224, asked=288) == (288, False)
    assert size_and_head({}, {}, {288}, 224, asked=288) == (288, True)  # no val split: nothing to compare with


def test_a_network_with_fixed_padding_is_rebuilt_for_the_new_size():
    """Lite0's TF "same" padding is fixed when built: at 240 px (odd maps deeper down) the rebuilt network, with the
    fused head and the same weights, equals one built for 240 from the start, and differs from the 224 build."""
    torch.manual_seed(0)
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    fuse_head(backbone, _random_head(backbone.feature_dim, 3))
    sized = at_size(backbone, 240)
    assert sized.preprocessing.crop_size == 240 and sized.preprocessing.resize_size == round(240 * 256 / 224)
    reference = load_backbone("efficientnet_lite0", "DEFAULT", 240)
    fuse_head(reference, _random_head(reference.feature_dim, 3))
    reference.model.load_state_dict(backbone.model.state_dict())  # the same head
    x = torch.randn(2, 3, 240, 240)
    with torch.inference_mode():
        rebuilt, built, unsized = sized.model(x), reference.model.eval()(x), backbone.model(x)
    torch.testing.assert_close(rebuilt, built, rtol=0, atol=0)
    assert not torch.allclose(rebuilt, unsized)  # the 224 build pads differently at 240


@pytest.fixture
def sized_pipeline(tmp_path):
    """tiny_cnn features at 64 px (its candidates: 64 and 96) and a logreg head: ``(data root, head folder)``."""
    from features.extract import ExtractConfig, extract
    from pipeline.train_head import HeadConfig, train_head

    data = make_imagefolder(str(tmp_path / "data"), {"train": {"ants": 12, "bees": 12}, "val": {"ants": 6, "bees": 6}})
    feats = str(tmp_path / "f.h5")
    extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", precision="fp32",
                          image_size=64, progress=False))
    head = str(tmp_path / "head")
    train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    return data, head


def _val_accuracy(model_dir: str, data: str) -> float:
    from pipeline.predict import expand_inputs, predict_images

    predictions, skipped = predict_images(model_dir, expand_inputs([os.path.join(data, "val")]))
    assert not skipped
    return float(np.mean([p.top[0][0] == os.path.basename(os.path.dirname(p.path)) for p in predictions]))


def test_fuse_chooses_the_input_size_on_val_and_the_exports_use_it(sized_pipeline, tmp_path):
    data, head = sized_pipeline
    out = str(tmp_path / "auto")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", out, "--no-onnx", "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.load(open(os.path.join(out, "model.json")))
    choice = meta["input_size_choice"]
    scored = {int(s): a for s, a in choice["val_accuracy"].items()}
    assert sorted(scored) == [64, 96] and choice["rule"] == "auto" and choice["extraction_size"] == 64
    assert choice["size"] == best_size(scored, 64) == meta["input_size"] == meta["preprocessing"]["crop_size"]
    assert f"input size {choice['size']} px" in r.stdout and "--input-size auto" in r.stdout
    # A side counts with the better of the head as fused and the head refitted there.
    refitted = {int(k): a for k, a in choice["val_accuracy_refit"].items()}
    assert sorted(refitted) == [96] and sorted(int(k) for k in choice["refit_C"]) == [96]
    better = {size: max(a, refitted.get(size, a)) for size, a in scored.items()}
    assert choice["size"] == best_size(better, 64)
    kept = choice["size"] == 96 and refitted[96] >= scored[96]
    assert choice["head"] == ("refitted" if kept else "as fused")
    # The exported model, on the image files, scores what was measured for the head it holds.
    assert _val_accuracy(out, data) == pytest.approx(refitted[96] if kept else scored[choice["size"]])


def test_fuse_input_size_asked_for_and_refused(sized_pipeline, tmp_path):
    data, head = sized_pipeline
    out = str(tmp_path / "asked")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", out, "--input-size", "96", "--no-onnx", "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.load(open(os.path.join(out, "model.json")))
    assert meta["input_size"] == 96 and meta["preprocessing"]["resize_size"] == 108  # tiny_cnn's 36/32 ratio
    choice = meta["input_size_choice"]
    assert choice["size"] == 96 and choice["extraction_size"] == 64 and choice["rule"] == "asked"
    assert list(choice["val_accuracy"]) == list(choice["val_accuracy_refit"]) == ["96"]  # that side only
    assert "input size 96 px (--input-size), the features were extracted at 64 px (val accuracy 96 px" in r.stdout
    image = os.path.join(data, "val", "ants", "img_000.jpg")
    assert run_cli("-m pipeline.predict", "--model", out, image).returncode == 0
    for bad, said in (("20", "below 32 px"), ("big", "neither 'auto' nor a whole number")):
        r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / bad), "--input-size", bad)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr
        assert not os.path.exists(tmp_path / bad)


def test_without_a_val_split_the_extraction_size_is_kept(tmp_path):
    from features.extract import ExtractConfig, extract
    from pipeline.train_head import HeadConfig, train_head

    data = make_imagefolder(str(tmp_path / "data"), {"": {"ants": 8, "bees": 8}})  # one split, no val
    feats = str(tmp_path / "f.h5")
    extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", precision="fp32",
                          image_size=64, progress=False))
    head = str(tmp_path / "head")
    train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    out = str(tmp_path / "model")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", out, "--no-onnx", "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.load(open(os.path.join(out, "model.json")))
    assert meta["input_size"] == 64 and meta["input_size_choice"]["rule"] == "no val split"
    assert "input size 64 px, the extraction size (--input-size auto needs a val split to choose on)" in r.stdout


def test_the_size_options_refuse_below_the_networks_minimum():
    from features.backbones import MIN_IMAGE_SIZE
    from features.cli_common import MIN_SIDE

    assert MIN_SIDE == MIN_IMAGE_SIZE  # the options cannot import features.backbones (it loads torch)
    below = str(MIN_SIDE - 1)
    for command, args in [("run_extract.py", ["--data", "nowhere", "--image-size", below]),
                          ("-m pipeline.fuse", ["--head", "nowhere", "--out", "nowhere", "--input-size", below])]:
        r = run_cli(command, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (command, r.stderr)
        assert f"{below} is below {MIN_SIDE} px" in r.stderr or f"x>={MIN_SIDE}" in r.stderr, (command, r.stderr)


def _fused_at(head_dir: str, size: int):
    """The head's backbone with the head fused in, at input side ``size`` (as the fuse command builds it)."""
    from pipeline.affine import load_affine
    from pipeline.rebuild import rebuild_backbone

    head = load_affine(head_dir)
    backbone = rebuild_backbone(head.feature_identity)
    fuse_head(backbone, head)
    backbone.model.eval()
    return at_size(backbone, size), head


@pytest.mark.parametrize("head_options", [
    {"clf": "logreg"},  # C by cross-validation
    {"clf": "svm", "C": 0.05, "class_weight": "balanced"},  # a fixed C
], ids=["logreg-cv", "svm-fixed-C"])
def test_the_refit_fits_the_head_as_run_head_fits_features_extracted_at_that_size(tmp_path, head_options):
    """Refitting a 64-px head at 96 px gives the head run_head.py fits, with the same options, on features
    run_extract.py makes at 96 px: the same C and the same weights (three classes, unbalanced)."""
    from features.extract import ExtractConfig, extract
    from pipeline.affine import load_affine, read_head_report
    from pipeline.build_model import BuildConfig, file_splits
    from pipeline.refit import head_recipe, inference_model, refit_head
    from pipeline.train_head import HeadConfig, train_head

    data = make_imagefolder(str(tmp_path / "data"), {"train": {"ants": 12, "bees": 9, "wasps": 7},
                                                      "val": {"ants": 4, "bees": 4, "wasps": 4}})
    heads = {}
    for size in (64, 96):
        feats = str(tmp_path / f"f{size}.h5")
        extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", precision="fp32",
                              image_size=size, progress=False))
        heads[size] = str(tmp_path / f"head{size}")
        train_head(HeadConfig(feats, heads[size], n_jobs=1, **head_options))
    reference = load_affine(heads[96])

    backbone, head = _fused_at(heads[64], 96)
    recipe, why_not = head_recipe(read_head_report(heads[64]), head.clf)
    assert why_not == "" and recipe.cross_validated == ("C" not in head_options)
    assert (recipe.clf, recipe.class_weight) == (head_options["clf"], head_options.get("class_weight"))
    splits = file_splits(BuildConfig(head_dir=heads[64], out_dir=str(tmp_path / "unused")), head)
    cpu = torch.device("cpu")
    refit = refit_head(inference_model(backbone, cpu), backbone, head, recipe, splits.root, splits.train, cpu)
    assert refit.train_images == 28 and refit.C == reference.extra["C"] == refit.head.extra["C"]
    assert refit.head.W.shape == head.W.shape == (3, backbone.feature_dim)
    np.testing.assert_allclose(refit.head.W, reference.W, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(refit.head.b, reference.b, rtol=1e-3, atol=1e-6)
    assert not np.allclose(refit.head.W, head.W)  # it is not the 64-px head handed back


def test_a_side_where_the_refit_fails_is_scored_with_the_fused_head(sized_pipeline, tmp_path):
    """A class whose training images can no longer be read cannot be refitted: the command says so and goes on."""
    import glob

    data, head = sized_pipeline  # this test's own copy of the images
    for path in glob.glob(os.path.join(data, "train", "bees", "*")):
        with open(path, "wb") as fh:
            fh.write(b"not an image")
    out = str(tmp_path / "model")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", out, "--no-onnx")
    assert r.returncode == 0, r.stderr
    assert ("warning: cannot refit the head at 96 px: split 'train' has a single class (ants); a classifier needs two "
            "or more; the head as fused is scored there") in r.stdout
    choice = json.load(open(os.path.join(out, "model.json")))["input_size_choice"]
    assert choice["head"] == "as fused" and choice["val_accuracy_refit"] == {} and "96" in choice["val_accuracy"]


def test_fuse_refits_the_head_at_an_asked_size_and_keeps_it_only_when_it_scores_as_well(sized_pipeline, tmp_path):
    data, head = sized_pipeline
    out, plain = str(tmp_path / "refit"), str(tmp_path / "plain")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", out, "--input-size", "96", "--no-onnx")
    assert r.returncode == 0, r.stderr
    choice = json.load(open(os.path.join(out, "model.json")))["input_size_choice"]
    fed, refitted, C = choice["val_accuracy"]["96"], choice["val_accuracy_refit"]["96"], choice["refit_C"]["96"]
    assert f"96 px {fed:.4f} (refitted {refitted:.4f})" in r.stdout
    kept = refitted >= fed
    assert choice["head"] == ("refitted" if kept else "as fused")
    assert choice["refit_train_images"] == (24 if kept else None)
    assert (f"head refitted at 96 px on 24 training images (C={C:g}), as logreg was fitted at 64 px: logits equal "
            "head(features)" in r.stdout) == kept
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", plain, "--input-size", "96", "--no-refit-head",
                "--no-onnx", "--quiet")
    assert r.returncode == 0, r.stderr
    plain_choice = json.load(open(os.path.join(plain, "model.json")))["input_size_choice"]
    assert plain_choice["head"] == "as fused" and plain_choice["val_accuracy_refit"] == {}
    assert plain_choice["val_accuracy"]["96"] == fed
    # Each exported model scores, on the image files, what was measured for the head it holds.
    assert _val_accuracy(plain, data) == pytest.approx(fed)
    assert _val_accuracy(out, data) == pytest.approx(refitted if kept else fed)


@pytest.mark.parametrize("change, said", [
    ({"mode": "streaming"}, "fitted by streaming"),
    ({"init": "imagenet"}, "initialised from --init imagenet"),
    ({"exclude": {"excluded": 2}}, "--exclude"),
    ({"augmented_views_used": True}, "augmented views"),
    ({"mode": None}, "does not say how the head was fitted"),
    ({"C": "many"}, "cannot be read as run_head.py writes it"),
    (None, "report.json is missing"),
])
def test_a_head_whose_fit_cannot_be_repeated_is_not_refitted_and_says_why(sized_pipeline, tmp_path, change, said):
    import shutil

    from pipeline.affine import read_head_report
    from pipeline.refit import head_recipe

    _, head = sized_pipeline
    copy = str(tmp_path / "copy")
    shutil.copytree(head, copy)
    report_path = os.path.join(copy, "report.json")
    if change is None:
        os.remove(report_path)
    else:
        report = json.load(open(report_path))
        report.update(change)
        json.dump(report, open(report_path, "w"))
    recipe, why_not = head_recipe(read_head_report(copy), "logreg")
    assert recipe is None and said in why_not
    out = str(tmp_path / "model")
    r = run_cli("-m pipeline.fuse", "--head", copy, "--out", out, "--input-size", "96", "--no-onnx")
    assert r.returncode == 0, r.stderr
    assert f"the head is not refitted at other input sizes: {why_not}" in r.stdout
    choice = json.load(open(os.path.join(out, "model.json")))["input_size_choice"]
    assert choice["head"] == "as fused" and choice["refit_C"] == {} and "96" in choice["val_accuracy"]


def test_a_damaged_head_report_is_refused_in_one_line_before_any_work(sized_pipeline, tmp_path):
    _, head = sized_pipeline
    with open(os.path.join(head, "report.json"), "w") as fh:
        fh.write('{"clf": "logreg", ')  # cut short
    out = str(tmp_path / "model")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", out, "--no-onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "report.json: unreadable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(out)  # no model folder that looks complete
