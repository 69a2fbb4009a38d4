"""Does a larger input pay for frozen features? Feature files of one dataset at several ``--image-size``, scored alike.

``python benchmarks/size_evidence.py SEEDS FILE [FILE ...]`` prints JSON: for each file (same images, made with
another ``--image-size``), the val accuracy of a logreg head on the file's own split and on ``SEEDS`` stratified
resplits of every labeled image, the same rows for every file (as :mod:`benchmarks.precision_evidence`).

With ``--head-from-first``, each head is fitted on the first file's train rows only and scores every file's val
rows: what a model fused at the first file's size scores when fed larger inputs (``pipeline.fuse --input-size``).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from benchmarks.precision_evidence import fit_head, fit_score, read_rows, resplit
from features.store import FeatureFile


def _crop_size(path: str) -> int:
    with FeatureFile(path) as f:
        return f.identity().preprocessing.crop_size


def _same_images(paths: list[str]) -> list[dict]:
    """Every file's rows; exits when a file does not hold the first file's images in its order."""
    all_rows = [read_rows(path) for path in paths]
    reference = [list(all_rows[0][s].paths) for s in ("train", "val")]
    for path, rows in zip(paths, all_rows):
        if [list(rows[s].paths) for s in ("train", "val")] != reference:
            raise SystemExit(f"error: {path} does not hold the same images in the same order as {paths[0]}")
    return all_rows


def head_from_first(seeds: int, paths: list[str]) -> dict:
    """Heads fitted on the first file's train rows (own split and resplits), scored on every file's val rows."""
    all_rows = _same_images(paths)
    own_model, own_C = fit_head(all_rows[0]["train"], 0)
    drawn = [resplit(all_rows[0], seed) for seed in range(seeds)]
    models = [fit_head(train, seed)[0] for seed, (train, _, _) in enumerate(drawn)]
    files = []
    for path, rows in zip(paths, all_rows):
        val = rows["val"].clean()
        resplits = []
        for seed, model in enumerate(models):
            _, x, y = resplit(rows, seed)  # the same rows as the first file's resplit (same images, same order)
            resplits.append(float(np.mean(model.predict(x) == y)))
        files.append({"path": path, "image_size": _crop_size(path), "own_C": own_C, "resplits": resplits,
                      "own_split": float(np.mean(own_model.predict(val.features) == val.labels)),
                      "val_images": int(len(val.labels)), "resplit_val_images": int(len(drawn[0][2]))})
    return {"files": files}


def main(seeds: int, paths: list[str]) -> dict:
    files = []
    for path, rows in zip(paths, _same_images(paths)):
        val = rows["val"].clean()
        own, _, own_C = fit_score(rows["train"], val.features, val.labels, 0)
        drawn = [resplit(rows, seed) for seed in range(seeds)]
        files.append({"path": path, "image_size": _crop_size(path), "own_split": own, "own_C": own_C,
                      "resplits": [fit_score(*split, seed)[0] for seed, split in enumerate(drawn)],
                      "val_images": int(len(val.labels)), "resplit_val_images": int(len(drawn[0][2]))})
    return {"files": files}


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--head-from-first":
        print(json.dumps(head_from_first(int(args[1]), args[2:])))
    else:
        print(json.dumps(main(int(args[0]), args[1:])))
