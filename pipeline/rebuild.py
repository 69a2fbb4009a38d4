"""Rebuild the exact backbone a feature file (and so a head) was made with."""

from __future__ import annotations

import json
import os

from features.backbones import Backbone, get_spec, load_backbone
from pipeline.affine import HeadError


def weights_argument(identity: dict) -> str:
    """The ``--weights`` value that reproduces ``identity["weights"]``."""
    weights = identity["weights"]
    if weights == "none":
        return "none"
    if weights.startswith("torchvision:"):
        return weights.split(".", 1)[1]
    if get_spec(identity["backbone"]).bundled_weights is not None:
        return "DEFAULT"
    source = identity.get("weights_source", "")
    if not os.path.isfile(source):
        raise HeadError(f"{identity['backbone']}: weights {weights[:23]}... that the features were made with are not "
                        f"available here (source: {source})")
    return source


def rebuild_backbone(identity: dict) -> Backbone:
    """Load the backbone named in a feature identity and prove it is the same one.

    Raises
    ------
    HeadError
        The weights available now differ (another file hash, another package version),
        or the preprocessing or feature layer changed since the features were made.
    """
    arg = weights_argument(identity)
    backbone = load_backbone(identity["backbone"], arg)
    if backbone.weights.identity != identity["weights"]:
        raise HeadError(f"{identity['backbone']}: the available weights ({backbone.weights.identity[:23]}...) differ "
                        f"from those the features were made with ({identity['weights'][:23]}...)")
    if json.loads(backbone.preprocessing.to_json()) != identity["preprocessing"]:
        raise HeadError(f"{identity['backbone']}: preprocessing differs from the one the features were made with")
    if backbone.spec.feature_layer != identity["feature_layer"] or backbone.feature_dim != identity["feature_dim"]:
        raise HeadError(f"{identity['backbone']}: feature layer differs from the one the features were made with")
    return backbone
