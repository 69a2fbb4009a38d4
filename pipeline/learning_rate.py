"""The body's fine-tuning rate, chosen by how familiar the training images look to the backbone.

BENCHMARKS.md sections 17, 19 and 21 fine-tuned four datasets at body rates 1e-5 and
3e-4. Photos of things ImageNet knows (hymenoptera, and hymenoptera at 40 px) gained
nothing or lost accuracy at the higher rate; drawings (the digits demo, generated shapes)
gained at it, and less at the lower one. What separated them was not the stored size but how the
backbone's own ImageNet classifier saw the training images: a mean top-class probability
of 0.72 and 0.31 for the photos, 0.04 and 0.20 for the drawings.

The rule trusts the backbone's 1000-way classifier to be ImageNet's: true for the
registered pretrained weights, not necessarily for a weights file of one's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.backbones import Backbone
from features.store import FeatureFile
from pipeline.imagenet import imagenet_rows

FAMILIAR_LR = 1e-5
UNFAMILIAR_LR = 3e-4
# Midway between the measured sides (0.20 for the shapes, 0.31 for 40-px photos).
FAMILIARITY_THRESHOLD = 0.25
SAMPLE_ROWS = 2048


@dataclass
class RateChoice:
    """The chosen body rate, the familiarity it rests on (None where it could not be measured), and why."""

    lr: float
    familiarity: float | None
    reason: str


def imagenet_familiarity(W: np.ndarray, b: np.ndarray, features: np.ndarray) -> float:
    """Mean top-class probability of the 1000-way classifier ``(W, b)`` over feature rows.

    Parameters
    ----------
    W, b : ndarray
        The backbone's own ImageNet classifier over its pooled features (:func:`~pipeline.imagenet.imagenet_rows`).
    features : ndarray
        Pooled feature rows, one per image (or view).

    Returns
    -------
    float
        Between 1/1000 (nothing looks like any ImageNet class) and 1.
    """
    logits = features.astype(np.float64) @ W.T + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return float((p.max(axis=1) / p.sum(axis=1)).mean())


def format_rate(lr: float) -> str:
    """A learning rate as people write it: ``3e-4``, ``1e-5``."""
    if lr >= 0.01:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def choose_lr(backbone: Backbone, features_path: str, split: str) -> RateChoice:
    """Pick the body rate from the training features' familiarity to the (unfused) backbone.

    Parameters
    ----------
    backbone : Backbone
        Rebuilt with the weights that made the features, its ImageNet classifier still in place.
    features_path : str
        The head's feature file.
    split : str
        Its training split; the centre crops of up to :data:`SAMPLE_ROWS` images spread over it are read.

    Returns
    -------
    RateChoice
        :data:`UNFAMILIAR_LR` below :data:`FAMILIARITY_THRESHOLD`, else :data:`FAMILIAR_LR`,
        which is also the fallback where familiarity cannot be measured (random weights,
        or no 1000-way Linear classifier over the features).
    """
    if backbone.weights.identity == "none":
        return RateChoice(FAMILIAR_LR, None, "random weights have no ImageNet classifier to measure familiarity with")
    try:
        W, b = imagenet_rows(backbone)
    except ValueError:
        return RateChoice(FAMILIAR_LR, None, f"{backbone.spec.name} has no 1000-way ImageNet classifier over its "
                                             "features to measure familiarity with")
    with FeatureFile(features_path) as ff:
        features = ff.read_features_spread(split, SAMPLE_ROWS)
    familiarity = imagenet_familiarity(W, b, features)
    if familiarity < FAMILIARITY_THRESHOLD:
        return RateChoice(UNFAMILIAR_LR, familiarity,
                          f"the backbone's ImageNet classifier gives the training images a mean top-class "
                          f"probability of {familiarity:.2f}, below {FAMILIARITY_THRESHOLD}: content unlike "
                          "ImageNet's photos, where the higher rate paid")
    return RateChoice(FAMILIAR_LR, familiarity,
                      f"the backbone's ImageNet classifier gives the training images a mean top-class probability "
                      f"of {familiarity:.2f}, at or above {FAMILIARITY_THRESHOLD}: photos like ImageNet's, where "
                      "higher rates lost accuracy")
