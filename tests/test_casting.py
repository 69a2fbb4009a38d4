"""Weights cast to the autocast dtype once: bitwise the same outputs, and only layers whose weights go straight
into their convolution or linear call."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from features.backbones import get_spec
from features.casting import cast_weights_for_autocast
from features.folding import fold_batchnorm
from features.hooks import capture_features
from tests.test_backbones import REPRESENTATIVE, SMALL_INPUT
from tests.test_folding import _randomise_statistics


def _bf16_features(model: nn.Module, spec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(), capture_features(model, spec) as cap, torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        return cap.pop(), logits


def _float32_layers(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight.dtype == torch.float32
               for m in model.modules())


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_cast_network_gives_bitwise_the_same_bf16_features(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build().eval()
    _randomise_statistics(model, 0)
    size = spec.preprocessing(None).crop_size if name.startswith("efficientnet_lite") else min(
        SMALL_INPUT, spec.preprocessing(None).crop_size)
    x = torch.randn(2, 3, size, size)
    model, _ = fold_batchnorm(model, (spec.feature_module, spec.classifier_slot))  # what extraction casts
    before = _float32_layers(model)
    features, logits = _bf16_features(model, spec, x)
    n = cast_weights_for_autocast(model, "bf16")
    assert n > 0 and _float32_layers(model) == before - n
    if name != "inception_v3":  # its auxiliary head's layers run only in training, so the trace never sees them
        assert n == before, f"{name}: {before - n} layers kept float32"
    cast_features, cast_logits = _bf16_features(model, spec, x)
    assert torch.equal(cast_features, features) and torch.equal(cast_logits, logits)


def test_fp32_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    model(torch.randn(1, 3, 8, 8))
    assert cast_weights_for_autocast(model, "fp32") == 0 and _float32_layers(model) == 2


def test_only_layers_whose_weights_go_straight_into_the_call_are_cast():
    class StandardisedConv(nn.Conv2d):
        """Weight standardisation: arithmetic on the weight before the convolution."""

        def forward(self, x):
            w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (self.weight.std() + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.plain, self.standardised = nn.Conv2d(3, 4, 3), StandardisedConv(4, 4, 3)
            self.head = nn.Linear(4, 2)
            self.reused = nn.Linear(4, 4)  # its weight also scales the features: kept float32

        def forward(self, x):
            y = self.standardised(self.plain(x)).mean(dim=(2, 3))
            return self.head(self.reused(y) * self.reused.weight.sum())

    model = Net().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
    assert cast_weights_for_autocast(model, "bf16") == 2
    assert model.plain.weight.dtype == model.head.weight.dtype == torch.bfloat16
    assert model.standardised.weight.dtype == model.reused.weight.dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), before)


def test_a_network_that_cannot_be_traced_is_left_as_it_is():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # control flow on a tensor: fx cannot trace it

    model = DataDependent().eval()
    assert cast_weights_for_autocast(model, "bf16") == 0 and model.conv.weight.dtype == torch.float32


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
    monkeypatch.setattr(extraction, "cast_weights_for_autocast", lambda model, precision: 0)
    uncast = rows(str(tmp_path / "uncast.h5"))
    assert all(a.shape == (40, 1280) and np.array_equal(a, b) for a, b in zip(cast, uncast))
