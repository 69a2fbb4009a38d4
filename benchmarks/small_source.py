"""Make a small-source copy of an ImageFolder: every image reduced to a given shorter side.

``python benchmarks/small_source.py SRC DST SIDE`` writes each image of SRC's ``train`` and
``val`` splits to DST as PNG, turned upright by its EXIF tag and resized (bicubic) so that
its shorter side is SIDE pixels. Fine-tuning on such a copy of hymenoptera separates the
effect of the source resolution from that of the content (photos ImageNet knows, against
the digits demo's 8x8 drawings).
"""

from __future__ import annotations

import os
import sys

from PIL import Image, ImageOps


def small_copy(src: str, dst: str, side: int) -> int:
    """Write the reduced copy; returns the number of images written (unreadable files are left out)."""
    written = 0
    for split in ("train", "val"):
        for cls in sorted(os.listdir(os.path.join(src, split))):
            os.makedirs(os.path.join(dst, split, cls), exist_ok=True)
            for name in sorted(os.listdir(os.path.join(src, split, cls))):
                try:
                    with Image.open(os.path.join(src, split, cls, name)) as img:
                        img = ImageOps.exif_transpose(img).convert("RGB")
                except OSError as exc:
                    print(f"left out {split}/{cls}/{name}: {exc}", file=sys.stderr)
                    continue
                scale = side / min(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                stem = os.path.splitext(name)[0]
                img.resize(size, Image.Resampling.BICUBIC).save(os.path.join(dst, split, cls, f"{stem}.png"))
                written += 1
    return written


if __name__ == "__main__":
    print(f"wrote {small_copy(sys.argv[1], sys.argv[2], int(sys.argv[3]))} images to {sys.argv[2]}")
