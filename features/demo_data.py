"""An offline demo dataset: scikit-learn's bundled 8x8 digits written as an ImageFolder."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from features.data import stratified_split


def write_digits_imagefolder(root: str, size: int = 64, val_fraction: float = 0.25, seed: int = 0,
                             per_class: int | None = None) -> dict[str, int]:
    """Write ``load_digits`` as ``root/{train,val}/<digit>/<n>.png`` grayscale images.

    Parameters
    ----------
    root : str
        Output folder (created).
    size : int
        Side of the upscaled PNGs (the originals are 8x8, 0..16 grey levels).
    val_fraction : float
        Stratified share of each class written to ``val``.
    seed : int
    per_class : int, optional
        Keep only the first N images of each digit (smaller demos and tests).

    Returns
    -------
    dict of str to int
        Number of images written per split.
    """
    digits = load_digits()
    images, labels = digits.images, digits.target
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
        keep.sort()
        images, labels = images[keep], labels[keep]
    is_val = stratified_split(labels, val_fraction, seed)
    counts = {"train": 0, "val": 0}
    for i, (img, label) in enumerate(zip(images, labels)):
        split = "val" if is_val[i] else "train"
        folder = os.path.join(root, split, f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        pixels = (255 - img * 255.0 / 16.0).astype(np.uint8)  # dark ink on white paper
        Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(os.path.join(folder, f"{i:04d}.png"))
        counts[split] += 1
    return counts


if __name__ == "__main__":
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "demo_out/digits"
    written = write_digits_imagefolder(out)
    print(f"wrote {written['train']} train and {written['val']} val digit images under {out}")
