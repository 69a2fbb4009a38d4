"""Put a trained head's affine map into the backbone's classifier slot, and prove it fits.

The command that fuses, fine-tunes and exports is :mod:`pipeline.fuse`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from features.backbones import Backbone
from features.hooks import capture_features
from pipeline.affine import AffineHead, HeadError


class FusedHeadMismatch(HeadError):
    """The fused network does not reproduce the head on real features."""


def head_module(head: AffineHead, slot_form: str) -> nn.Module:
    """The module that replaces the classifier slot, carrying ``W`` and ``b`` in float32."""
    n_classes, dim = head.W.shape
    weight = torch.as_tensor(head.W, dtype=torch.float32)
    bias = torch.as_tensor(head.b, dtype=torch.float32)
    if slot_form == "linear":
        module = nn.Linear(dim, n_classes)
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(bias)
        return module
    # pool_conv: the slot sees the unpooled map; pooling commutes with the affine map.
    conv = nn.Conv2d(dim, n_classes, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(weight[:, :, None, None])
        conv.bias.copy_(bias)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), conv)


def fuse_head(backbone: Backbone, head: AffineHead) -> nn.Module:
    """Replace ``backbone.spec.classifier_slot`` with the head; returns the same model object."""
    if head.W.shape[1] != backbone.feature_dim:
        raise HeadError(f"head expects {head.W.shape[1]}-d features, {backbone.spec.name} gives {backbone.feature_dim}")
    backbone.model.set_submodule(backbone.spec.classifier_slot, head_module(head, backbone.spec.slot_form))
    return backbone.model


def verify_fused(backbone: Backbone, head: AffineHead, images: torch.Tensor, rtol: float = 1e-4,
                 atol: float = 1e-4) -> float:
    """Check on a real batch, in fp32, that fused logits equal ``head.logits(features)``.

    Returns
    -------
    float
        The largest absolute difference.

    Raises
    ------
    FusedHeadMismatch
        When the difference exceeds the tolerance.
    """
    model = backbone.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), capture_features(model, backbone.spec) as capture:
            fused = model(images.float()).double().numpy()
            expected = head.logits(capture.pop().double().numpy())
    finally:
        model.train(was_training)
    diff = float(np.abs(fused - expected).max())
    if not np.allclose(fused, expected, rtol=rtol, atol=atol):
        raise FusedHeadMismatch(f"fused logits differ from head(features) by up to {diff:.3g}")
    return diff
