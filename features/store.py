"""The HDF5 feature file: its constants, its checksums, and a validating reader.

The format is specified in ``docs/FORMAT.md``; ``SCHEMA`` and ``SCHEMA_VERSION`` below
are the values that document describes. Files are written by :mod:`features.writer`.
Every read goes through :class:`FeatureFile`, which refuses a file that breaks the
format and turns HDF5 errors and checksum mismatches into one-line
``damaged feature file`` errors.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterator

import h5py
import numpy as np

from features.identity import IDENTITY_FIELDS, FeatureIdentity

SCHEMA = "tlcache.features"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 files carry no checksums
PARTIAL_SUFFIX = ".partial"

# Root attributes besides the identity's that a resume or a "nothing to do" rerun must match.
EXTRACTION_ATTRS = ("splits", "data_root", "config")
# Images per forward pass the file was started with: recorded, but not compared (rows differ only by rounding).
BATCH_SIZE_ATTR = "batch_size"
# Root attributes every reader requires (besides schema, schema_version, complete).
REQUIRED_ATTRS = IDENTITY_FIELDS + EXTRACTION_ATTRS + ("versions", "created")
ROW_DATASETS = ("features", "labels", "paths", "image_index", "view")
ROWS_PER_CHUNK = 256


class FeatureFileError(Exception):
    """A feature file that cannot be used; ``str(exc)`` is a one-line reason."""


class ConfigMismatch(FeatureFileError):
    """An existing file was made with another configuration."""


class DamagedFile(FeatureFileError):
    """A file whose HDF5 structure or checksums are broken."""


# h5py reports a damaged file through any of these, depending on where the damage lies.
_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Turn any HDF5 read error inside the block into a one-line :class:`DamagedFile`."""
    try:
        yield
    except FeatureFileError:
        raise
    except _H5_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedFile(f"damaged feature file: {path}: {reason}") from None


def file_attrs(identity: FeatureIdentity, splits: list[str], data_root: str, config: dict, versions: dict,
               created: str | None = None) -> dict:
    """Every required root attribute of a feature file (the writer adds schema, checksums and ``complete``).

    Parameters
    ----------
    identity : FeatureIdentity
    splits : list of str
        Split names, in the order they are written.
    data_root : str
        Folder the rows' paths are relative to.
    config : dict
        Extraction options that change the rows (views, seed, ...).
    versions : dict
        Library versions that made the file.
    created : str, optional
        ISO 8601 time; now when omitted.
    """
    created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {**identity.to_attrs(), "splits": json.dumps(list(splits)), "data_root": data_root,
            "config": json.dumps(config, sort_keys=True), "versions": json.dumps(versions, sort_keys=True),
            "created": created}


