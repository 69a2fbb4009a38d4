"""The portable head: an affine map ``logits = features @ W.T + b`` in raw-feature space.

It is stored pickle-free as ``head.npz`` (arrays ``W`` and ``b``) plus ``head.json``
(class names, the identity of the features it was trained on, and the SHA-256 of
``head.npz`` and of ``estimator.joblib``). Fusing, exporting and checking equivalence
all use this one form; the pickled estimator is read only for a non-linear head, and
only after its hash matches.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from features.hashing import sha256_file
from features.identity import FeatureIdentity
from pipeline.filenames import HEAD_ARRAYS, HEAD_ESTIMATOR, HEAD_META, HEAD_REPORT

HEAD_FORMAT = "tlcache.head"
HEAD_FORMAT_VERSION = 2  # 2 adds estimator_sha256
READABLE_HEAD_VERSIONS = (1, 2)


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
    feature_identity : FeatureIdentity
        What the features it was trained on were made with.
    clf : str
        Which classifier produced it (``logreg``, ``svm``, ``linear``).
    extra : dict
        Free-form facts kept with the head (data root, chosen C, ...).
    """

    W: np.ndarray
    b: np.ndarray
    classes: list[str]
    feature_identity: FeatureIdentity
    clf: str
    extra: dict = field(default_factory=dict)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Class scores for raw feature rows, computed in float64."""
        return np.asarray(features, dtype=np.float64) @ self.W.T + self.b


@dataclass
class HeadMeta:
    """The validated contents of ``head.json``.

    Attributes
    ----------
    clf : str
        ``logreg``, ``svm``, ``linear`` or ``svm-<kernel>``.
    classes : list of str
    feature_identity : FeatureIdentity
    fusable : bool
        Whether ``head.npz`` holds the head's affine form.
    arrays_sha256, estimator_sha256 : str or None
        SHA-256 of ``head.npz`` and of ``estimator.joblib``.
    extra : dict
    """

    clf: str
    classes: list[str]
    feature_identity: FeatureIdentity
    fusable: bool
    arrays_sha256: str | None
    estimator_sha256: str | None
    extra: dict


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


def write_head_meta(head_dir: str, meta: HeadMeta) -> None:
    """Write ``head.json``."""
    os.makedirs(head_dir, exist_ok=True)
    record = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "clf": meta.clf, "classes": meta.classes,
              "feature_identity": meta.feature_identity.to_dict(), "fusable": meta.fusable,
              "arrays_sha256": meta.arrays_sha256, "estimator_sha256": meta.estimator_sha256, "extra": meta.extra}
    with open(os.path.join(head_dir, HEAD_META), "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)


def read_head_report(head_dir: str) -> dict:
    """``report.json`` of a head folder (how ``run_head.py`` fitted it), or ``{}`` where there is none.

    Raises
    ------
    HeadError
        The file exists but is not a JSON object.
    """
    path = os.path.join(head_dir, HEAD_REPORT)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError) as exc:
        raise HeadError(f"{path}: unreadable ({exc})") from None
    if not isinstance(report, dict):
        raise HeadError(f"{path}: not a head report")
    return report


def read_head_meta(head_dir: str) -> HeadMeta:
    """Read and validate ``head.json`` of any head (linear or not).

    Raises
    ------
    HeadError
        Missing folder or file, unreadable JSON, an unknown format or version, or a
        missing or malformed field.
    """
    meta_path = os.path.join(head_dir, HEAD_META)
    if not os.path.isdir(head_dir):
        raise HeadError(f"head folder {head_dir!r} does not exist")
    if not os.path.exists(meta_path):
        raise HeadError(f"{head_dir}: no {HEAD_META}; not a head folder written by run_head.py")
    try:
        with open(meta_path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise HeadError(f"{meta_path}: unreadable ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != HEAD_FORMAT:
        raise HeadError(f"{meta_path}: not a head description (format {raw.get('format') if isinstance(raw, dict) else raw!r})")
    if raw.get("format_version") not in READABLE_HEAD_VERSIONS:
        raise HeadError(f"{meta_path}: head format version {raw.get('format_version')!r} is not supported "
                        f"(this reader knows {', '.join(map(str, READABLE_HEAD_VERSIONS))})")
    try:
        meta = HeadMeta(clf=str(raw["clf"]), classes=[str(c) for c in raw["classes"]],
                        feature_identity=FeatureIdentity.from_dict(raw["feature_identity"]),
                        fusable=bool(raw.get("fusable", True)), arrays_sha256=raw.get("arrays_sha256"),
                        estimator_sha256=raw.get("estimator_sha256"), extra=dict(raw.get("extra", {})))
    except (KeyError, ValueError, TypeError) as exc:
        raise HeadError(f"{meta_path}: malformed ({type(exc).__name__}: {exc})") from None
    if meta.fusable and not meta.arrays_sha256:
        raise HeadError(f"{meta_path}: malformed (a linear head without the SHA-256 of {HEAD_ARRAYS})")
    return meta


def save_affine(head: AffineHead, head_dir: str, estimator_sha256: str | None = None) -> None:
    """Write ``head.npz`` and ``head.json`` into ``head_dir``."""
    os.makedirs(head_dir, exist_ok=True)
    arrays = os.path.join(head_dir, HEAD_ARRAYS)
    np.savez(arrays, W=head.W.astype(np.float64), b=head.b.astype(np.float64))
    write_head_meta(head_dir, HeadMeta(head.clf, head.classes, head.feature_identity, True, sha256_file(arrays),
                                       estimator_sha256, head.extra))


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
    if not meta.fusable or not os.path.exists(arrays):
        raise HeadError(f"{head_dir}: this {meta.clf} head is not linear, so it has no affine form to fuse or export")
    if sha256_file(arrays) != meta.arrays_sha256:
        raise HeadError(f"{arrays}: contents do not match the hash in {HEAD_META} (modified or incomplete head)")
    with np.load(arrays, allow_pickle=False) as data:
        W, b = data["W"], data["b"]
    dim = meta.feature_identity.feature_dim
    if W.shape != (len(meta.classes), dim) or b.shape != (len(meta.classes),):
        raise HeadError(f"{arrays}: W {W.shape} / b {b.shape} do not fit {len(meta.classes)} classes x {dim} features")
    return AffineHead(W, b, meta.classes, meta.feature_identity, meta.clf, meta.extra)


def load_estimator(head_dir: str):
    """Unpickle ``estimator.joblib``, only once its SHA-256 matches the one ``head.json`` records.

    Raises
    ------
    HeadError
        No estimator, no recorded hash (a head from an older version), or a mismatch.
    """
    meta = read_head_meta(head_dir)
    path = os.path.join(head_dir, HEAD_ESTIMATOR)
    if not os.path.exists(path):
        raise HeadError(f"{head_dir}: no {HEAD_ESTIMATOR}")
    if not meta.estimator_sha256:
        raise HeadError(f"{head_dir}: {HEAD_META} records no SHA-256 for {HEAD_ESTIMATOR}, so it is not loaded "
                        "(a head from an older version); train the head again")
    if sha256_file(path) != meta.estimator_sha256:
        raise HeadError(f"{path}: contents do not match the hash in {HEAD_META} (modified or incomplete head)")
    import joblib  # only here: the one place a pickle is read

    return joblib.load(path)


def check_identity(head_identity: FeatureIdentity, feature_identity: FeatureIdentity, what: str) -> None:
    """Refuse features that were not made like the ones the head was trained on, naming each difference.

    Raises
    ------
    HeadError
    """
    differences = feature_identity.mismatches(head_identity)
    if differences:
        said = "; ".join(f"{name} {theirs!r}, but the head was trained on {ours!r}"
                         for name, (theirs, ours) in differences.items())
        raise HeadError(f"{what} has {said}")
