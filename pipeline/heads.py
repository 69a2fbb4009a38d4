"""Classifiers trained on cached features: scikit-learn logreg / SVM and a torch ``nn.Linear``.

All linear heads are reduced to one :class:`~pipeline.affine.AffineHead` in raw-feature
space, with the feature scaler folded in.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.validation import check_is_fitted, check_X_y
from threadpoolctl import threadpool_limits

from pipeline.affine import binary_to_two_rows, fold_scaler
from pipeline.head_maths import (HeadTrainingError, balanced_class_weights, best_C, floored_scale, l2_penalty,
                                standardised_init)

if TYPE_CHECKING:  # torch is imported when a TorchLinearHead is fitted: the scikit-learn heads start without it
    import torch

C_GRID = np.logspace(-5, 2, 15)


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


# --------------------------------------------------------------------------- torch linear head


class TorchLinearHead(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression as a torch ``nn.Linear``, trained full-batch with L-BFGS.

    A scikit-learn classifier (``clone``, ``get_params`` and the model-selection tools
    work). Features are standardised inside ``fit`` by a :class:`FlooredScaler`, and the
    fitted ``coef_`` and ``intercept_`` are over raw features, scaler folded in. The
    penalty is ``||W - W0||^2 / (2 C n)``, the same objective as scikit-learn's
    ``LogisticRegression(C)``, pulled towards ``W0`` instead of zero when an initial map
    is given (for example the backbone's own ImageNet rows), so a small C keeps the
    initial classifier and a large C trusts the data.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    epochs : int
        L-BFGS iterations over the full batch; ``0`` keeps the initial map.
    init : tuple of ndarray, optional
        ``(W0, b0)`` in raw-feature space, one row per class in ``classes_`` order; zeros
        when omitted.
    class_weight : str or None
        ``"balanced"`` weights each class inversely to its frequency.
    seed : int

    Attributes
    ----------
    classes_ : ndarray
        The labels seen in ``fit``, sorted.
    coef_ : ndarray, shape (n_classes, n_features)
    intercept_ : ndarray, shape (n_classes,)
    """

    def __init__(self, C: float = 1.0, epochs: int = 100, init: tuple[np.ndarray, np.ndarray] | None = None,
                 class_weight: str | None = None, seed: int = 0) -> None:
        self.C = C
        self.epochs = epochs
        self.init = init
        self.class_weight = class_weight
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> "TorchLinearHead":
        import torch

        X, y = check_X_y(X, y, dtype=np.float64)
        self.classes_, target = np.unique(y, return_inverse=True)
        n_classes, dim = len(self.classes_), X.shape[1]
        if self.init is not None and np.shape(self.init[0]) != (n_classes, dim):
            raise ValueError(f"init has shape {np.shape(self.init[0])}, expected ({n_classes}, {dim})")
        scaler = FlooredScaler().fit(X)
        W0s, b0s = (np.zeros((n_classes, dim)), np.zeros(n_classes)) if self.init is None else \
            standardised_init(*self.init, scaler.mean_, scaler.scale_)
        W0s = torch.as_tensor(W0s, dtype=torch.float64)
        torch.manual_seed(self.seed)
        linear = torch.nn.Linear(dim, n_classes, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(W0s)
            linear.bias.copy_(torch.as_tensor(b0s, dtype=torch.float64))
        if self.epochs > 0:
            weights = None
            if self.class_weight == "balanced":
                weights = torch.as_tensor(balanced_class_weights(np.bincount(target, minlength=n_classes)))
            self._minimise(linear, torch.as_tensor(scaler.transform(X)), torch.as_tensor(target), W0s, weights)
        self.coef_, self.intercept_ = fold_scaler(linear.weight.detach().numpy(), linear.bias.detach().numpy(),
                                                  scaler.mean_, scaler.scale_)
        self.n_features_in_ = dim
        return self

    def _minimise(self, linear: torch.nn.Linear, Xs: torch.Tensor, target: torch.Tensor, W0s: torch.Tensor,
                  weights: torch.Tensor | None) -> None:
        """Full-batch L-BFGS on cross-entropy plus :func:`~pipeline.head_maths.l2_penalty`."""
        import torch

        optimiser = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=self.epochs, tolerance_grad=1e-9,
                                      tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(linear(Xs), target, weight=weights)
            loss = loss + l2_penalty(linear.weight, W0s, self.C, len(target))
            loss.backward()
            return loss

        optimiser.step(closure)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "coef_")
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)  # raises NotFittedError first
        return self.classes_[scores.argmax(axis=1)]


