"""The fine-tuning recipe's mechanics on a tiny CNN and generated images: phases, schedule, crops, patience."""

import dataclasses
import json
import os

import pytest
import torch
from PIL import Image

from features.backbones import load_backbone
from pipeline.finetune import (PHOTO_CROP_SCALE, SMALL_SOURCE_CROP_SCALE, FinetuneConfig, ResumeMismatch,
                               crop_scale_for, eval_loader, evaluate, finetune, source_short_side, warmup_cosine,
                               weight_average)
from tests.conftest import make_imagefolder, run_cli


@pytest.fixture
def tiny_setup(tmp_path):
    root = make_imagefolder(str(tmp_path / "data"), {"train": {"a": 8, "b": 8}, "val": {"a": 4, "b": 4}})
    items = {split: [(os.path.join(split, c, f), label) for label, c in enumerate("ab")
                     for f in sorted(os.listdir(os.path.join(root, split, c)))] for split in ("train", "val")}
    backbone = load_backbone("tiny_cnn", "none")
    backbone.model.fc = torch.nn.Linear(32, 2)
    return root, items, backbone


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after, prefix):
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def test_head_only_epochs_leave_the_body_untouched(tiny_setup, tmp_path):
    root, items, backbone = tiny_setup
    before = _params(backbone.model)
    cfg = FinetuneConfig(epochs=1, frozen_epochs=1, lr=1e-2, batch_size=4, progress=False)
    result = finetune(backbone, root, items["train"], None, cfg, torch.device("cpu"), "fp32", str(tmp_path))
    after = _params(backbone.model)
    assert result.history[1]["phase"] == "head only"
    assert _changed(before, after, "fc.") and not _changed(before, after, "features.")


def test_end_to_end_epochs_train_the_body_with_frozen_batchnorm_statistics(tiny_setup, tmp_path):
    root, items, backbone = tiny_setup
    before = _params(backbone.model)
    cfg = FinetuneConfig(epochs=2, frozen_epochs=1, lr=1e-2, batch_size=4, progress=False)
    result = finetune(backbone, root, items["train"], None, cfg, torch.device("cpu"), "fp32", str(tmp_path))
    changed = _changed(before, _params(backbone.model), "features.")
    assert [h["phase"] for h in result.history] == ["fused head", "head only", "end to end"]
    assert "features.0.weight" in changed and "features.1.weight" in changed  # conv and BatchNorm affine learn
    assert not [k for k in changed if "running_" in k]  # the pretrained statistics stay (train_bn=False)


def test_train_bn_updates_the_statistics(tiny_setup, tmp_path):
    root, items, backbone = tiny_setup
    before = _params(backbone.model)
    cfg = FinetuneConfig(epochs=1, train_bn=True, batch_size=4, progress=False)
    finetune(backbone, root, items["train"], None, cfg, torch.device("cpu"), "fp32", str(tmp_path))
    assert "features.1.running_mean" in _changed(before, _params(backbone.model), "features.")


