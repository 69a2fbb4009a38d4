"""Model-forward-only throughput on preloaded, preprocessed images (no decode, no writes).

``python benchmarks/forward_only.py BACKBONE WEIGHTS PRECISION BATCH [FOLD [IMAGES [PASSES]]]`` prints
``{"images_per_second": ..., "batchnorm_folded": ...}`` as JSON. FOLD 1 prepares the network as
extraction does: BatchNorm folded into the convolutions and, under bf16, the weights stored in
bf16 (:mod:`features.casting`); 0 (the default) measures the network as built.
PASSES > 1 times that many passes over the images and reports the fastest (default 1).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from benchmarks.common import HYMENOPTERA
from features.backbones import load_backbone
from features.casting import cast_weights_for_autocast, example_batch
from features.data import discover
from features.devices import autocast, keep_freed_memory
from features.folding import fold_batchnorm
from features.hooks import capture_features
from features.images import load_rgb


def prepared(backbone_name: str, weights: str, fold: bool, n_images: int, precision: str = "fp32"):
    """The backbone, its network (if ``fold``, prepared for ``precision`` as extraction prepares it) and
    ``n_images`` preprocessed hymenoptera val images, channels-last; with the extraction path's allocator setting,
    so only the pipeline differs."""
    keep_freed_memory()
    backbone = load_backbone(backbone_name, weights)
    layout = discover(HYMENOPTERA)
    tf = backbone.preprocessing.eval_transform()
    images = [tf(load_rgb(os.path.join(layout.root, s.path))) for s in layout.splits["val"][:n_images]]
    x = torch.stack(images).contiguous(memory_format=torch.channels_last)
    model, folded = backbone.model, 0
    if fold:
        model, folded = fold_batchnorm(model, (backbone.spec.feature_module, backbone.spec.classifier_slot))
        cast_weights_for_autocast(model, precision, example_batch(backbone.preprocessing.crop_size))
    return backbone, model.to(memory_format=torch.channels_last), x, folded


def main(backbone_name: str, weights: str, precision: str, batch: int, fold: bool = False,
         n_images: int = 128, passes: int = 1) -> tuple[float, int]:
    backbone, model, x, folded = prepared(backbone_name, weights, fold, n_images, precision)
    device = torch.device("cpu")
    with torch.inference_mode(), capture_features(model, backbone.spec) as capture, autocast(device, precision):
        model(x[:batch])  # warm-up (first-call allocations, oneDNN primitive creation)
        capture.pop()
        seconds = []
        for _ in range(passes):
            start = time.perf_counter()
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
                capture.pop().float().numpy()
            seconds.append(time.perf_counter() - start)
    return len(x) / min(seconds), folded


if __name__ == "__main__":
    extra = sys.argv[5:]
    rate, folded = main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), bool(int(extra[0])) if extra else False,
                        *(int(a) for a in extra[1:3]))
    print(json.dumps({"images_per_second": rate, "batchnorm_folded": folded}))
