"""Fit one head on generated features and print its fit time as JSON (``{"seconds": ...}``).

``python benchmarks/head_fit.py CLF ROWS DIM SWEEP`` (SWEEP 1: C chosen by 5-fold CV over
the default grid, then the refit; 0: C=1). Features are 10 Gaussian classes, float32.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from pipeline.heads import choose_C, make_estimator


def main(clf: str, rows: int, dim: int, sweep: bool) -> float:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=rows)
    centres = rng.normal(0, 1, size=(10, dim)).astype(np.float32)
    X = centres[y] + rng.normal(0, 2.0, size=(rows, dim)).astype(np.float32)
    start = time.perf_counter()
    C = 1.0
    if sweep:
        C = choose_C(make_estimator(clf, 1.0, None, 0), X, y, np.arange(rows), np.ones(rows, bool), 5, 0, -1).C
    make_estimator(clf, C, None, 0).fit(X, y)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(json.dumps({"seconds": main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")}))