def attrs_checksum(attrs) -> str:
    """SHA-256 of the root attributes a reader relies on (schema, version and ``REQUIRED_ATTRS``)."""
    keys = ("schema", "schema_version") + REQUIRED_ATTRS
    text = json.dumps({k: str(attrs[k]) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class SplitChecksum:
    """SHA-256 over every column of a split, in row order, fed batch by batch.

    Columns are hashed separately (features in their stored type, little-endian) and
    then combined, so the writer can feed them as batches arrive and the reader in
    chunks of any size.
    """

    def __init__(self, dtype: str) -> None:
        self._feature_dtype = np.dtype(dtype).newbyteorder("<")
        self._h = {name: hashlib.sha256() for name in ROW_DATASETS + ("skipped",)}

    def update_rows(self, features: np.ndarray, labels: np.ndarray, paths, image_index: np.ndarray,
                    view: np.ndarray) -> None:
        for name, values, dtype in (("features", features, self._feature_dtype), ("labels", labels, "<i8"),
                                    ("image_index", image_index, "<i8"), ("view", view, "<i2")):
            self._h[name].update(memoryview(np.ascontiguousarray(values, dtype=dtype)).cast("B"))
        self._h["paths"].update("".join(f"{p}\0" for p in paths).encode())

    def update_skipped(self, skipped: list[tuple[str, str]]) -> None:
        self._h["skipped"].update("".join(f"{p}\0{r}\0" for p, r in skipped).encode())

    def hexdigest(self) -> str:
        return hashlib.sha256("".join(f"{k}:{h.hexdigest()}\n" for k, h in self._h.items()).encode()).hexdigest()


def _skipped(group: h5py.Group) -> list[tuple[str, str]]:
    """The ``(path, reason)`` pairs recorded in a split group."""
    return list(zip(group["skipped_paths"].asstr()[...], group["skipped_reasons"].asstr()[...]))


# --------------------------------------------------------------------------- reading


@dataclass
class SplitData:
    """All rows of one split, loaded into memory."""

    features: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    image_index: np.ndarray
    view: np.ndarray
    skipped: list[tuple[str, str]]

    def clean(self) -> "SplitData":
        """Only the centre-crop rows (``view == 0``), one per image."""
        keep = self.view == 0
        return SplitData(self.features[keep], self.labels[keep], self.paths[keep], self.image_index[keep],
                         self.view[keep], self.skipped)


class FeatureFile:
    """A validated, complete feature file opened for reading.

    Opening checks the structure and the root attributes' checksum; :meth:`read_split`
    checks the split's row checksum; :meth:`verify` checks every split.

    Parameters
    ----------
    path : str
        File to open.
    allow_incomplete : bool
        Open a partial file too (for inspection and tests only).

    Raises
    ------
    FeatureFileError
        Missing, foreign, incomplete, or of an unknown schema version.
    DamagedFile
        Unreadable HDF5, broken structure, or a checksum that does not match.
    """

    def __init__(self, path: str, allow_incomplete: bool = False) -> None:
        self.path = path
        if not os.path.exists(path):
            hint = " (a partial file exists: rerun the extraction to finish it)" if os.path.exists(path + PARTIAL_SUFFIX) else ""
            raise FeatureFileError(f"{path}: no such file{hint}")
        if os.path.isdir(path):
            raise FeatureFileError(f"{path} is a folder, not a feature file")
        try:
            self._h5 = h5py.File(path, "r")
        except OSError as exc:
            if not os.access(path, os.R_OK):
                raise FeatureFileError(f"{path}: permission denied") from None
            reason = str(exc).split("(")[0].strip() or "not a readable HDF5 file"
            raise DamagedFile(f"damaged feature file: {path}: not a readable HDF5 file ({reason})") from None
        try:
            with _reading(path):
                self._validate(allow_incomplete)
        except FeatureFileError:
            self._h5.close()
            raise

    def _validate(self, allow_incomplete: bool) -> None:
        a = self._h5.attrs
        if a.get("schema") != SCHEMA:
            raise FeatureFileError(f"{self.path}: not a feature file (schema {a.get('schema')!r}, expected {SCHEMA!r})")
        version = int(a.get("schema_version", -1))
        if version not in READABLE_VERSIONS:
            raise FeatureFileError(f"{self.path}: schema version {version} is not supported "
                                   f"(this reader knows {', '.join(map(str, READABLE_VERSIONS))})")
        if not allow_incomplete and not bool(a.get("complete", False)):
            raise FeatureFileError(f"{self.path}: incomplete feature file (extraction was interrupted); rerun the extraction to finish it")
        missing = [k for k in REQUIRED_ATTRS if k not in a]
        if missing:
            raise DamagedFile(f"damaged feature file: {self.path}: missing root attributes {', '.join(missing)}")
        if version >= 2 and a.get("attrs_sha256") != attrs_checksum(a):
            raise DamagedFile(f"damaged feature file: {self.path}: root attributes do not match their checksum")
        FeatureIdentity.from_attrs(a)  # a malformed identity is a damaged file (see _reading)
        dim = int(a["feature_dim"])
        for split in self.splits:
            if split not in self._h5:
                raise DamagedFile(f"damaged feature file: {self.path}: split group /{split} is missing")
            g = self._h5[split]
            absent = [d for d in ROW_DATASETS + ("skipped_paths", "skipped_reasons") if d not in g]
            if absent:
                raise DamagedFile(f"damaged feature file: {self.path}: /{split} lacks {', '.join(absent)}")
            n = g["features"].shape[0]
            if g["features"].ndim != 2 or g["features"].shape[1] != dim:
                raise DamagedFile(f"damaged feature file: {self.path}: /{split}/features has shape "
                                  f"{g['features'].shape}, expected (N, {dim})")
            if any(g[d].shape != (n,) for d in ROW_DATASETS[1:]) or (bool(a.get("complete")) and n != int(g.attrs["rows"])):
                raise DamagedFile(f"damaged feature file: {self.path}: /{split} datasets have different row counts")

    # metadata -------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self._h5.attrs)

    @property
    def schema_version(self) -> int:
        return int(self._h5.attrs["schema_version"])

    @property
    def backbone(self) -> str:
        return str(self._h5.attrs["backbone"])

    @property
    def weights(self) -> str:
        return str(self._h5.attrs["weights"])

    @property
    def feature_dim(self) -> int:
        return int(self._h5.attrs["feature_dim"])

    @property
    def classes(self) -> list[str]:
        return json.loads(self._h5.attrs["classes"])

    @property
    def splits(self) -> list[str]:
        return json.loads(self._h5.attrs["splits"])

    @property
    def config(self) -> dict:
        return json.loads(self._h5.attrs["config"])

    @property
    def data_root(self) -> str:
        return str(self._h5.attrs["data_root"])

    def identity(self) -> FeatureIdentity:
        """What a head trained on this file must match: backbone, weights, layer, preprocessing, classes."""
        with _reading(self.path):
            return FeatureIdentity.from_attrs(self._h5.attrs)

    # rows -----------------------------------------------------------------
    def n_rows(self, split: str) -> int:
        return int(self._h5[split]["features"].shape[0])

    def _group(self, split: str) -> h5py.Group:
        if split not in self.splits:
            raise FeatureFileError(f"{self.path}: no split {split!r} (has {', '.join(self.splits)})")
        return self._h5[split]

    def _check(self, split: str, checksum: SplitChecksum) -> None:
        expected = self._h5[split].attrs.get("rows_sha256")
        if self.schema_version >= 2 and checksum.hexdigest() != expected:
            raise DamagedFile(f"damaged feature file: {self.path}: /{split} rows do not match their checksum")

    def read_split(self, split: str) -> SplitData:
        """Load every row of ``split`` (features as float32), after checking its checksum."""
        with _reading(self.path):
            g = self._group(split)
            features = g["features"][...]
            data = SplitData(features=features, labels=g["labels"][...], paths=g["paths"].asstr()[...],
                             image_index=g["image_index"][...], view=g["view"][...], skipped=_skipped(g))
            checksum = SplitChecksum(str(features.dtype))
            checksum.update_rows(data.features, data.labels, data.paths, data.image_index, data.view)
            checksum.update_skipped(data.skipped)
            self._check(split, checksum)
        data.features = features.astype(np.float32, copy=False)
        return data

    def verify(self, chunk_rows: int = 4096) -> dict[str, int]:
        """Check every split's checksum, reading ``chunk_rows`` rows at a time (bounded memory).

        Returns
        -------
        dict of str to int
            Rows checked per split.

        Raises
        ------
        DamagedFile
            A split's rows do not match its checksum, or cannot be read.
        """
        checked = {}
        with _reading(self.path):
            for split in self.splits:
                g = self._group(split)
                checksum = SplitChecksum(str(g["features"].dtype))
                n = g["features"].shape[0]
                for a in range(0, n, chunk_rows):
                    rows = slice(a, min(a + chunk_rows, n))
                    checksum.update_rows(g["features"][rows], g["labels"][rows], g["paths"].asstr()[rows],
                                         g["image_index"][rows], g["view"][rows])
                checksum.update_skipped(_skipped(g))
                self._check(split, checksum)
                checked[split] = n
        return checked

    def read_features_into(self, split: str, start: int, stop: int, out: np.ndarray) -> None:
        """Read feature rows ``start:stop`` straight into ``out`` (float32, ``stop - start`` rows): no temporary copy.

        Chunked reads skip the checksum; call :meth:`verify` once before a pass over the file.
        """
        with _reading(self.path):
            self._group(split)["features"].read_direct(out, np.s_[start:stop])

    def read_features_spread(self, split: str, most: int) -> np.ndarray:
        """Feature rows of up to ``most`` images spread evenly over the split (every k-th image), as float32.

        Only each image's centre crop (view 0) is read, never its augmented views. For a
        statistic over a large split without reading all of it; no checksum (as chunked reads).
        """
        with _reading(self.path):
            g = self._group(split)
            images = np.flatnonzero(g["view"][:] == 0)
            step = max(1, -(-len(images) // most))
            return np.asarray(g["features"][images[::step]], dtype=np.float32)

    def read_columns(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``labels``, ``image_index`` and ``view`` of rows ``start:stop``."""
        with _reading(self.path):
            g = self._group(split)
            return g["labels"][start:stop], g["image_index"][start:stop], g["view"][start:stop]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
