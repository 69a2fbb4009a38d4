"""BatchNorm folded into convolutions: same features, fewer layers, only where the trace shows a conv -> BN pair."""

import pytest
import torch
from torch import nn

from features.backbones import get_spec, load_backbone
from features.folding import fold_batchnorm
from features.hooks import capture_features
from tests.test_backbones import REPRESENTATIVE, SMALL_INPUT


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _randomise_statistics(model: nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters: with the defaults (0, 1) folding would change nothing."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _features(model: nn.Module, spec, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), capture_features(model, spec) as cap:
        logits = model(x)
        return cap.pop(), logits


def random_backbone(name: str) -> tuple:
    """``(spec, model, side)``: a registry network in eval mode with seeded random weights and BatchNorm statistics,
    and the input side to test it at (Lite's own; others small, for speed)."""
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build().eval()
    _randomise_statistics(model, 0)
    size = spec.preprocessing(None).crop_size if name.startswith("efficientnet_lite") else min(
        SMALL_INPUT, spec.preprocessing(None).crop_size)
    return spec, model, size


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_folded_features_equal_the_unfolded_model(name):
    spec, model, size = random_backbone(name)
    x = torch.randn(2, 3, size, size)
    before = _batchnorms(model)
    folded, n = fold_batchnorm(model, (spec.feature_module, spec.classifier_slot))
    assert _batchnorms(model) == before, "the original model is left as it was"
    assert _batchnorms(folded) <= before - n  # fewer still where a branch never runs in eval mode (Inception's aux head)
    if before:
        assert n > 0, f"{name}: no conv -> BatchNorm pair was folded"
    (a, la), (b, lb) = _features(model, spec, x), _features(folded, spec, x)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4 * float(la.abs().max()))


def test_only_adjacent_pairs_are_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)  # conv output read twice: not folded
            self.conv2, self.act, self.bn2 = nn.Conv2d(4, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)  # ReLU between
            self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # a true pair

        def forward(self, x):
            y = self.conv(x)
            y = self.bn(y) + y
            return self.bn3(self.conv3(self.bn2(self.act(self.conv2(y)))))

    model = Branchy().eval()
    _randomise_statistics(model, 1)
    folded, n = fold_batchnorm(model)
    assert n == 1 and not hasattr(folded, "bn3") and hasattr(folded, "bn") and hasattr(folded, "bn2")
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(Branchy())


@pytest.mark.slow
def test_folded_lite0_with_real_weights_on_real_images(hymenoptera):
    from features.images import load_rgb

    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    spec, prep = backbone.spec, backbone.preprocessing
    tf = prep.eval_transform()
    import os

    folder = os.path.join(hymenoptera, "val", "bees")
    x = torch.stack([tf(load_rgb(os.path.join(folder, f))) for f in sorted(os.listdir(folder))[:16]])
    folded, n = fold_batchnorm(backbone.model, (spec.feature_module, spec.classifier_slot))
    assert n >= 40 and _batchnorms(folded) == 0
    (a, la), (b, lb) = _features(backbone.model, spec, x), _features(folded, spec, x)
    assert float(((b - a).norm(dim=1) / a.norm(dim=1)).max()) < 1e-4
    assert (lb.argmax(1) == la.argmax(1)).all()