# --------------------------------------------------------------------------- scikit-learn heads


def make_estimator(clf: str, C: float, class_weight: str | None, seed: int, kernel: str = "linear",
                   epochs: int = 100, init: tuple[np.ndarray, np.ndarray] | None = None) -> BaseEstimator:
    """Build an unfitted head: a scaled scikit-learn pipeline, or a :class:`TorchLinearHead` (which scales itself)."""
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


def affine_of(estimator: BaseEstimator, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw-feature ``(W, b)`` of a fitted linear head, reproducing its ``decision_function``.

    Reads the final estimator's ``coef_`` and ``intercept_`` and folds in the scaler of a
    scaled pipeline.

    Raises
    ------
    ValueError
        A head without a linear form (a kernel SVM).
    """
    scaler, model = (estimator[0], estimator[-1]) if isinstance(estimator, Pipeline) else (None, estimator)
    if not hasattr(model, "coef_"):
        raise ValueError("a kernel SVM has no affine form")
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1 and n_classes == 2:
        coef, intercept = binary_to_two_rows(coef, intercept)
    return fold_scaler(coef, intercept, scaler.mean_, scaler.scale_) if scaler is not None else (coef, intercept)


def class_scores(estimator: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Per-class scores ``(rows, classes)`` of a fitted head: its decision function, with
    scikit-learn's single binary score ``s`` written as ``[-s/2, s/2]`` (same softmax)."""
    scores = estimator.decision_function(X)
    return np.column_stack([-scores, scores]) / 2 if scores.ndim == 1 else scores


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
# worker processes (on hymenoptera, 245 x 1280, the command took about twice as long with
# 2 workers as serially).
SERIAL_SWEEP_VALUES = 1_000_000


def sweep_jobs(n_jobs: int | None, rows: int, dim: int) -> int:
    """joblib workers for the C sweep: ``n_jobs`` if given, else 1 for small training sets and all cores above."""
    if n_jobs is not None:
        return n_jobs
    return 1 if rows * dim < SERIAL_SWEEP_VALUES else -1


def C_parameter(estimator: BaseEstimator) -> str:
    """The name under which ``estimator.set_params`` takes C (``C``, or ``clf__C`` in a pipeline)."""
    return next(name for name in estimator.get_params() if name == "C" or name.endswith("__C"))


def single_blas_thread() -> threadpool_limits:
    """Context in which NumPy's and SciPy's BLAS run on one thread.

    The heads' fits are many small matrix products and L-BFGS steps, for which two
    OpenBLAS threads cost more in hand-offs than they gain: the digits demo's 75-fit C sweep
    took 39 s with two threads and 6.3 s with one. torch's own threads are not touched.
    """
    return threadpool_limits(limits=1, user_api="blas")


def _fold_scores(estimator: BaseEstimator, grid: np.ndarray, X: np.ndarray, y: np.ndarray,
                 train: np.ndarray, test: np.ndarray) -> list[float]:
    """Held-out accuracy at each C on one fold.

    A pipeline's scaler does not depend on C, so it is fitted once per fold; every C is then
    a fresh fit of the final estimator on the scaled rows, the same fit ``GridSearchCV`` makes.
    """
    X_train, X_test = X[train], X[test]
    model = estimator
    if isinstance(estimator, Pipeline):
        scaler = clone(estimator[:-1]).fit(X_train, y[train])
        X_train, X_test, model = scaler.transform(X_train), scaler.transform(X_test), estimator[-1]
    param = C_parameter(model)
    with single_blas_thread():
        return [float(np.mean(clone(model).set_params(**{param: C}).fit(X_train, y[train]).predict(X_test) == y[test]))
                for C in grid]


def _sweep(estimator: BaseEstimator, grid: np.ndarray, X: np.ndarray, y: np.ndarray,
           splits: list[tuple[np.ndarray, np.ndarray]], n_jobs: int) -> np.ndarray:
    """Mean held-out accuracy per C over the folds (joblib workers over folds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        per_fold = Parallel(n_jobs=n_jobs)(delayed(_fold_scores)(estimator, grid, X, y, tr, te) for tr, te in splits)
    return np.mean(per_fold, axis=0)


def choose_C(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray,
             folds: int, seed: int, n_jobs: int, grid: np.ndarray = C_GRID, keep_scores: bool = False) -> CVResult:
    """Pick C by stratified group K-fold cross-validation on training rows only.

    Over the explicit folds of :func:`cv_splits`, every C is fitted afresh on every fold,
    as ``GridSearchCV`` does, so the curve and the choice are the same as its; the scaler
    is fitted once per fold and BLAS runs on one thread (:func:`single_blas_thread`),
    which is what makes it several times faster. The choice follows
    :func:`~pipeline.head_maths.best_C`.

    Parameters
    ----------
    estimator : BaseEstimator
        An unfitted head (:func:`make_estimator`); it is cloned for every fit.
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
        joblib workers over the folds.
    grid : ndarray
        Values of C to try.
    keep_scores : bool
        Also keep each held-out row's class scores from the folds, refitted at the chosen
        C (``CVResult.oof_scores``: out-of-fold scores).

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
    param = C_parameter(estimator)
    grid = np.sort(np.asarray(grid, dtype=float))
    curve = [(float(C), float(score)) for C, score in zip(grid, _sweep(estimator, grid, X, y, splits, n_jobs))]
    chosen, best = best_C(curve)
    if chosen in (float(grid[0]), float(grid[-1])) and len(grid) > 1:
        notes.append(f"note: the chosen C={chosen:.3g} is at the edge of the searched grid "
                     f"[{grid[0]:.3g}, {grid[-1]:.3g}]; a fixed --C beyond it may fit better")
    oof = _out_of_fold_scores(clone(estimator).set_params(**{param: chosen}), X, y, splits, n_jobs) if keep_scores else None
    return CVResult(chosen, best, k, curve, notes, oof)


def fit_head(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray,
             cross_validate_C: bool, folds: int, seed: int, n_jobs: int) -> tuple[CVResult | None, float]:
    """Fit ``estimator`` on every row, at its own C or at the one :func:`choose_C` picks.

    What ``run_head.py`` does with the training rows, in one place, so that a head refitted
    on other features (:mod:`pipeline.refit`) is fitted the same way.

    Parameters
    ----------
    estimator : BaseEstimator
        An unfitted head (:func:`make_estimator`); fitted in place.
    X, y, groups, clean : ndarray
        As for :func:`choose_C`.
    cross_validate_C : bool
        Choose C by :func:`choose_C` first; otherwise keep the estimator's C.
    folds, seed, n_jobs : int
        As for :func:`choose_C`.

    Returns
    -------
    cv : CVResult or None
        The sweep (None for a fixed C).
    fit_seconds : float
        The final fit's time, without the sweep.
    """
    cv = None
    if cross_validate_C:
        cv = choose_C(estimator, X, y, groups, clean, folds, seed, n_jobs)
        estimator.set_params(**{C_parameter(estimator): cv.C})
    started = time.perf_counter()
    with single_blas_thread():
        estimator.fit(X, y)
    return cv, time.perf_counter() - started


def _out_of_fold_scores(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray,
                        splits: list[tuple[np.ndarray, np.ndarray]], n_jobs: int) -> np.ndarray:
    """Class scores of every held-out row from the fold that held it out; NaN for rows never held out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with single_blas_thread():
            fitted = cross_validate(estimator, X, y, cv=splits, n_jobs=n_jobs, return_estimator=True,
                                    error_score="raise")["estimator"]
    oof = None
    for model, (_, test) in zip(fitted, splits):
        scores = class_scores(model, X[test])
        if oof is None:
            oof = np.full((len(y), scores.shape[1]), np.nan)
        oof[test] = scores
    return oof
