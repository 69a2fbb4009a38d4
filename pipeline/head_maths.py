"""The pieces of a linear head's objective that the in-memory and streaming heads share.

Both train an affine map on standardised features with the penalty
``||W - W0||^2 / (2 C n)`` (scikit-learn's ``C`` meaning), start from an initial map
given in raw-feature space, weight classes the same way, refuse the same unusable
training data, and break a tie between values of C the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # tensors come in from the torch heads; the scikit-learn heads run without torch
    import torch


class HeadTrainingError(Exception):
    """Training data that cannot give a classifier; ``str(exc)`` is a one-line reason."""


def floored_scale(scale: np.ndarray, floor: float) -> np.ndarray:
    """Per-feature scales raised to at least ``floor`` x their median (see :class:`pipeline.heads.FlooredScaler`)."""
    return np.maximum(scale, floor * np.median(scale))


def standardised_init(W0: np.ndarray, b0: np.ndarray, mean: np.ndarray,
                      scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite a raw-feature map ``(W0, b0)`` as the same map over ``(x - mean) / scale``.

    The inverse of :func:`pipeline.affine.fold_scaler`.
    """
    return W0 * scale[None, :], b0 + W0 @ mean


def l2_penalty(weight: torch.Tensor, W0: torch.Tensor, C: float, n: int) -> torch.Tensor:
    """``||weight - W0||^2 / (2 C n)``: ``LogisticRegression(C)``'s penalty divided by ``C n``,
    pulled towards ``W0`` instead of zero."""
    return ((weight - W0) ** 2).sum() / (2.0 * C * n)


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's ``class_weight="balanced"`` (``n / (k * count)``) per class; 0 for a class without rows."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)


def best_C(curve: list[tuple[float, float]]) -> tuple[float, float]:
    """The ``(C, score)`` with the best score; a tie goes to the smaller C (the stronger regularisation)."""
    best = max(score for _, score in curve)
    return min(C for C, score in curve if score >= best - 1e-12), best


def check_classes(counts: np.ndarray, classes: list[str], split: str) -> None:
    """Refuse training rows that hold fewer than two classes, or leave a class without rows.

    Parameters
    ----------
    counts : ndarray
        Training rows (or images) per class, in label order.
    classes : list of str
    split : str
        Named in the message.

    Raises
    ------
    HeadTrainingError
    """
    present = [i for i, n in enumerate(counts) if n > 0]
    if len(present) < 2:
        only = classes[present[0]] if present else "none"
        raise HeadTrainingError(f"split {split!r} has a single class ({only}); a classifier needs two or more")
    absent = [classes[i] for i, n in enumerate(counts) if n == 0]
    if absent:
        raise HeadTrainingError(f"classes without training rows: {', '.join(absent)}")


def check_finite(features: np.ndarray, what: str) -> None:
    """Refuse NaN/inf features, with their count.

    Raises
    ------
    HeadTrainingError
    """
    bad = ~np.isfinite(features)
    if bad.any():
        raise HeadTrainingError(f"{what} has {int(bad.sum())} NaN/inf values in {int(bad.any(axis=1).sum())} rows; "
                                "re-extract or drop them")
