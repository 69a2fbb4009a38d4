"""Weights cast to the autocast dtype once: bitwise the same outputs, and only layers whose weights go straight
into their convolution or linear call."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from features.casting import cast_weights_for_autocast, example_batch
from features.folding import fold_batchnorm
from features.hooks import capture_features
from tests.test_backbones import REPRESENTATIVE
from tests.test_folding import random_backbone


def _bf16_features(model: nn.Module, spec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(), capture_features(model, spec) as cap, torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        return cap.pop(), logits


def _float32_layers(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight.dtype == torch.float32
               for m in model.modules())


def _bf16(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_cast_network_gives_bitwise_the_same_bf16_features(name):
    spec, model, size = random_backbone(name)
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)  # as extraction feeds it
    model, _ = fold_batchnorm(model, (spec.feature_module, spec.classifier_slot))  # what extraction casts
    model = model.to(memory_format=torch.channels_last)
    before = _float32_layers(model)
    features, logits = _bf16_features(model, spec, x)
    n = cast_weights_for_autocast(model, "bf16", example_batch(size))
    assert n > 0 and _float32_layers(model) == before - n
    if name != "inception_v3":  # its auxiliary head's layers run only in training, so the trace never sees them
        assert n == before, f"{name}: {before - n} layers kept float32"
    cast_features, cast_logits = _bf16_features(model, spec, x)
    assert torch.equal(cast_features, features) and torch.equal(cast_logits, logits)


def test_fp32_and_an_unknown_precision_change_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    for precision in ("fp32", "int8"):
        assert cast_weights_for_autocast(model, precision, example_batch(8)) == 0 and _float32_layers(model) == 2
    assert cast_weights_for_autocast(model, "bf16", example_batch(8)) == 2 and _float32_layers(model) == 0


def test_only_layers_whose_weights_go_straight_into_the_call_are_cast():
    class StandardisedConv(nn.Conv2d):
        """Weight standardisation: arithmetic on the weight before the convolution."""

        def forward(self, x):
            w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (self.weight.std() + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class GainConv(nn.Conv2d):
        """A parameter of its own besides weight and bias, applied after the convolution."""

        def __init__(self, *args):
            super().__init__(*args)
            self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1) + 0.5)

        def forward(self, x):
            return super().forward(x) * self.gain

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.plain, self.standardised = nn.Conv2d(3, 4, 3), StandardisedConv(4, 4, 3)
            self.gained = GainConv(4, 4, 1)
            self.head = nn.Linear(4, 2)
            self.reused = nn.Linear(4, 4)  # its weight also scales the features: kept float32

        def forward(self, x):
            y = self.gained(self.standardised(self.plain(x))).mean(dim=(2, 3))
            return self.head(self.reused(y) * self.reused.weight.sum())

    model = Net().eval()
    x = torch.randn(2, 3, 12, 12)
    before = _bf16(model, x)
    assert cast_weights_for_autocast(model, "bf16", example_batch(12)) == 3
    assert model.plain.weight.dtype == model.gained.weight.dtype == model.head.weight.dtype == torch.bfloat16
    assert model.gained.gain.dtype == torch.float32  # only weight and bias are cast
    assert model.standardised.weight.dtype == model.reused.weight.dtype == torch.float32
    assert torch.equal(_bf16(model, x), before)


def test_a_layer_run_with_autocast_switched_off_undoes_the_cast():
    class Float32Head(nn.Module):
        """The trace cannot see autocast switched off; the check on the example batch can."""

        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

        def forward(self, x):
            y = self.conv(x).mean(dim=(2, 3))
            with torch.autocast("cpu", enabled=False):
                return self.fc(y.float())

    model = Float32Head().eval()
    x = torch.randn(2, 3, 9, 9)
    before = _bf16(model, x)
    assert cast_weights_for_autocast(model, "bf16", example_batch(9)) == 0 and _float32_layers(model) == 2
    assert torch.equal(_bf16(model, x), before)


def test_layers_with_hooks_are_left_alone_and_not_run_by_the_trace():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm's old form, still met in older networks
        normed = nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
    model = nn.Sequential(normed, nn.Flatten(), nn.Linear(4 * 7 * 7, 2)).eval()
    x = torch.randn(2, 3, 9, 9)
    before = _bf16(model, x)
    assert cast_weights_for_autocast(model, "bf16", example_batch(9)) == 1  # the linear layer only
    assert model[0].weight_v.dtype == torch.float32 and isinstance(model[0].weight, torch.Tensor)
    assert torch.equal(_bf16(model, x), before)


def test_a_network_that_cannot_be_traced_is_left_as_it_is():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # control flow on a tensor: fx cannot trace it

    model = DataDependent().eval()
    assert cast_weights_for_autocast(model, "bf16", example_batch(4)) == 0 and model.conv.weight.dtype == torch.float32


@pytest.mark.slow
def test_bf16_extraction_of_real_images_with_real_weights_is_unchanged_by_the_cast(hymenoptera, tmp_path, monkeypatch):
    import features.extract as extraction
    from features.store import FeatureFile

    def rows(out: str) -> list:
        extraction.extract(extraction.ExtractConfig(data_root=hymenoptera, out_path=out, precision="bf16", limit=40,
                                                    progress=False))
        with FeatureFile(out) as f:
            return [f.read_split(split).features for split in ("train", "val")]

    cast = rows(str(tmp_path / "cast.h5"))
    monkeypatch.setattr(extraction, "cast_weights_for_autocast", lambda model, precision, example: 0)
    uncast = rows(str(tmp_path / "uncast.h5"))
    assert all(a.shape == (40, 1280) and np.array_equal(a, b) for a, b in zip(cast, uncast))
