"""Matching dataset class names to ImageNet categories, and the backbone's own classifier rows."""

from __future__ import annotations

import re

import numpy as np
from torch import nn
from torchvision.models import ResNet50_Weights

from features.backbones import Backbone

_IRREGULAR_PLURALS = {"mice": "mouse", "geese": "goose", "wolves": "wolf", "knives": "knife", "leaves": "leaf",
                      "oxen": "ox", "teeth": "tooth", "feet": "foot", "people": "person"}


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in logit order (shipped with torchvision; no download)."""
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _singulars(name: str) -> list[str]:
    """Candidate singular forms of a (possibly plural) name."""
    words = name.split(" ")
    last = words[-1]
    forms = [last]
    if last in _IRREGULAR_PLURALS:
        forms.append(_IRREGULAR_PLURALS[last])
    if last.endswith("ies"):
        forms.append(last[:-3] + "y")
    if last.endswith("es"):
        forms.append(last[:-2])
    if last.endswith("s") and not last.endswith("ss"):
        forms.append(last[:-1])
    return [" ".join(words[:-1] + [f]) for f in forms]


def match_imagenet(class_names: list[str]) -> dict[str, int]:
    """Map dataset class names to ImageNet indices where a category matches.

    Matching ignores case, underscores and hyphens, and accepts plurals (``ants`` ->
    ``ant``, ``butterflies`` -> ``butterfly``). Unmatched names are left out.
    """
    index = {}
    for i, category in enumerate(imagenet_categories()):
        index.setdefault(_normalise(category), i)
    matched = {}
    for name in class_names:
        for form in _singulars(_normalise(name)):
            if form in index:
                matched[name] = index[form]
                break
    return matched


def imagenet_rows(backbone: Backbone) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's own 1000-class ``(W, b)`` over its captured features.

    Only possible where the classifier slot is a single Linear fed by the feature.
    """
    slot = backbone.model.get_submodule(backbone.spec.classifier_slot)
    if not isinstance(slot, nn.Linear) or slot.in_features != backbone.feature_dim or slot.out_features != 1000:
        raise ValueError(f"{backbone.spec.name}: its classifier is not a single 1000-way Linear over the features, "
                         "so --init imagenet is not available")
    return slot.weight.detach().double().numpy(), slot.bias.detach().double().numpy()
