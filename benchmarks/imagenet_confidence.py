"""How familiar a dataset looks to the backbone's own ImageNet classifier, from cached features.

``python benchmarks/imagenet_confidence.py FEATURES.h5 [...]`` prints one JSON line per
file: the mean and median top-class probability, and the mean entropy (nats), of the
backbone's 1000-class head applied to the training split's features, and the body rate
``--lr auto`` chooses from them (:func:`pipeline.learning_rate.choose_lr`).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from features.store import FeatureFile
from pipeline.imagenet import imagenet_rows
from pipeline.learning_rate import choose_lr
from pipeline.rebuild import rebuild_backbone


def imagenet_confidence(path: str) -> dict:
    """Top-class probability and entropy of the ImageNet head over a feature file's train split."""
    with FeatureFile(path) as f:
        x = f.read_split("train").features.astype(np.float64)
        backbone = rebuild_backbone(f.identity())  # the very weights that made the features
    choice = choose_lr(backbone, path, "train")
    W, b = imagenet_rows(backbone)
    z = x @ W.T + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    top = p.max(axis=1)
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    return {"file": path, "rows": len(x), "mean_top": float(top.mean()), "median_top": float(np.median(top)),
            "mean_entropy": float(entropy.mean()), "auto_lr": choice.lr}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(imagenet_confidence(arg)))
