"""Make a small-source copy of an ImageFolder: every image reduced to a given shorter side.

``python benchmarks/small_source.py SRC DST SIDE`` decodes each image of SRC's ``train`` and
``val`` splits as extraction does (``features.images.load_rgb``: upright, transparency on
white), resizes it (bicubic) so that its shorter side is SIDE pixels and writes it to DST
as ``NAME.EXT.png``. Fine-tuning on such a copy of hymenoptera separates the effect of the
stored image size from that of the content (photos ImageNet knows, against the digits
demo's 8x8 drawings stored at 64 px).
"""

from __future__ import annotations

import os
import sys

from PIL import Image

from features.images import UnreadableImage, load_rgb


def small_copy(src: str, dst: str, side: int) -> int:
    """Write the reduced copy; returns the number of images written (unreadable files are left out)."""
    written = 0
    for split in ("train", "val"):
        for cls in sorted(os.listdir(os.path.join(src, split))):
            os.makedirs(os.path.join(dst, split, cls), exist_ok=True)
            for name in sorted(os.listdir(os.path.join(src, split, cls))):
                try:
                    img = load_rgb(os.path.join(src, split, cls, name))
                except UnreadableImage as exc:
                    print(f"left out {split}/{cls}/{name}: {exc}", file=sys.stderr)
                    continue
                scale = side / min(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img.resize(size, Image.Resampling.BICUBIC).save(os.path.join(dst, split, cls, f"{name}.png"))
                written += 1
    return written


if __name__ == "__main__":
    print(f"wrote {small_copy(sys.argv[1], sys.argv[2], int(sys.argv[3]))} images to {sys.argv[2]}")
