"""The registry: every entry builds, taps the right tensor, and matches its classifier slot."""

import pytest
import torch
from torchvision.models import get_model_weights

from features.backbones import (BackboneError, BackboneSpec, available_backbones, get_spec, load_backbone,
                                measure_feature_dim, register)
from features.hooks import capture_features

# Big enough for every net's downsampling (Inception needs >= 75 px); small enough to be fast.
SMALL_INPUT = 96


# One small member of every builder family and every (tap, slot) form: built for real, with random weights.
REPRESENTATIVE = ["efficientnet_lite0", "resnet18", "inception_v3", "regnet_x_400mf", "regnet_y_400mf", "alexnet",
                  "vgg11", "mobilenet_v3_small", "efficientnet_b0", "mobilenet_v2", "densenet121", "convnext_tiny",
                  "squeezenet1_0", "tiny_cnn"]
# RegNet's builder computes its widths with tensor arithmetic, which the meta device cannot run.
NOT_ON_META = ("regnet_",)


def _slot_input_width(model: torch.nn.Module, spec: BackboneSpec) -> int:
    slot = model.get_submodule(spec.classifier_slot)
    if spec.slot_form == "linear":
        return slot.in_features if isinstance(slot, torch.nn.Linear) else next(
            m for m in slot.modules() if isinstance(m, torch.nn.Linear)).in_features
    return next(m for m in slot.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


@pytest.mark.parametrize("name", available_backbones())
def test_registry_facts_of_every_entry(name):
    """Cheap for all 60 entries, regnet_y_128gf's 645M parameters included: nothing is allocated."""
    spec = get_spec(name)
    prep = spec.preprocessing(None)
    assert 0 < prep.crop_size <= prep.resize_size and prep.interpolation in ("bilinear", "bicubic", "nearest")
    assert spec.feature_tap in ("output", "input") and spec.slot_form in ("linear", "pool_conv") and spec.description
    if spec.torchvision_weights:
        assert get_model_weights(spec.torchvision_weights).DEFAULT is not None
    if name.startswith(NOT_ON_META):
        return
    with torch.device("meta"):  # shapes only: the tap and the slot agree on the feature width
        model = spec.build().eval()
        with torch.inference_mode(), capture_features(model, spec) as cap:
            model(torch.empty(2, 3, prep.crop_size, prep.crop_size))
            feats = cap.pop()
    assert feats.shape[0] == 2 and feats.shape[1] == _slot_input_width(model, spec)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_representative_backbones_give_finite_features_matching_their_slot(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build().eval()
    size = spec.preprocessing(None).crop_size if name.startswith("efficientnet_lite") else min(
        SMALL_INPUT, spec.preprocessing(None).crop_size)
    with torch.inference_mode(), capture_features(model, spec) as cap:
        model(torch.randn(2, 3, size, size))
        feats = cap.pop()
    assert feats.ndim == 2 and feats.shape[0] == 2 and feats.shape[1] == _slot_input_width(model, spec)
    assert torch.isfinite(feats).all()


def test_hook_output_equals_resnet50_pooled_tensor():
    b = load_backbone("resnet50", "none")
    m = b.model
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        with capture_features(m, b.spec) as cap:
            m(x)
            hooked = cap.pop()
        y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        y = m.layer4(m.layer3(m.layer2(m.layer1(y))))
        expected = torch.flatten(m.avgpool(y), 1)
    assert b.feature_dim == 2048
    assert torch.allclose(hooked, expected, atol=1e-6)
    assert not m.avgpool._forward_hooks, "the hook must be removed when the block ends"


@pytest.mark.slow
def test_hook_output_equals_lite0_pooled_tensor_with_real_weights():
    b = load_backbone("efficientnet_lite0")
    assert b.weights.identity.startswith("sha256:") and b.feature_dim == 1280
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        with capture_features(b.model, b.spec) as cap:
            logits = b.model(x)
            hooked = cap.pop()
        expected = torch.flatten(b.model._avg_pooling(b.model.extract_features(x)), 1)
        # The pooled vector through the backbone's own classifier gives its own logits.
        assert torch.allclose(b.model._fc(hooked), logits, atol=1e-5)
    assert torch.allclose(hooked, expected, atol=1e-6)


def test_hook_removed_even_when_forward_fails():
    b = load_backbone("tiny_cnn", "none")
    with pytest.raises(RuntimeError):
        with capture_features(b.model, b.spec):
            b.model(torch.randn(1, 5, 32, 32))
    assert not b.model.avgpool._forward_hooks


def test_missing_feature_module_has_a_hint():
    spec = BackboneSpec("bad_tap", build=lambda: torch.nn.Linear(2, 2), preprocessing=get_spec("tiny_cnn").preprocessing,
                        feature_module="avgpool", feature_tap="output", classifier_slot="fc")
    with pytest.raises(AttributeError, match="not present.*Hint"):
        with capture_features(torch.nn.Linear(2, 2), spec):
            pass


def test_registry_refuses_duplicates():
    with pytest.raises(BackboneError, match="already registered"):
        register(get_spec("resnet18"))


def test_unknown_backbone_and_bad_weights_name():
    with pytest.raises(BackboneError, match="list-backbones"):
        get_spec("resnet51")
    with pytest.raises(BackboneError, match="IMAGENET1K_V1"):
        load_backbone("resnet18", "IMAGENET9K")


def test_local_state_dict_path_and_its_identity(tmp_path):
    torch.manual_seed(1)
    source = load_backbone("tiny_cnn", "none")
    path = str(tmp_path / "tiny.pth")
    torch.save(source.model.state_dict(), path)
    loaded = load_backbone("tiny_cnn", path)
    assert loaded.weights.identity.startswith("sha256:")
    for a, b in zip(source.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    torch.save({"wrong": torch.zeros(1)}, str(tmp_path / "bad.pth"))
    with pytest.raises(BackboneError, match="does not match tiny_cnn"):
        load_backbone("tiny_cnn", str(tmp_path / "bad.pth"))


def test_measured_width_follows_the_model():
    spec = get_spec("tiny_cnn")
    from features.backbones import TinyCNN

    assert measure_feature_dim(TinyCNN(width=5), spec, 32) == 10


def test_torchvision_weights_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    from features.backbones import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="--weights PATH.*--weights none"):
        load_backbone("resnet18", "DEFAULT")


def test_image_size_keeps_the_resize_ratio_and_refuses_what_cannot_work():
    b = load_backbone("tiny_cnn", "none", 64)
    assert (b.preprocessing.crop_size, b.preprocessing.resize_size) == (64, 72)
    assert load_backbone("tiny_cnn", "none", 32).preprocessing == load_backbone("tiny_cnn", "none").preprocessing
    with pytest.raises(BackboneError, match="below 32 px"):
        load_backbone("tiny_cnn", "none", 16)
    with pytest.raises(BackboneError, match="cannot take 32-px images"):
        load_backbone("inception_v3", "none", 32)


def test_lite_padding_is_tf_same_for_the_requested_size():
    """EfficientNet-Lite pads as TF's "same" for the side it was built for: at 256, Lite1 (built for 240 by default)
    must pad every convolution for the map it really receives, which 240's padding does not."""
    import math

    def mismatches(model, side):
        bad = []

        def check(module, inputs):
            ih, iw = inputs[0].shape[-2:]
            kh, kw = module.weight.shape[-2:]
            sh, sw = module.stride
            ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
            pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
            want = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            have = getattr(module.static_padding, "padding", (0, 0, 0, 0))
            if tuple(have) != want:
                bad.append(module)

        convs = [m for m in model.modules() if type(m).__name__ == "Conv2dStaticSamePadding"]
        handles = [m.register_forward_pre_hook(check) for m in convs]
        with torch.inference_mode():
            model(torch.zeros(1, 3, side, side))
        for h in handles:
            h.remove()
        return len(convs), len(bad)

    convs, bad = mismatches(load_backbone("efficientnet_lite1", "none", 256).model, 256)
    assert convs > 30 and bad == 0
    assert mismatches(load_backbone("efficientnet_lite1", "none").model, 256)[1] > 0
