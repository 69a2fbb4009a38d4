"""The portable head: an affine map ``logits = features @ W.T + b`` in raw-feature space.

It is stored pickle-free as ``head.npz`` (arrays ``W`` and ``b``) plus ``head.json``
(class names, the identity of the features it was trained on, and the SHA-256 of
``head.npz``). Fusing, exporting and checking equivalence all use this one form.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from features.hashing import sha256_file

HEAD_ARRAYS = "head.npz"
HEAD_META = "head.json"
HEAD_FORMAT = "tlcache.head"
HEAD_FORMAT_VERSION = 1


class HeadError(Exception):
    """A head directory that cannot be used; ``str(exc)`` is a one-line reason."""


@dataclass
class AffineHead:
    """A linear classifier over raw (unscaled) features.

    Attributes
    ----------
    W : ndarray, shape (n_classes, D)
    b : ndarray, shape (n_classes,)
    classes : list of str
    feature_identity : dict
        ``backbone``, ``weights``, ``feature_layer``, ``feature_dim``, ``preprocessing``,
        ``classes`` of the feature file it was trained on (see ``FeatureFile.identity``).
    clf : str
        Which classifier produced it (``logreg``, ``svm``, ``linear``).
    extra : dict
        Free-form facts kept with the head (data root, chosen C, ...).
    """

    W: np.ndarray
    b: np.ndarray
    classes: list[str]
    feature_identity: dict
    clf: str
    extra: dict = field(default_factory=dict)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Class scores for raw feature rows, computed in float64."""
        return np.asarray(features, dtype=np.float64) @ self.W.T + self.b


def fold_scaler(W_scaled: np.ndarray, b_scaled: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite a map over standardised features ``(x - mean) / scale`` as a map over raw ``x``."""
    W = W_scaled / scale[None, :]
    b = b_scaled - W @ mean
    return W, b


def binary_to_two_rows(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's single binary score ``s`` becomes logits ``[0, s]``: same argmax and softmax."""
    W = np.vstack([np.zeros_like(coef[0]), coef[0]])
    b = np.array([0.0, float(intercept[0])])
    return W, b


def write_head_meta(head_dir: str, clf: str, classes: list[str], feature_identity: dict, extra: dict,
                    arrays_sha256: str | None) -> None:
    """Write ``head.json``; a head without arrays (``arrays_sha256=None``) is marked not fusable."""
    os.makedirs(head_dir, exist_ok=True)
    meta = {
        "format": HEAD_FORMAT,
        "format_version": HEAD_FORMAT_VERSION,
        "clf": clf,
        "classes": classes,
        "feature_identity": feature_identity,
        "fusable": arrays_sha256 is not None,
        "arrays_sha256": arrays_sha256,
        "extra": extra,
    }
    with open(os.path.join(head_dir, HEAD_META), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)


def read_head_meta(head_dir: str) -> dict:
    """Read ``head.json`` of any head (linear or not) and check its format.

    Raises
    ------
    HeadError
        Missing folder or file, unreadable JSON, unknown format.
    """
    meta_path = os.path.join(head_dir, HEAD_META)
    if not os.path.isdir(head_dir):
        raise HeadError(f"head folder {head_dir!r} does not exist")
    if not os.path.exists(meta_path):
        raise HeadError(f"{head_dir}: no {HEAD_META}; not a head folder written by run_head.py")
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise HeadError(f"{meta_path}: unreadable ({exc})") from None
    if meta.get("format") != HEAD_FORMAT or meta.get("format_version") != HEAD_FORMAT_VERSION:
        raise HeadError(f"{meta_path}: unknown head format {meta.get('format')!r} v{meta.get('format_version')!r}")
    return meta


def save_affine(head: AffineHead, head_dir: str) -> None:
    """Write ``head.npz`` and ``head.json`` into ``head_dir``."""
    os.makedirs(head_dir, exist_ok=True)
    arrays = os.path.join(head_dir, HEAD_ARRAYS)
    np.savez(arrays, W=head.W.astype(np.float64), b=head.b.astype(np.float64))
    write_head_meta(head_dir, head.clf, head.classes, head.feature_identity, head.extra, sha256_file(arrays))


def load_affine(head_dir: str) -> AffineHead:
    """Read and verify a head written by :func:`save_affine`.

    Raises
    ------
    HeadError
        Missing files, unknown format, a non-linear head, or arrays whose hash or shape
        does not match ``head.json`` (a tampered or incomplete head).
    """
    meta = read_head_meta(head_dir)
    arrays = os.path.join(head_dir, HEAD_ARRAYS)
    if not meta.get("fusable", True) or not os.path.exists(arrays):
        raise HeadError(f"{head_dir}: this {meta.get('clf')} head is not linear, so it has no affine form to fuse or export")
    if sha256_file(arrays) != meta.get("arrays_sha256"):
        raise HeadError(f"{arrays}: contents do not match the hash in {HEAD_META} (modified or incomplete head)")
    with np.load(arrays, allow_pickle=False) as data:
        W, b = data["W"], data["b"]
    classes = meta["classes"]
    dim = meta["feature_identity"]["feature_dim"]
    if W.shape != (len(classes), dim) or b.shape != (len(classes),):
        raise HeadError(f"{arrays}: W {W.shape} / b {b.shape} do not fit {len(classes)} classes x {dim} features")
    return AffineHead(W, b, classes, meta["feature_identity"], meta["clf"], meta.get("extra", {}))


def check_identity(head_identity: dict, feature_identity: dict, what: str) -> None:
    """Refuse features that were not made like the ones the head was trained on."""
    for key in ("backbone", "weights", "feature_layer", "feature_dim", "preprocessing", "classes"):
        if head_identity.get(key) != feature_identity.get(key):
            raise HeadError(
                f"{what} has {key} {feature_identity.get(key)!r}, but the head was trained on {head_identity.get(key)!r}"
            )
