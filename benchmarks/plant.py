"""Make a copy of hymenoptera with known problems planted in it, for the audit benchmark.

``python benchmarks/plant.py SRC DST`` copies SRC (a ``train``/``val`` ImageFolder) to DST
and plants, with a fixed seed:

- label flips: 10 % of the training images (never ``imageNotFound.gif``) are copied into
  the other class's folder instead of their own;
- leaks: 10 val images are copied into the same class of ``train``, resized to 60-90 %
  and re-encoded as JPEG at quality 60-85; three of them are also mirrored;
- foreign images: 5 of scikit-learn's 8x8 digits, upscaled to 224 px, added to one class.

The truth is written beside it, to ``DST.json`` (paths relative to DST, as the feature file
stores them) and printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageOps

FLIP_FRACTION = 0.10
N_LEAKS = 10
N_MIRRORED = 3
N_FOREIGN = 5


def _images(root: str, split: str) -> list[str]:
    out = []
    for cls in sorted(os.listdir(os.path.join(root, split))):
        for name in sorted(os.listdir(os.path.join(root, split, cls))):
            out.append(f"{split}/{cls}/{name}")
    return out


def plant(src: str, dst: str, seed: int = 0) -> dict:
    """Copy ``src`` to ``dst`` with planted problems; returns (and writes) the truth."""
    rng = np.random.default_rng(seed)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    classes = sorted(os.listdir(os.path.join(src, "train")))
    train = [p for p in _images(src, "train") if not p.endswith("imageNotFound.gif")]
    flipped = set(rng.choice(len(train), size=int(round(FLIP_FRACTION * len(train))), replace=False).tolist())
    truth = {"flipped": [], "leaks": [], "foreign": []}
    for split in ("train", "val"):
        for rel in _images(src, split):
            split_, cls, name = rel.split("/")
            if split == "train" and rel in train and train.index(rel) in flipped:
                other = classes[(classes.index(cls) + 1) % len(classes)]
                rel_out = f"{split_}/{other}/{name}"
                truth["flipped"].append({"path": rel_out, "true": cls})
            else:
                rel_out = rel
            os.makedirs(os.path.dirname(os.path.join(dst, rel_out)), exist_ok=True)
            shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel_out))
    val = _images(src, "val")
    for k, i in enumerate(rng.choice(len(val), size=N_LEAKS, replace=False)):
        rel = val[i]
        _, cls, name = rel.split("/")
        with Image.open(os.path.join(src, rel)) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            scale = rng.uniform(0.6, 0.9)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
            if k < N_MIRRORED:
                img = ImageOps.mirror(img)
            copy = f"train/{cls}/leak_{os.path.splitext(name)[0]}.jpg"
            img.save(os.path.join(dst, copy), quality=int(rng.integers(60, 86)))
        truth["leaks"].append({"train": copy, "val": rel, "mirrored": k < N_MIRRORED})
    from sklearn.datasets import load_digits

    digits = load_digits()
    target_class = classes[-1]
    for k, i in enumerate(rng.choice(len(digits.images), size=N_FOREIGN, replace=False)):
        arr = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        rel = f"train/{target_class}/digit_{k}.png"
        Image.fromarray(arr, "L").resize((224, 224), Image.BILINEAR).save(os.path.join(dst, rel))
        truth["foreign"].append(rel)
    with open(dst.rstrip("/") + ".json", "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
    return truth


if __name__ == "__main__":
    t = plant(sys.argv[1], sys.argv[2])
    print(json.dumps({k: len(v) for k, v in t.items()}))
