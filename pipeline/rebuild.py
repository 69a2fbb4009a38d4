"""Rebuild the exact backbone a feature file (and so a head) was made with."""

from __future__ import annotations

import os

from features.backbones import Backbone, get_spec, load_backbone
from features.identity import FeatureIdentity
from pipeline.affine import HeadError


def weights_argument(identity: FeatureIdentity) -> str:
    """The ``--weights`` value that reproduces ``identity.weights``."""
    weights = identity.weights
    if weights == "none":
        return "none"
    if weights.startswith("torchvision:"):
        return weights.split(".", 1)[1]
    if get_spec(identity.backbone).bundled_weights is not None:
        return "DEFAULT"
    if not os.path.isfile(identity.weights_source):
        raise HeadError(f"{identity.backbone}: weights {weights[:23]}... that the features were made with are not "
                        f"available here (source: {identity.weights_source})")
    return identity.weights_source


def rebuild_backbone(identity: FeatureIdentity) -> Backbone:
    """Load the backbone named in a feature identity, at its image size, and prove it is the same one.

    Raises
    ------
    HeadError
        The weights available now differ (another file hash, another package version),
        or the preprocessing or feature layer changed since the features were made.
    """
    backbone = load_backbone(identity.backbone, weights_argument(identity), identity.preprocessing.crop_size)
    differences = FeatureIdentity.of_backbone(backbone, identity.classes).mismatches(identity)
    if differences:
        said = "; ".join(f"{name} {now!r} now, {then!r} then" for name, (now, then) in differences.items())
        raise HeadError(f"{identity.backbone} differs from the one the features were made with: {said}")
    return backbone
