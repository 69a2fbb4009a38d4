"""Classifiers trained on cached features: scikit-learn logreg / SVM and a torch ``nn.Linear``.

All linear heads are reduced to one :class:`~pipeline.affine.AffineHead` in raw-feature
space, with the feature scaler folded in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from pipeline.affine import binary_to_two_rows, fold_scaler

C_GRID = np.logspace(-5, 2, 15)


def floored_scale(scale: np.ndarray, floor: float) -> np.ndarray:
    """Per-feature scales raised to at least ``floor`` x their median (see :class:`FlooredScaler`)."""
    return np.maximum(scale, floor * np.median(scale))


class FlooredScaler(StandardScaler):
    """StandardScaler whose per-feature scale is at least ``floor`` x the median scale.

    Pooled CNN features often have near-constant dimensions on a given dataset (ReLU
    units that never fire on, say, white digit images). Dividing by their tiny standard
    deviation gives them huge weights once the scaler is folded into the raw-space head,
    so any later change of those units (another image, or one fine-tuning step) swings
    the logits wildly. A floor keeps them at ordinary scale; they carry no information
    in the training data anyway.
    """

    def __init__(self, *, copy: bool = True, with_mean: bool = True, with_std: bool = True, floor: float = 0.1) -> None:
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.floor = floor

    def fit(self, X, y=None, sample_weight=None) -> "FlooredScaler":
        super().fit(X, y, sample_weight)
        self.scale_ = floored_scale(self.scale_, self.floor)
        return self


class HeadTrainingError(Exception):
    """Training data that cannot give a classifier; ``str(exc)`` is a one-line reason."""


# --------------------------------------------------------------------------- torch linear head


class TorchLinearHead:
    """Multinomial logistic regression as a torch ``nn.Linear``, trained full-batch with L-BFGS.

    Features are standardised (the scaler is part of the model and folded out by
    :meth:`affine`). The penalty is ``||W - W0||^2 / (2 C n)``, the same objective as
    scikit-learn's ``LogisticRegression(C)``, pulled towards ``W0`` instead of zero when
    an initial map is given (for example the backbone's own ImageNet rows), so a small
    C keeps the initial classifier and a large C trusts the data.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    epochs : int
        L-BFGS iterations over the full batch; ``0`` keeps the initial map.
    init : tuple of ndarray, optional
        ``(W0, b0)`` in raw-feature space; zeros when omitted.
    class_weight : str or None
        ``"balanced"`` weights each class inversely to its frequency.
    seed : int
    """

    def __init__(self, C: float = 1.0, epochs: int = 100, init: tuple[np.ndarray, np.ndarray] | None = None,
                 class_weight: str | None = None, seed: int = 0) -> None:
        self.C, self.epochs, self.init, self.class_weight, self.seed = C, epochs, init, class_weight, seed

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> "TorchLinearHead":
        if n_classes is None:
            n_classes = len(self.init[1]) if self.init is not None else int(y.max()) + 1
        self.scaler_ = FlooredScaler().fit(X)
        mean, scale = self.scaler_.mean_, self.scaler_.scale_
        Xs = torch.as_tensor(self.scaler_.transform(X), dtype=torch.float64)
        target = torch.as_tensor(y, dtype=torch.int64)
        if self.init is not None:
            W0, b0 = self.init
            W0s = torch.as_tensor(W0 * scale[None, :], dtype=torch.float64)  # raw -> standardised space
            b0s = torch.as_tensor(b0 + W0 @ mean, dtype=torch.float64)
        else:
            W0s = torch.zeros(n_classes, X.shape[1], dtype=torch.float64)
            b0s = torch.zeros(n_classes, dtype=torch.float64)
        torch.manual_seed(self.seed)
        self.linear_ = torch.nn.Linear(X.shape[1], n_classes, dtype=torch.float64)
        with torch.no_grad():
            self.linear_.weight.copy_(W0s)
            self.linear_.bias.copy_(b0s)
        weights = None
        if self.class_weight == "balanced":
            counts = np.bincount(y, minlength=n_classes).astype(np.float64)
            weights = torch.as_tensor(np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0))
        if self.epochs > 0:
            optimiser = torch.optim.LBFGS(self.linear_.parameters(), lr=1.0, max_iter=self.epochs,
                                          tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                                          line_search_fn="strong_wolfe")
            penalty = 1.0 / (2.0 * self.C * len(y))

            def closure():
                optimiser.zero_grad()
                logits = self.linear_(Xs)
                loss = torch.nn.functional.cross_entropy(logits, target, weight=weights)
                loss = loss + penalty * ((self.linear_.weight - W0s) ** 2).sum()
                loss.backward()
                return loss

            optimiser.step(closure)
        self.classes_ = np.arange(n_classes)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            Xs = torch.as_tensor(self.scaler_.transform(X), dtype=torch.float64)
            return self.linear_(Xs).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X).argmax(axis=1)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == y).mean())

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` over raw features, scaler folded in."""
        W_s = self.linear_.weight.detach().numpy()
        b_s = self.linear_.bias.detach().numpy()
        return fold_scaler(W_s, b_s, self.scaler_.mean_, self.scaler_.scale_)


# --------------------------------------------------------------------------- scikit-learn heads


def make_estimator(clf: str, C: float, class_weight: str | None, seed: int, kernel: str = "linear",
                   epochs: int = 100, init: tuple[np.ndarray, np.ndarray] | None = None):
    """Build an unfitted head: a scaled scikit-learn pipeline, or a :class:`TorchLinearHead`."""
    if clf == "linear":
        return TorchLinearHead(C=C, epochs=epochs, init=init, class_weight=class_weight, seed=seed)
    if clf == "logreg":
        model = LogisticRegression(C=C, max_iter=5000, class_weight=class_weight, random_state=seed)
    elif clf == "svm" and kernel == "linear":
        model = LinearSVC(C=C, max_iter=20000, class_weight=class_weight, random_state=seed)
    elif clf == "svm":
        model = SVC(C=C, kernel=kernel, class_weight=class_weight, random_state=seed)
    else:
        raise ValueError(f"unknown classifier {clf!r}")
    return Pipeline([("scale", FlooredScaler()), ("clf", model)])


def affine_of(estimator, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw-feature ``(W, b)`` of a fitted linear head, reproducing its ``decision_function``."""
    if isinstance(estimator, TorchLinearHead):
        return estimator.affine()
    model, scaler = estimator.named_steps["clf"], estimator.named_steps["scale"]
    if isinstance(model, SVC):
        raise ValueError("a kernel SVM has no affine form")
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1 and n_classes == 2:
        coef, intercept = binary_to_two_rows(coef, intercept)
    return fold_scaler(coef, intercept, scaler.mean_, scaler.scale_)


def _fit_quietly(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def class_scores(estimator, X: np.ndarray) -> np.ndarray:
    """Per-class scores ``(rows, classes)`` of a fitted head: its decision function, with
    scikit-learn's single binary score ``s`` written as ``[-s/2, s/2]`` (same softmax)."""
    scores = estimator.decision_function(X)
    return np.column_stack([-scores, scores]) / 2 if scores.ndim == 1 else scores


def _fold_score(estimator, X, y, train_idx, test_idx, keep_scores: bool = False):
    """Fit a fresh (unfitted) head on one fold's rows and score its held-out rows.

    Returns the held-out accuracy, or ``(accuracy, class scores of the held-out rows)``
    when ``keep_scores`` is set.
    """
    fitted = _fit_quietly(estimator, X[train_idx], y[train_idx])
    accuracy = float((fitted.predict(X[test_idx]) == y[test_idx]).mean())
    return (accuracy, class_scores(fitted, X[test_idx])) if keep_scores else accuracy


def cv_splits(y: np.ndarray, groups: np.ndarray, clean: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold over images: every view of an image lands in the same fold.

    Returns ``(train_rows, test_rows)`` pairs; test rows are centre crops only, so a
    held-out score counts each image once.
    """
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, te[clean[te]]) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


@dataclass
class CVResult:
    """Outcome of the C sweep."""

    C: float
    cv_score: float
    folds: int
    grid: list[tuple[float, float]]
    warnings: list[str]
    oof_scores: np.ndarray | None = None  # (rows, classes) held-out scores at the chosen C; NaN for rows never held out


# Below this many training values a serial C sweep takes less time than starting joblib's
# worker processes: on hymenoptera (245 x 1280) the whole run_head.py command took 5.1 s
# serially and 10.8 s with 2 workers.
SERIAL_SWEEP_VALUES = 1_000_000


def sweep_jobs(n_jobs: int | None, rows: int, dim: int) -> int:
    """joblib workers for the C sweep: ``n_jobs`` if given, else 1 for small training sets and all cores above."""
    if n_jobs is not None:
        return n_jobs
    return 1 if rows * dim < SERIAL_SWEEP_VALUES else -1


def choose_C(estimator_for, X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray, folds: int,
             seed: int, n_jobs: int, grid: np.ndarray = C_GRID, keep_scores: bool = False) -> CVResult:
    """Pick C by stratified group K-fold cross-validation on training rows only.

    Parameters
    ----------
    estimator_for : callable
        ``estimator_for(C)`` returns a new unfitted head (one is made per fold).
    X, y : ndarray
        Training rows (all views).
    groups : ndarray
        Source-image id of each row: all views of one image stay in one fold.
    clean : ndarray of bool
        Rows that are centre crops; held-out scores use only these.
    folds : int
        Requested K; reduced (with a warning) when a class has fewer images.
    seed : int
    n_jobs : int
        joblib workers over (C, fold) pairs.
    grid : ndarray
        Values of C to try.
    keep_scores : bool
        Also keep each held-out row's class scores from the folds of the chosen C
        (``CVResult.oof_scores``: out-of-fold scores at no extra fit).

    Returns
    -------
    CVResult
        The C with the best mean accuracy (ties go to the smaller C, the stronger
        regularisation), its score, and the whole curve.
    """
    notes = []
    per_class = np.bincount(y[clean])
    smallest = int(per_class[per_class > 0].min())
    k = min(folds, smallest)
    if k < folds:
        notes.append(f"warning: the smallest class has {smallest} training images; using {k} folds instead of {folds}")
    if k < 2:
        raise HeadTrainingError("cross-validation needs at least 2 training images per class; pass a fixed --C")
    splits = cv_splits(y, groups, clean, k, seed)
    jobs = [(C, tr, te) for C in grid for tr, te in splits]
    results = Parallel(n_jobs=n_jobs)(delayed(_fold_score)(estimator_for(C), X, y, tr, te, keep_scores)
                                      for C, tr, te in jobs)
    scores = [r[0] for r in results] if keep_scores else results
    curve = [(float(C), float(np.mean(scores[i * k:(i + 1) * k]))) for i, C in enumerate(grid)]
    best = max(score for _, score in curve)
    chosen = next(C for C, score in curve if score >= best - 1e-12)
    if chosen in (float(grid[0]), float(grid[-1])) and len(grid) > 1:
        notes.append(f"note: the chosen C={chosen:.3g} is at the edge of the searched grid "
                     f"[{grid[0]:.3g}, {grid[-1]:.3g}]; a fixed --C beyond it may fit better")
    oof = None
    if keep_scores:
        at = [i for i, (C, _, _) in enumerate(jobs) if float(C) == chosen]
        oof = np.full((len(y), results[at[0]][1].shape[1]), np.nan)
        for i in at:
            oof[jobs[i][2]] = results[i][1]
    return CVResult(chosen, best, k, curve, notes, oof)
