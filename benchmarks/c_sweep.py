"""Time the logreg C sweep on one feature file's training split: ``GridSearchCV`` as the sweep ran before, against
:func:`choose_C`, and two faster sweeps that change the fits.

``python benchmarks/c_sweep.py FILE [SPLIT [REPEATS]]`` prints JSON: each way's seconds (best of REPEATS, alternating),
chosen C, and the val accuracy of a head refitted on the whole split at that C. ``grid``: ``GridSearchCV`` over the
same folds and grid, one job, BLAS threads as they come; ``sweep``: :func:`choose_C` with one job; ``sweep2``: with
two joblib workers; ``warm``: every C on every fold, each fit starting from the previous (smaller) C's solution, as
``LogisticRegressionCV`` does; ``coarse``: every other C, then the two neighbours of the best, each fitted afresh.
``converged`` (not timed): every fit run to a tolerance of 1e-10, the choice the data make without the solver's
stopping point.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from features.store import FeatureFile
from pipeline.head_maths import best_C
from pipeline.heads import C_GRID, FlooredScaler, choose_C, cv_splits, make_estimator, single_blas_thread


def grid_search_curve(X, y, groups, clean) -> list[tuple[float, float]]:
    """``(C, mean held-out accuracy)`` from ``GridSearchCV`` over the sweep's folds and grid, as the sweep was first
    written (one job, BLAS threads as they come): the reference ``choose_C`` is timed and tested against."""
    search = GridSearchCV(make_estimator("logreg", 1.0, None, 0), {"clf__C": list(C_GRID)}, scoring="accuracy",
                          cv=cv_splits(y, groups, clean, 5, 0), refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    return list(zip(C_GRID.tolist(), search.cv_results_["mean_test_score"].tolist()))


def _scaled_folds(X, y, groups, clean) -> list[tuple]:
    """The sweep's folds, each scaled by a scaler fitted on its training rows, as :func:`choose_C` scales them."""
    folds = []
    for train, test in cv_splits(y, groups, clean, 5, 0):
        scaler = FlooredScaler().fit(X[train])
        folds.append((scaler.transform(X[train]), y[train], scaler.transform(X[test]), y[test]))
    return folds


def _mean_scores(folds: list[tuple], Cs, warm: bool, **solver) -> list[float]:
    """Mean held-out accuracy at each C (ascending); ``warm``: one estimator per fold, refitted from its last solution;
    ``solver``: other ``LogisticRegression`` parameters."""
    per_fold = []
    for X_train, y_train, X_test, y_test in folds:
        model, scores = clone(make_estimator("logreg", 1.0, None, 0)[-1]).set_params(warm_start=warm, **solver), []
        for C in Cs:
            model = model if warm else clone(model)
            scores.append(float(np.mean(model.set_params(C=C).fit(X_train, y_train).predict(X_test) == y_test)))
        per_fold.append(scores)
    return np.mean(per_fold, axis=0).tolist()


def warm_path_C(X, y, groups, clean) -> float:
    """C chosen over the whole grid, each fold's fits warm-started along the ascending grid."""
    with warnings.catch_warnings(), single_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return best_C(list(zip(C_GRID.tolist(), _mean_scores(_scaled_folds(X, y, groups, clean), C_GRID, True))))[0]


def coarse_to_fine_C(X, y, groups, clean) -> float:
    """C chosen from every other grid value, then the two grid neighbours of the best of those, all fitted afresh."""
    with warnings.catch_warnings(), single_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        folds = _scaled_folds(X, y, groups, clean)
        coarse = C_GRID[::2]
        curve = list(zip(coarse.tolist(), _mean_scores(folds, coarse, False)))
        at = int(np.flatnonzero(C_GRID == best_C(curve)[0])[0])
        fine = C_GRID[[i for i in (at - 1, at + 1) if 0 <= i < len(C_GRID)]]
        return best_C(curve + list(zip(fine.tolist(), _mean_scores(folds, fine, False))))[0]


def converged_C(X, y, groups, clean) -> float:
    """C chosen over the whole grid with every fit run to a tolerance of 1e-10."""
    with warnings.catch_warnings(), single_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        folds = _scaled_folds(X, y, groups, clean)
        return best_C(list(zip(C_GRID.tolist(), _mean_scores(folds, C_GRID, False, tol=1e-10, max_iter=20000))))[0]


def val_accuracy(train, val, C: float) -> float:
    """Accuracy on the val centre crops of a logreg head fitted on all training rows at ``C``."""
    with warnings.catch_warnings(), single_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
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
