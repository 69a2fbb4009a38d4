"""Near-duplicate groups from feature cosine and a perceptual hash of the pixels.

Neither signal is enough alone. Feature cosine is high for copies (resized, re-encoded,
mirrored, cropped) but also for different photos of one scene; the pixel hash is
exact about copies but blind to crops and unavailable when the files are gone. The
rule is a pair of images whose features are close (cosine >= ``COSINE``) **and** whose
hashes, allowing a mirror, differ in at most ``HAMMING`` of 64 bits. Where an image
could not be hashed, only a stricter cosine (``COSINE_ALONE``) counts. The README
reports the measurement behind these values (recall and false pairs of each rule on
planted copies).
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

COSINE = 0.80
HAMMING = 12
COSINE_ALONE = 0.95


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def candidate_pairs(unit_features: np.ndarray, min_cosine: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with cosine similarity at least ``min_cosine``: ``(i, j, cosine)``."""
    nn = NearestNeighbors(radius=1.0 - min_cosine, metric="cosine").fit(unit_features)
    distances, neighbours = nn.radius_neighbors(unit_features)
    i = np.repeat(np.arange(len(unit_features)), [len(n) for n in neighbours])
    j = np.concatenate(neighbours) if len(neighbours) else np.zeros(0, dtype=np.int64)
    d = np.concatenate(distances) if len(distances) else np.zeros(0)
    keep = i < j
    return i[keep], j[keep].astype(np.int64), 1.0 - d[keep]


def hash_distance(bits: np.ndarray, mirrored: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Hamming distance between the hashes of ``i`` and ``j``, the smaller of as-is and mirrored."""
    direct = (bits[i] != bits[j]).sum(axis=1)
    flipped = (bits[i] != mirrored[j]).sum(axis=1)
    return np.minimum(direct, flipped)


def duplicate_pairs(unit_features: np.ndarray, bits: np.ndarray, mirrored: np.ndarray,
                    hashed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs that the combined rule calls copies: ``(i, j, cosine, hamming)`` (hamming -1 when unhashed)."""
    i, j, cos = candidate_pairs(unit_features, COSINE)
    both = hashed[i] & hashed[j]
    ham = np.where(both, hash_distance(bits, mirrored, i, j), -1)
    keep = np.where(both, ham <= HAMMING, cos >= COSINE_ALONE) & (cos >= COSINE)
    return i[keep], j[keep], cos[keep], ham[keep]


def groups_from_pairs(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph: a group id per item, ``-1`` for items in no pair.

    Groups are numbered from 0 in order of their first member.
    """
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(a) for a in range(n)])
    in_pair = np.zeros(n, dtype=bool)
    in_pair[i] = in_pair[j] = True
    group = np.full(n, -1, dtype=np.int64)
    ids: dict[int, int] = {}
    for a in range(n):
        if in_pair[a]:
            group[a] = ids.setdefault(int(roots[a]), len(ids))
    return group
