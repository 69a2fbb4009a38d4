"""Write a generated feature file (10 Gaussian classes) for the stage-two benchmarks.

``python benchmarks/make_features.py OUT TRAIN_ROWS DIM`` writes a complete file in the
project's format with a ``train`` split of TRAIN_ROWS rows and a ``val`` split of 2,000,
generated and written in blocks so the generator itself stays small.
"""

from __future__ import annotations

import sys

import numpy as np

from features.identity import FeatureIdentity
from features.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from features.store import file_attrs
from features.writer import open_writer

CLASSES = [f"class{i}" for i in range(10)]
BLOCK = 10_000


def main(out: str, train_rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.08, size=(len(CLASSES), dim)).astype(np.float32)
    identity = FeatureIdentity(backbone="generated", weights="none", feature_layer="none", feature_dim=dim,
                               preprocessing=Preprocessing(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
                               classes=tuple(CLASSES), weights_source="generated")
    attrs = file_attrs(identity, ["train", "val"], "generated", {"seed": 0}, {}, created="2026-01-01T00:00:00+00:00")
    sizes = {"train": train_rows, "val": 2000}
    writer = open_writer(out, attrs, sizes, dim, "float32", overwrite=True).writer
    for split, n in sizes.items():
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            y = rng.integers(0, len(CLASSES), size=m)
            X = centres[y] + rng.normal(0, 1.0, size=(m, dim)).astype(np.float32)
            index = np.arange(start, start + m)
            writer.commit(split, X, y, [f"{split}/{i}" for i in index], index, np.zeros(m, np.int16), [], start + m)
        writer.finish_split(split)
    writer.finalize()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
