"""Decoding images for the audit: upright small copies for hashing and for the report's thumbnails."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.phash import HASH_BITS, dct_hashes

THUMB_SIDE = 160  # longest side of a report thumbnail, in pixels


class ThumbnailError(Exception):
    """An image that could not be decoded into a thumbnail; ``str(exc)`` is the reason."""


def upright_thumbnail(path: str, side: int = THUMB_SIDE) -> Image.Image:
    """Decode ``path`` with its EXIF orientation applied, as RGB, longest side at most ``side``.

    JPEGs are decoded at a reduced scale in the DCT domain (``Image.draft``) when that
    still leaves at least ``2 * side`` pixels, which makes large photos cheap.

    Raises
    ------
    ThumbnailError
        Missing, unreadable or undecodable file, with a short reason.
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", (2 * side, 2 * side))
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("RGB")
            img.thumbnail((side, side), Image.LANCZOS)
            return img
    except FileNotFoundError:
        raise ThumbnailError("file not found") from None
    except UnidentifiedImageError:
        raise ThumbnailError("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ThumbnailError(f"cannot decode: {exc}") from None


def hash_images(paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Perceptual hashes of every file, computed on its upright thumbnail.

    Returns
    -------
    bits, mirrored : ndarray of bool, shape (n, HASH_BITS)
        Hash bits of each image and of its mirror; rows of files that could not be
        decoded are all False (and must be ignored: see ``errors``).
    errors : list of str or None
        Per file, why it could not be decoded, or None.
    """
    bits = np.zeros((len(paths), HASH_BITS), dtype=bool)
    mirrored = np.zeros_like(bits)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            bits[i], mirrored[i] = dct_hashes(upright_thumbnail(path))
            errors.append(None)
        except ThumbnailError as exc:
            errors.append(str(exc))
    return bits, mirrored, errors


def write_thumbnail(path: str, out_path: str, side: int = THUMB_SIDE) -> str | None:
    """Write ``path``'s thumbnail as a JPEG at ``out_path``; returns None or why it could not be made."""
    try:
        img = upright_thumbnail(path, side)
    except ThumbnailError as exc:
        return str(exc)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    try:
        img.save(out_path, "JPEG", quality=85)
    except OSError as exc:
        return f"cannot write thumbnail: {exc}"
    return None
