"""Generate a drawn-shapes ImageFolder: content unfamiliar to an ImageNet backbone, at a photo-like size.

``python benchmarks/shapes_data.py DST [TRAIN_PER_CLASS [VAL_PER_CLASS [SEED]]]`` writes
``DST/{train,val}/<shape>/<n>.png``: 96-px images, each one outlined shape (circle, square,
triangle, cross, star or pentagon) of random size, place, turn and colour, among random
strokes on a noisy background. Like the digits demo these are drawings, not photos; unlike
it they are stored near the backbone's input size, so a second unfamiliar dataset can test
what section 19 found (fine-tuning rates by content, not by stored size).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "star", "pentagon")
SIDE = 96


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ``r`` centred on ``(cx, cy)``, turned by ``turn`` radians."""
    if shape == "star":
        radii, count = [r if i % 2 == 0 else r * 0.45 for i in range(10)], 10
    elif shape == "cross":
        arm = r * 0.35
        base = [(arm, r), (arm, arm), (r, arm), (r, -arm), (arm, -arm), (arm, -r),
                (-arm, -r), (-arm, -arm), (-r, -arm), (-r, arm), (-arm, arm), (-arm, r)]
        return [(cx + x * math.cos(turn) - y * math.sin(turn), cy + x * math.sin(turn) + y * math.cos(turn))
                for x, y in base]
    else:
        count = {"square": 4, "triangle": 3, "pentagon": 5}[shape]
        radii = [r] * count
    return [(cx + radii[i] * math.cos(turn + 2 * math.pi * i / count),
             cy + radii[i] * math.sin(turn + 2 * math.pi * i / count)) for i in range(count)]


def draw_shape(shape: str, rng: np.random.Generator) -> Image.Image:
    """One image: a noisy background, 3 to 6 random strokes, and the shape's outline."""
    background = rng.integers(150, 256)
    noise = rng.normal(0, 18, (SIDE, SIDE, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 7)):
        points = [tuple(rng.uniform(0, SIDE, 2)) for _ in range(2)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 160, 3)), width=int(rng.integers(1, 3)))
    r = rng.uniform(12, 30)
    cx, cy = rng.uniform(r + 2, SIDE - r - 2, 2)
    colour = tuple(int(v) for v in rng.integers(0, 140, 3))
    width = int(rng.integers(2, 4))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=width)
    else:
        points = _polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
        draw.line(points + points[:1], fill=colour, width=width, joint="curve")
    return img


def write_shapes(dst: str, train_per_class: int = 100, val_per_class: int = 50, seed: int = 0) -> int:
    """Write the dataset; returns the number of images written."""
    rng = np.random.default_rng(seed)
    written = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for shape in SHAPES:
            folder = os.path.join(dst, split, shape)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                draw_shape(shape, rng).save(os.path.join(folder, f"{i:04d}.png"))
                written += 1
    return written


if __name__ == "__main__":
    args = sys.argv[1:]
    n = write_shapes(args[0], *[int(a) for a in args[1:4]])
    print(f"wrote {n} images under {args[0]}")
