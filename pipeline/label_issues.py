"""Suspected label errors by confident learning, on probabilities sharpened by neighbour votes.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021) needs out-of-sample class probabilities.
Each class ``j`` gets a threshold ``t_j``: the mean probability of ``j`` over the
images labelled ``j`` (its mean self-confidence). An image "confidently belongs" to the
classes whose probability reaches their threshold; the likeliest of those is its
confident class. Counting (given label, confident class) pairs gives the confident
joint; images off its diagonal are label issues, ranked by self-confidence (the
probability of the given label: lowest first).

Here the probabilities are the mean of two views of each image: the head's
out-of-fold probabilities and the label distribution of its nearest training
neighbours in feature space. The neighbours see local structure a linear head smooths
over; measured on hymenoptera with 10 % of the training labels flipped (see the
README), the mean halved the false flags of the head's probabilities alone at the
same recall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelIssues:
    """Confident-learning outcome for one set of images.

    Attributes
    ----------
    flag : ndarray of bool
        Off the diagonal of the confident joint.
    score : ndarray
        ``1 - self-confidence``: higher is more suspicious (ranking order).
    suggested : ndarray of int
        The confident class of flagged images, ``-1`` elsewhere.
    thresholds : ndarray
        Per-class mean self-confidence.
    joint : ndarray of int, shape (classes, classes)
        Confident joint: rows are given labels, columns confident classes.
    """

    flag: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    thresholds: np.ndarray
    joint: np.ndarray


def neighbour_votes(neighbour_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of each image's neighbours in each class, shape ``(images, classes)``."""
    return np.stack([(neighbour_labels == j).mean(axis=1) for j in range(n_classes)], axis=1)


def confident_learning(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None) -> LabelIssues:
    """Flag label issues with the confident joint.

    Parameters
    ----------
    probs : ndarray, shape (n, classes)
        Out-of-sample probabilities (rows sum to 1).
    labels : ndarray of int, shape (n,)
        Given labels.
    thresholds : ndarray, optional
        Per-class thresholds; by default the mean self-confidence of each class in
        ``probs`` (a class without images gets threshold 1).

    Returns
    -------
    LabelIssues
    """
    n, k = probs.shape
    self_confidence = probs[np.arange(n), labels]
    if thresholds is None:
        thresholds = np.array([self_confidence[labels == j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = probs >= thresholds[None, :] - 1e-12
    confident = np.where(above, probs, -np.inf).argmax(axis=1)
    has_confident = above.any(axis=1)
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[has_confident], confident[has_confident]), 1)
    flag = has_confident & (confident != labels)
    return LabelIssues(flag, 1.0 - self_confidence, np.where(flag, confident, -1), thresholds, joint)
