"""Does a larger input pay for frozen features? Feature files of one dataset at several ``--image-size``, scored alike.

``python benchmarks/size_evidence.py SEEDS FILE [FILE ...]`` prints JSON: for each file (same images, made with
another ``--image-size``), the val accuracy of a logreg head on the file's own split and on ``SEEDS`` stratified
resplits of every labeled image, the same rows for every file (as :mod:`benchmarks.precision_evidence`).
"""

from __future__ import annotations

import json
import sys

from benchmarks.precision_evidence import fit_score, read_rows, resplit
from features.store import FeatureFile


def _crop_size(path: str) -> int:
    with FeatureFile(path) as f:
        return f.identity().preprocessing.crop_size


def main(seeds: int, paths: list[str]) -> dict:
    files = []
    reference = None
    for path in paths:
        rows = read_rows(path)
        order = [list(rows[s].paths) for s in ("train", "val")]
        if reference is None:
            reference = order
        elif order != reference:
            raise SystemExit(f"error: {path} does not hold the same images in the same order as {paths[0]}")
        val = rows["val"].clean()
        own, _, own_C = fit_score(rows["train"], val.features, val.labels, 0)
        drawn = [resplit(rows, seed) for seed in range(seeds)]
        files.append({"path": path, "image_size": _crop_size(path), "own_split": own, "own_C": own_C,
                      "resplits": [fit_score(*split, seed)[0] for seed, split in enumerate(drawn)],
                      "val_images": int(len(val.labels)), "resplit_val_images": int(len(drawn[0][2]))})
    return {"files": files}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2:])))
