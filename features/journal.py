"""The partial file: an append-only journal of committed batches, safe to cut at any byte.

An extraction in progress does not write HDF5. HDF5 rewrites its own metadata in place,
so a process killed in the middle of a write, or a write that fails on a full disk,
can leave a file that no longer opens. The journal only ever appends whole records:

    file   := MAGIC record*
    record := HEADER(tag, header_len, payload_len, crc32) header_json payload

A record counts only when all of its bytes are present and its CRC matches; a torn
or damaged tail is cut off when the journal is reopened, so the file always describes
exactly the batches committed before the fault. The first record (``start``) holds the
file's attributes; ``rows`` records hold one batch; ``split_done`` closes a split.
:func:`features.writer.FeatureWriter.finalize` turns a finished journal into the HDF5
feature file.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

MAGIC = b"TLCACHE-JOURNAL1\n"
_HEAD = struct.Struct("<4sIQI")  # tag, header length, payload length, crc32 of header + payload
_TAG = b"REC1"
_MAX_HEADER = 1 << 30


class JournalDamaged(Exception):
    """The journal's beginning cannot be read: nothing in it can be trusted."""


@dataclass
class RowsRecord:
    """Where one committed batch lies in the journal."""

    split: str
    rows: int
    done_images: int
    paths: list[str]
    skipped: list[tuple[str, str]]
    payload_offset: int


@dataclass
class JournalState:
    """What a scan of the journal found.

    Attributes
    ----------
    start : dict
        The ``start`` record: ``attrs``, ``split_sizes``, ``feature_dim``, ``dtype``.
    records : dict of str to list of RowsRecord
        Committed batches per split, in order.
    done_splits : set of str
        Splits closed by a ``split_done`` record.
    good_end : int
        Byte offset just past the last intact record.
    torn_bytes : int
        Bytes after ``good_end`` (a torn or damaged tail, cut off when reopened for writing).
    """

    start: dict
    records: dict[str, list[RowsRecord]] = field(default_factory=dict)
    done_splits: set[str] = field(default_factory=set)
    good_end: int = 0
    torn_bytes: int = 0

    def done_images(self, split: str) -> int:
        recs = self.records.get(split)
        return recs[-1].done_images if recs else 0

    def rows(self, split: str) -> int:
        return sum(r.rows for r in self.records.get(split, []))

    def skipped(self, split: str) -> list[tuple[str, str]]:
        return [s for r in self.records.get(split, []) for s in r.skipped]


def row_dtypes(dtype: str) -> tuple[np.dtype, ...]:
    """Column types of a ``rows`` payload: features, labels, image_index, view (all little-endian)."""
    return np.dtype(dtype).newbyteorder("<"), np.dtype("<i8"), np.dtype("<i8"), np.dtype("<i2")


def encode_record(header: dict, payload: bytes = b"") -> bytes:
    """One whole record, ready to append."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(_TAG, len(head), len(payload), zlib.crc32(payload, zlib.crc32(head))) + head + payload


def payload_start(record: bytes) -> int:
    """Offset of a record's payload from the record's first byte."""
    return _HEAD.size + _HEAD.unpack_from(record)[1]


def encode_rows(split: str, features: np.ndarray, labels: np.ndarray, paths: list[str], image_index: np.ndarray,
                view: np.ndarray, skipped: list[tuple[str, str]], done_images: int, dtype: str) -> bytes:
    """A ``rows`` record for one batch."""
    f_t, l_t, i_t, v_t = row_dtypes(dtype)
    payload = b"".join(np.ascontiguousarray(a, dtype=t).tobytes()
                       for a, t in ((features, f_t), (labels, l_t), (image_index, i_t), (view, v_t)))
    header = {"kind": "rows", "split": split, "rows": len(labels), "done_images": int(done_images),
              "paths": list(paths), "skipped": [list(s) for s in skipped]}
    return encode_record(header, payload)


def scan(path: str) -> JournalState:
    """Read every intact record of the journal at ``path``.

    Raises
    ------
    JournalDamaged
        The magic line or the ``start`` record is missing or damaged.
    OSError
        The file cannot be read.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise JournalDamaged("not a journal (bad magic)")
        state: JournalState | None = None
        offset = len(MAGIC)
        for header, payload_offset, end in _records(fh, offset, size):
            if state is None:
                if header.get("kind") != "start":
                    raise JournalDamaged("the first record is not a start record")
                state = JournalState(start=header)
            elif header["kind"] == "rows":
                state.records.setdefault(header["split"], []).append(RowsRecord(
                    header["split"], header["rows"], header["done_images"], header["paths"],
                    [tuple(s) for s in header["skipped"]], payload_offset))
            elif header["kind"] == "split_done":
                state.done_splits.add(header["split"])
            offset = end
    if state is None:
        raise JournalDamaged("the start record is missing or damaged")
    state.good_end, state.torn_bytes = offset, size - offset
    return state


def _records(fh, offset: int, size: int) -> Iterator[tuple[dict, int, int]]:
    """``(header, payload offset, end offset)`` of each intact record, stopping at the first bad one."""
    while offset + _HEAD.size <= size:
        fh.seek(offset)
        tag, head_len, payload_len, crc = _HEAD.unpack(fh.read(_HEAD.size))
        end = offset + _HEAD.size + head_len + payload_len
        if tag != _TAG or head_len > _MAX_HEADER or end > size:
            return
        head = fh.read(head_len)
        payload_crc = zlib.crc32(head)
        remaining = payload_len
        while remaining:  # CRC the payload in pieces: a batch can be large
            piece = fh.read(min(remaining, 1 << 22))
            payload_crc = zlib.crc32(piece, payload_crc)
            remaining -= len(piece)
        if payload_crc != crc:
            return
        try:
            header = json.loads(head)
        except ValueError:
            return
        yield header, offset + _HEAD.size + head_len, end
        offset = end


def read_rows(fh, record: RowsRecord, feature_dim: int, dtype: str) -> tuple[np.ndarray, ...]:
    """``features, labels, image_index, view`` of one committed batch."""
    f_t, l_t, i_t, v_t = row_dtypes(dtype)
    n = record.rows
    fh.seek(record.payload_offset)
    features = np.frombuffer(fh.read(n * feature_dim * f_t.itemsize), dtype=f_t).reshape(n, feature_dim)
    labels = np.frombuffer(fh.read(n * 8), dtype=l_t)
    image_index = np.frombuffer(fh.read(n * 8), dtype=i_t)
    view = np.frombuffer(fh.read(n * 2), dtype=v_t)
    return features, labels, image_index, view


def committed_images(path: str, split: str) -> int:
    """Images of ``split`` committed to the journal at ``path`` (0 if it is absent or not yet started).

    Safe to call while another process appends: a record still being written is ignored.
    """
    try:
        return scan(path).done_images(split)
    except (OSError, JournalDamaged):
        return 0