def test_patience_stops_and_keeps_the_best_epoch(tiny_setup, tmp_path):
    root, items, backbone = tiny_setup
    cfg = FinetuneConfig(epochs=6, lr=10.0, optimizer="sgd", patience=1, batch_size=4, progress=False)
    fused = _params(backbone.model)
    result = finetune(backbone, root, items["train"], items["val"], cfg, torch.device("cpu"), "fp32", str(tmp_path))
    epochs_run = [h["epoch"] for h in result.history]
    assert result.stopped_early and epochs_run == list(range(result.best_epoch + 2))
    best = max(result.history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
    assert result.best_epoch == best["epoch"]
    # The weights left in the model are the best epoch's, whichever it was: they score its val accuracy again.
    val = eval_loader(root, items["val"], backbone.preprocessing)
    assert evaluate(backbone.model, val, torch.device("cpu")) == best["val_accuracy"]
    if result.best_epoch == 0:
        assert not _changed(fused, _params(backbone.model), "")  # the fused head's weights came back


def test_warmup_then_cosine_decay():
    factor = warmup_cosine(100, 0.1)
    rising = [factor(s) for s in range(10)]
    assert rising == sorted(rising) and rising[0] == pytest.approx(0.1) and factor(9) == 1.0
    decaying = [factor(s) for s in range(10, 100)]
    assert decaying == sorted(decaying, reverse=True) and factor(99) < 0.01


def test_crop_scale_follows_the_source_resolution(tmp_path):
    for name, size in [("small.png", (64, 64)), ("wide.png", (640, 480))]:
        Image.new("RGB", size).save(tmp_path / name)
    small = source_short_side(str(tmp_path), [("small.png", 0)] * 3)
    large = source_short_side(str(tmp_path), [("wide.png", 0), ("missing.png", 0)])
    assert (small, large) == (64, 480)
    assert crop_scale_for(small, 256) == SMALL_SOURCE_CROP_SCALE
    assert crop_scale_for(large, 256) == PHOTO_CROP_SCALE
    assert crop_scale_for(None, 256) == PHOTO_CROP_SCALE


def test_finetune_auto_from_the_command_line(tiny_pipeline, tmp_path):
    data, feats, head = tiny_pipeline
    out = tmp_path / "m"
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", str(out), "--finetune", "auto", "--finetune-epochs", "3",
                "--patience", "1", "--crop-scale", "0.5,1", "--no-flip", "--batch-size", "8", "--quiet", "--no-onnx")
    assert r.returncode == 0, r.stderr
    ft = json.load(open(out / "model.json"))["finetune"]
    assert ft["patience"] == 1 and ft["epochs"] == 3 and ft["crop_scale"] == [0.5, 1.0] and ft["flip"] is False
    assert [h["epoch"] for h in ft["history"]] == list(range(len(ft["history"])))
    assert ft["stopped_early"] == (len(ft["history"]) < 4)
    assert f"epoch {ft['best_epoch']}" in r.stdout
    # --lr auto on random weights: no ImageNet classifier to ask, so the familiar-content rate, said so.
    assert ft["lr"] == 1e-5 and ft["lr_auto"]["familiarity"] is None
    assert "body learning rate 1e-5 (--lr auto): random weights" in r.stdout
    bad = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "x"), "--crop-scale", "1,0.5")
    assert bad.returncode == 2 and "--crop-scale" in bad.stderr and "Traceback" not in bad.stderr
    assert ft["ema_half_life"] is None and "moving average" not in r.stdout  # off by default
    given = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "g"), "--finetune-epochs", "1",
                    "--lr", "2.5e-4", "--ema", "0.5", "--batch-size", "8", "--no-onnx")
    assert given.returncode == 0, given.stderr
    ft = json.load(open(tmp_path / "g" / "model.json"))["finetune"]
    assert ft["lr"] == 2.5e-4 and ft["lr_auto"] is None and "--lr auto" not in given.stdout
    assert ft["ema_half_life"] == 0.5 and "moving average of its weights (half-life 0.5 epochs)" in given.stdout
    # An impossible precision is refused before any work, in one line.
    fp16 = run_cli("-m pipeline.fuse", "--head", head, "--out", str(tmp_path / "h"), "--device", "cpu",
                   "--precision", "fp16")
    assert fp16.returncode == 2 and "only supported on CUDA" in fp16.stderr and "Traceback" not in fp16.stderr
    assert not os.path.exists(tmp_path / "h")


def test_range_test_suggests_a_tenth_of_the_lowest_loss_or_nothing():
    from benchmarks.lr_range import geometric_rates, smoothed, suggest_lr

    rates = geometric_rates(1e-6, 1e-2, 5)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-2) and rates[2] == pytest.approx(1e-4)
    assert smoothed([2.0] * 4) == pytest.approx([2.0] * 4)  # bias-corrected: a constant stays itself
    assert suggest_lr(rates, [1.0, 0.8, 0.5, 0.9, 3.0]) == pytest.approx(1e-5)
    assert suggest_lr(rates, [1.0, 0.99, 1.2, 2.0, 4.0]) is None  # nothing lowered the loss by 5 %


def test_range_test_restores_the_model_and_stops_on_divergence(tiny_setup):
    from benchmarks.lr_range import lr_range_test
    from pipeline.finetune import _loaders, make_optimizer, parameter_groups

    root, items, backbone = tiny_setup
    cfg = FinetuneConfig(epochs=1, batch_size=4, optimizer="sgd", progress=False)
    loader, _ = _loaders(backbone, root, items["train"], None, cfg, (0.5, 1.0), torch.Generator().manual_seed(0))
    model = backbone.model
    before, rng = _params(model), torch.get_rng_state()
    test = lr_range_test(model, loader, lambda r: make_optimizer(parameter_groups(model, "fc", r, 10.0), cfg),
                         torch.nn.CrossEntropyLoss(), torch.device("cpu"), "fp32", lr_min=1e-3, lr_max=1e4, steps=30)
    assert not _changed(before, _params(model), "") and torch.equal(torch.get_rng_state(), rng)
    assert 5 < len(test.lrs) < 30  # SGD at rates up to 1e4 diverges before the last step
    assert test.lrs == sorted(test.lrs) and len(test.losses) == len(test.lrs)


