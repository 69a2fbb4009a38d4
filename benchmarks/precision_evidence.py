"""Does bf16 extraction cost accuracy? Paired fp32 / bf16 feature files, scored over many resplits.

``python benchmarks/precision_evidence.py FP32.h5 BF16.h5 SEEDS`` prints JSON. Both files hold the
same images (they differ only in ``--precision``). Each seed pools every labeled centre-crop row,
draws a stratified train/val split with the files' own val share, chooses C by 5-fold CV on the
train rows and scores val, the same rows for both precisions. Files with augmented views keep their
own split instead (the views belong to the training images); there the seed is the extraction's.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from features.data import stratified_split
from features.store import FeatureFile, SplitData
from pipeline.heads import choose_C, make_estimator


def read_rows(path: str) -> dict[str, SplitData]:
    """Every split of a feature file, read whole."""
    with FeatureFile(path) as f:
        return {split: f.read_split(split) for split in f.splits}


def fit_head(train: SplitData, seed: int):
    """A logreg head with C chosen by 5-fold CV on ``train``, fitted on it: the estimator and C."""
    clean = train.view == 0
    estimator = make_estimator("logreg", 1.0, None, seed)
    chosen = choose_C(estimator, train.features, train.labels, train.image_index, clean, 5, seed, 1)
    return estimator.set_params(clf__C=chosen.C).fit(train.features, train.labels), chosen.C


def fit_score(train: SplitData, val_x: np.ndarray, val_y: np.ndarray, seed: int) -> tuple[float, np.ndarray, float]:
    """A logreg head with C chosen by 5-fold CV on ``train``: val accuracy, val predictions, C."""
    model, C = fit_head(train, seed)
    predicted = model.predict(val_x)
    return float(np.mean(predicted == val_y)), predicted, C


def resplit(rows: dict[str, SplitData], seed: int) -> tuple[SplitData, np.ndarray, np.ndarray]:
    """Every labeled centre-crop row, split again (stratified, seeded) with the file's own val share."""
    val_share = len(rows["val"].labels) / sum(len(s.labels) for s in rows.values())
    pooled = [rows[s].clean() for s in ("train", "val")]
    x = np.concatenate([p.features for p in pooled])
    y = np.concatenate([p.labels for p in pooled])
    is_val = stratified_split(y, val_share, seed)
    n = int((~is_val).sum())
    train = SplitData(x[~is_val], y[~is_val], np.zeros(0), np.arange(n), np.zeros(n, dtype=np.int16), [])
    return train, x[is_val], y[is_val]


def _own_split(rows: dict[str, SplitData], seed: int) -> tuple[SplitData, np.ndarray, np.ndarray]:
    """The file's own train split (all its views) and the centre crops of its val split."""
    val = rows["val"].clean()
    return rows["train"], val.features, val.labels


def paired_scores(fp32: dict[str, SplitData], bf16: dict[str, SplitData], seed: int, split=resplit) -> dict:
    """Accuracy of both precisions on the same train/val rows (``split``), and how many val predictions differ."""
    out, predictions = {}, {}
    for name, rows in (("fp32", fp32), ("bf16", bf16)):
        train, val_x, val_y = split(rows, seed)
        acc, predictions[name], C = fit_score(train, val_x, val_y, seed)
        out[name] = {"accuracy": acc, "C": C}
    out["disagree"] = int(np.sum(predictions["fp32"] != predictions["bf16"]))
    out["val_images"] = int(len(predictions["fp32"]))
    return out


def cosine(fp32: dict[str, SplitData], bf16: dict[str, SplitData]) -> tuple[float, float]:
    """Lowest and mean cosine between the two files' rows, over every split."""
    a = np.concatenate([fp32[s].features for s in fp32])
    b = np.concatenate([bf16[s].features for s in fp32])
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), float(cos.mean())


def main(fp32_path: str, bf16_path: str, seeds: int) -> dict:
    fp32, bf16 = read_rows(fp32_path), read_rows(bf16_path)
    views = bool(np.any(fp32["train"].view > 0))
    if views:
        runs = [paired_scores(fp32, bf16, 0, _own_split)]
    else:
        runs = [paired_scores(fp32, bf16, seed) for seed in range(seeds)]
    low, mean = cosine(fp32, bf16)
    return {"runs": runs, "cosine_min": low, "cosine_mean": mean, "views": views}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
