"""Robust image decoding: every file either becomes an RGB image or a recorded reason."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Truncated files are reported, not silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Images above this many pixels are refused as possible decompression bombs (PIL's own default).
MAX_PIXELS = 89_478_485

# Opening sets PIL's global pixel limit and warning filter for a moment: one thread at a
# time (decoding, the costly part, runs outside the lock).
_OPEN_LOCK = threading.Lock()

# EXIF tag 0x0112: how the stored pixels must be turned to show the picture upright (1 = as stored).
EXIF_ORIENTATION = 0x0112


class UnreadableImage(Exception):
    """A file that cannot be turned into an RGB image; ``str(exc)`` is the reason."""


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit single-channel image to 8 bits by its nominal range, then to RGB."""
    arr = np.asarray(img)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    if img.mode == "F":
        top = max(float(arr.max(initial=0.0)), 1.0)
    scaled = np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        return _sixteen_bit_to_rgb(img)
    return img.convert("RGB")


def _reduce_while_decoding(img: Image.Image, min_side: int) -> None:
    """Ask the JPEG decoder for a 1/2, 1/4 or 1/8 scale image whose shorter side stays >= ``min_side``.

    Only JPEGs whose shorter side is at least twice ``min_side`` are touched; PIL's
    ``draft`` picks the largest DCT scale that keeps both sides at or above the request.
    """
    if img.format != "JPEG" or min(img.size) < 2 * min_side:
        return
    img.draft("RGB", (min_side, min_side))


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (as ``ImageOps.exif_transpose``); untagged images are returned as they are."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block does not make the pixels unusable
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    return ImageOps.exif_transpose(img)


def _open_checked(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` (the header only) with images above ``MAX_PIXELS`` refused as decompression bombs."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit


def load_rgb(path: str | os.PathLike, exif_transpose: bool = True, min_side: int | None = None) -> Image.Image:
    """Decode an image file fully and return it as RGB, upright.

    Parameters
    ----------
    path : str or PathLike
        File to read. The format is detected from the content, not the extension.
    exif_transpose : bool
        Turn the image as its EXIF Orientation tag says (phones store portrait photos
        sideways with a tag), like ``PIL.ImageOps.exif_transpose``.
    min_side : int, optional
        The shorter side the caller will resize to. A JPEG whose shorter side is at least
        twice this is decoded at reduced scale in the DCT domain (1/2, 1/4 or 1/8), never
        below ``min_side``, so a 12 MP photo is never decoded in full. ``None`` decodes
        every pixel.

    Returns
    -------
    PIL.Image.Image
        A fully loaded RGB image (for animated files, the first frame).

    Raises
    ------
    UnreadableImage
        With a short human-readable reason: missing or empty file, unknown format,
        truncated data, decompression bomb, or a decoder error.
    """
    try:
        if not os.path.exists(path):
            raise UnreadableImage("file not found")
        if os.path.getsize(path) == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with _open_checked(path) as img:
            if min_side:
                _reduce_while_decoding(img, min_side)
            img.load()
            # Some formats (TIFF tiles, ICO and GIF frames) only learn their size while loading:
            # checked here as well, without PIL's warning filter, which other threads may hold.
            if img.width * img.height > MAX_PIXELS:
                raise UnreadableImage(f"too many pixels, possible decompression bomb ({img.width}x{img.height})")
            return _to_rgb(_upright(img) if exif_transpose else img)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"too many pixels, possible decompression bomb ({exc})") from None
    except OSError as exc:
        # PIL reports truncation and decoder failures as OSError.
        raise UnreadableImage(f"cannot decode: {exc}") from None
    except (ValueError, SyntaxError, MemoryError) as exc:
        raise UnreadableImage(f"cannot decode: {type(exc).__name__}: {exc}") from None