def test_familiarity_is_the_mean_top_class_probability():
    import numpy as np

    from pipeline.learning_rate import imagenet_familiarity

    W, b = np.eye(1000, 4) * 30.0, np.zeros(1000)
    assert imagenet_familiarity(W, b, np.zeros((5, 4))) == pytest.approx(1e-3)  # no class stands out
    sure = imagenet_familiarity(W, b, np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    assert sure > 0.99 and imagenet_familiarity(W, b, np.array([[0.1, 0, 0, 0]])) < sure


def test_lr_auto_is_higher_for_drawings_than_for_photos(hymenoptera_lite0, tmp_path):
    from features.demo_data import write_digits_imagefolder
    from features.extract import ExtractConfig, extract
    from pipeline.learning_rate import FAMILIAR_LR, FAMILIARITY_THRESHOLD, UNFAMILIAR_LR, choose_lr

    digits = str(tmp_path / "digits")
    write_digits_imagefolder(digits, per_class=3)
    digit_feats = str(tmp_path / "digits.h5")
    extract(ExtractConfig(data_root=digits, out_path=digit_feats, precision="fp32", progress=False))
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")  # unfused: its ImageNet classifier in place
    photos = choose_lr(backbone, hymenoptera_lite0, "train")
    drawings = choose_lr(backbone, digit_feats, "train")
    assert photos.lr == FAMILIAR_LR and photos.familiarity >= FAMILIARITY_THRESHOLD
    assert drawings.lr == UNFAMILIAR_LR and drawings.familiarity < FAMILIARITY_THRESHOLD
    assert f"{drawings.familiarity:.2f}" in drawings.reason


def test_lr_auto_falls_back_where_there_is_no_imagenet_classifier(tmp_path):
    import dataclasses

    import numpy as np

    from features.backbones import ResolvedWeights
    from pipeline.learning_rate import FAMILIAR_LR, choose_lr
    from tests.conftest import write_feature_file

    feats = write_feature_file(str(tmp_path / "f.h5"), {"train": (np.ones((4, 512)), np.arange(4) % 2)}, ["a", "b"])
    # Pretend-pretrained SqueezeNet: its classifier is a 1x1 convolution, not a 1000-way Linear.
    squeeze = dataclasses.replace(load_backbone("squeezenet1_1", "none"), weights=ResolvedWeights("sha256:0", "test"))
    choice = choose_lr(squeeze, feats, "train")
    assert choice.lr == FAMILIAR_LR and choice.familiarity is None and "squeezenet1_1" in choice.reason


def test_weight_average_halves_a_step_after_its_half_life():
    model = torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(model.weight)
    average = weight_average(model, half_life_epochs=0.5, steps_per_epoch=4)  # 2 steps
    torch.nn.init.ones_(model.weight)
    for _ in range(2):
        average.update_parameters(model)
    # the starting weights (0) keep half their share after two steps; the new weights (1) have the rest
    assert torch.allclose(average.module.weight, torch.full_like(model.weight, 0.5))
    assert weight_average(model, None, 4) is None and weight_average(model, 0.0, 4) is None


def test_the_weight_average_follows_batchnorm_statistics_only_when_they_train():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    pretrained = model[1].running_mean.clone()
    average = weight_average(model, half_life_epochs=0.5, steps_per_epoch=4)
    model.eval()  # statistics as at inference (the default): they never move, nor does their average
    model(torch.randn(8, 3, 5, 5) + 3)
    average.update_parameters(model)
    assert torch.equal(average.module[1].running_mean, pretrained)
    model[1].train()  # --train-bn: batch statistics move the running ones, and the average follows them
    model(torch.randn(8, 3, 5, 5) + 3)
    moved = model[1].running_mean.clone()
    average.update_parameters(model)
    expected = pretrained + (moved - pretrained) * (1 - 0.5 ** 0.5)  # one step of a 2-step half-life
    assert not torch.equal(moved, pretrained)
    assert torch.allclose(average.module[1].running_mean, expected)
    assert average.module[1].num_batches_tracked == model[1].num_batches_tracked == 1  # a counter is copied, not averaged


def test_the_weight_average_is_what_is_kept_and_resumed(tiny_setup, tmp_path):
    root, items, backbone = tiny_setup
    head = backbone.model.fc.state_dict()
    cfg = FinetuneConfig(epochs=2, lr=1e-2, batch_size=4, ema_half_life=0.5, progress=False)
    finetune(backbone, root, items["train"], None, cfg, torch.device("cpu"), "fp32", str(tmp_path))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    kept = _params(backbone.model)
    averaged = {k[len("module."):]: v for k, v in state["average"].items() if k.startswith("module.")}
    assert all(torch.equal(kept[k], averaged[k]) for k in kept)  # without val the last epoch's average is kept
    assert _changed(kept, state["model"], "features.")  # and it is not the last trained weights
    assert int(state["average"]["n_averaged"]) == 1 + 2 * 4  # the start, then each of 4 steps an epoch

    # resumed on a freshly fused network, the average carries on from the checkpoint's
    fresh = load_backbone("tiny_cnn", "none")
    fresh.model.fc = torch.nn.Linear(32, 2)
    fresh.model.fc.load_state_dict(head)
    more = dataclasses.replace(cfg, epochs=3, resume=True)
    result = finetune(fresh, root, items["train"], None, more, torch.device("cpu"), "fp32", str(tmp_path))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert result.resumed_from == 2 and [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert int(state["average"]["n_averaged"]) == 1 + 3 * 4
    with pytest.raises(ResumeMismatch, match="ema_half_life"):
        finetune(fresh, root, items["train"], None, dataclasses.replace(more, epochs=4, ema_half_life=None),
                 torch.device("cpu"), "fp32", str(tmp_path))
