"""A perceptual hash of decoded pixels: 64 bits from the low frequencies of a 2-D DCT.

The image is reduced to 32x32 grey levels, transformed with an orthonormal DCT-II, and
the 8x8 lowest-frequency coefficients are compared with their median: one bit each.
Resizing and JPEG re-encoding barely move those coefficients, so copies keep almost
the same bits (the same recipe as ``imagehash.phash``, written here in numpy).

A horizontal mirror multiplies the coefficient of horizontal frequency ``v`` by
``(-1)**v``, so the hash of the mirrored image comes from the same coefficients at no
cost (:func:`dct_hashes`); comparing one image's hash with both hashes of another finds
mirrored copies too.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SAMPLE = 32     # side of the grey image that is transformed
HASH_SIDE = 8   # side of the low-frequency block that gives the bits
HASH_BITS = HASH_SIDE * HASH_SIDE


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (``D @ x`` transforms a length-``n`` signal)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_D = dct_matrix(SAMPLE)
_MIRROR = (-1.0) ** np.arange(HASH_SIDE)[None, :]  # sign of each horizontal frequency under a left-right flip


def low_frequencies(img: Image.Image) -> np.ndarray:
    """The ``HASH_SIDE x HASH_SIDE`` lowest DCT coefficients of ``img`` in grey levels."""
    grey = np.asarray(img.convert("L").resize((SAMPLE, SAMPLE), Image.LANCZOS), dtype=np.float64)
    return (_D @ grey @ _D.T)[:HASH_SIDE, :HASH_SIDE]


def dct_hashes(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Bits of ``img`` and of its left-right mirror, each a bool array of ``HASH_BITS``.

    Parameters
    ----------
    img : PIL.Image.Image
        Decoded image in any mode (orientation already applied by the caller).

    Returns
    -------
    tuple of ndarray
        ``(bits, mirrored_bits)``; the Hamming distance between two images' bits is
        small for copies (resized, re-encoded) and about ``HASH_BITS / 2`` otherwise.
    """
    coeffs = low_frequencies(img)
    mirrored = coeffs * _MIRROR
    return (coeffs > np.median(coeffs)).ravel(), (mirrored > np.median(mirrored)).ravel()
