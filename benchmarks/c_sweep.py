"""Time the logreg C sweep on one feature file's training split, warm-started path against GridSearchCV.

``python benchmarks/c_sweep.py FILE [SPLIT [REPEATS]]`` prints JSON: each way's seconds (best of REPEATS, alternating) and chosen C.
"""

from __future__ import annotations

import json
import sys
import time

from features.store import FeatureFile
from pipeline.heads import choose_C, make_estimator


def main(path: str, split: str = "train", repeats: int = 1) -> dict:
    with FeatureFile(path) as ff:
        train = ff.read_split(split)
    seconds = {"grid": [], "warm": []}
    chosen = {}
    for _ in range(repeats):
        for way in ("grid", "warm"):
            start = time.perf_counter()
            cv = choose_C(make_estimator("logreg", 1.0, None, 0), train.features, train.labels, train.image_index,
                          train.view == 0, 5, 0, 1, warm_start=way == "warm")
            seconds[way].append(time.perf_counter() - start)
            chosen[way] = cv.C
    return {"rows": int(train.features.shape[0]), "dim": int(train.features.shape[1]),
            "grid_seconds": min(seconds["grid"]), "warm_seconds": min(seconds["warm"]),
            "grid_C": chosen["grid"], "warm_C": chosen["warm"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *sys.argv[2:3], *[int(r) for r in sys.argv[3:4]])))
