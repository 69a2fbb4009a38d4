"""Time the logreg C sweep on one feature file's training split: ``GridSearchCV`` as the sweep ran before, against :func:`choose_C`.

``python benchmarks/c_sweep.py FILE [SPLIT [REPEATS]]`` prints JSON: each way's seconds (best of REPEATS, alternating)
and chosen C. ``grid``: ``GridSearchCV`` over the same folds and grid, one job, BLAS threads as they come;
``sweep``: :func:`choose_C` with one job; ``sweep2``: with two joblib workers.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from features.store import FeatureFile
from pipeline.head_maths import best_C
from pipeline.heads import C_GRID, choose_C, cv_splits, make_estimator


def grid_search_curve(X, y, groups, clean) -> list[tuple[float, float]]:
    """``(C, mean held-out accuracy)`` from ``GridSearchCV`` over the sweep's folds and grid, as the sweep was first
    written (one job, BLAS threads as they come): the reference ``choose_C`` is timed and tested against."""
    search = GridSearchCV(make_estimator("logreg", 1.0, None, 0), {"clf__C": list(C_GRID)}, scoring="accuracy",
                          cv=cv_splits(y, groups, clean, 5, 0), refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    return list(zip(C_GRID.tolist(), search.cv_results_["mean_test_score"].tolist()))


def main(path: str, split: str = "train", repeats: int = 1) -> dict:
    with FeatureFile(path) as ff:
        train = ff.read_split(split)
    args = (train.features, train.labels, train.image_index, train.view == 0)
    ways = {"grid": lambda: best_C(grid_search_curve(*args))[0],
            "sweep": lambda: choose_C(make_estimator("logreg", 1.0, None, 0), *args, 5, 0, 1).C,
            "sweep2": lambda: choose_C(make_estimator("logreg", 1.0, None, 0), *args, 5, 0, 2).C}
    seconds = {way: [] for way in ways}
    chosen = {}
    for _ in range(repeats):
        for way, run in ways.items():
            start = time.perf_counter()
            chosen[way] = run()
            seconds[way].append(time.perf_counter() - start)
    return {"rows": int(train.features.shape[0]), "dim": int(train.features.shape[1]),
            **{f"{way}_seconds": min(s) for way, s in seconds.items()}, **{f"{way}_C": C for way, C in chosen.items()}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *sys.argv[2:3], *[int(r) for r in sys.argv[3:4]])))
