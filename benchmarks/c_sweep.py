"""Time the logreg C sweep on one feature file's training split: a plain ``GridSearchCV`` against
:func:`choose_C`, and two faster sweeps that change the fits or skip some.

``python benchmarks/c_sweep.py FILE [SPLIT [REPEATS]]`` prints JSON: each way's seconds (best of REPEATS, alternating),
chosen C, and the val accuracy of a head refitted on the whole split at that C. ``grid``: ``GridSearchCV`` over the
same folds and grid, one job, BLAS threads as they come; ``sweep``: :func:`choose_C` with one job; ``sweep2``: with
two joblib workers; ``warm``: every C on every fold, each fit starting from the previous (smaller) C's solution, as
``LogisticRegressionCV`` does; ``coarse``: every other C, then the two neighbours of the best, each fitted afresh.
``converged`` (not timed): every fit run to a gradient tolerance of 1e-10, the choice the data make without the solver's
stopping point.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from typing import Iterator

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from features.store import FeatureFile, SplitData
from pipeline.head_maths import best_C
from pipeline.heads import C_GRID, choose_C, cv_splits, make_estimator, single_blas_thread


def grid_search_curve(X, y, groups, clean) -> list[tuple[float, float]]:
    """``(C, mean held-out accuracy)`` from a plain ``GridSearchCV`` over the sweep's folds and grid (one job, BLAS
    threads as they come): the reference ``choose_C`` is timed and tested against."""
    search = GridSearchCV(make_estimator("logreg", 1.0, None, 0), {"clf__C": list(C_GRID)}, scoring="accuracy",
                          cv=cv_splits(y, groups, clean, 5, 0), refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    return list(zip(C_GRID.tolist(), search.cv_results_["mean_test_score"].tolist()))


def _scaled_folds(X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """The sweep's folds as ``(X_train, y_train, X_test, y_test)``, each scaled by a scaler fitted on its training
    rows, as :func:`choose_C` scales them."""
    folds = []
    for train, test in cv_splits(y, groups, clean, 5, 0):
        scaler = make_estimator("logreg", 1.0, None, 0)[:-1].fit(X[train])  # the head's own scaling step
        folds.append((scaler.transform(X[train]), y[train], scaler.transform(X[test]), y[test]))
    return folds


def curve(folds: list[tuple[np.ndarray, ...]], Cs: np.ndarray, warm: bool, **solver) -> list[tuple[float, float]]:
    """``(C, mean held-out accuracy)`` at each C (ascending): fitted afresh, or (``warm``) one estimator per fold
    refitted from its last solution; ``solver``: other ``LogisticRegression`` parameters."""
    per_fold = []
    for X_train, y_train, X_test, y_test in folds:
        base = make_estimator("logreg", 1.0, None, 0)[-1].set_params(warm_start=warm, **solver)
        scores = []
        for C in Cs:
            model = base if warm else clone(base)
            scores.append(float(np.mean(model.set_params(C=C).fit(X_train, y_train).predict(X_test) == y_test)))
        per_fold.append(scores)
    return list(zip(np.asarray(Cs, dtype=float).tolist(), np.mean(per_fold, axis=0).tolist()))


@contextlib.contextmanager
def _quiet_single_thread() -> Iterator[None]:
    """BLAS on one thread, as :func:`choose_C` runs, and no convergence warnings."""
    with warnings.catch_warnings(), single_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def warm_path_C(X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray) -> float:
    """C chosen over the whole grid, each fold's fits warm-started along the ascending grid."""
    with _quiet_single_thread():
        return best_C(curve(_scaled_folds(X, y, groups, clean), C_GRID, True))[0]


def coarse_to_fine_C(X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray) -> float:
    """C chosen from every other grid value, then the two grid neighbours of the best of those, all fitted afresh."""
    with _quiet_single_thread():
        folds = _scaled_folds(X, y, groups, clean)
        coarse = curve(folds, C_GRID[::2], False)
        at = int(np.flatnonzero(C_GRID == best_C(coarse)[0])[0])
        fine = C_GRID[[i for i in (at - 1, at + 1) if 0 <= i < len(C_GRID)]]
        return best_C(coarse + curve(folds, fine, False))[0]


def converged_C(X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray) -> float:
    """C chosen over the whole grid with every fit run to a gradient tolerance of 1e-10."""
    with _quiet_single_thread():
        return best_C(curve(_scaled_folds(X, y, groups, clean), C_GRID, False, tol=1e-10, max_iter=20000))[0]


def val_accuracy(train: SplitData, val: SplitData, C: float) -> float:
    """Accuracy on the val centre crops of a logreg head fitted on all training rows at ``C``."""
    with _quiet_single_thread():
        head = make_estimator("logreg", C, None, 0).fit(train.features, train.labels)
    clean = val.view == 0
    return float(np.mean(head.predict(val.features[clean]) == val.labels[clean]))


def main(path: str, split: str = "train", repeats: int = 1) -> dict:
    with FeatureFile(path) as ff:
        train, val = ff.read_split(split), ff.read_split("val")
    args = (train.features, train.labels, train.image_index, train.view == 0)
    ways = {"grid": lambda: best_C(grid_search_curve(*args))[0],
            "sweep": lambda: choose_C(make_estimator("logreg", 1.0, None, 0), *args, 5, 0, 1).C,
            "sweep2": lambda: choose_C(make_estimator("logreg", 1.0, None, 0), *args, 5, 0, 2).C,
            "warm": lambda: warm_path_C(*args),
            "coarse": lambda: coarse_to_fine_C(*args)}
    seconds = {way: [] for way in ways}
    chosen = {}
    for _ in range(repeats):
        for way, run in ways.items():
            start = time.perf_counter()
            chosen[way] = run()
            seconds[way].append(time.perf_counter() - start)
    chosen["converged"] = converged_C(*args)
    accuracy = {C: val_accuracy(train, val, C) for C in set(chosen.values())}
    return {"rows": int(train.features.shape[0]), "dim": int(train.features.shape[1]),
            **{f"{way}_seconds": min(s) for way, s in seconds.items()}, **{f"{way}_C": C for way, C in chosen.items()},
            **{f"{way}_val_accuracy": accuracy[C] for way, C in chosen.items()}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *sys.argv[2:3], *[int(r) for r in sys.argv[3:4]])))
