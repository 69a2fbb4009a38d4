"""The HDF5 feature file: writer with crash-safe resume, and a validating reader.

The format is specified in ``docs/FORMAT.md``; ``SCHEMA`` and ``SCHEMA_VERSION`` below
are the values that document describes. A file is written under ``NAME.partial`` and
renamed to its final name only after every split is finished and ``complete`` is set,
so a file at the requested path is always whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

SCHEMA = "tlcache.features"
SCHEMA_VERSION = 1
PARTIAL_SUFFIX = ".partial"

# Root attributes every reader requires (besides schema, schema_version, complete).
REQUIRED_ATTRS = (
    "backbone", "weights", "weights_source", "feature_layer", "feature_dim", "preprocessing",
    "classes", "splits", "data_root", "config", "versions", "created",
)
# Attributes that must match for a resume or a "nothing to do" rerun.
IDENTITY_ATTRS = ("backbone", "weights", "feature_layer", "feature_dim", "preprocessing", "classes", "splits", "data_root", "config")
ROW_DATASETS = ("features", "labels", "paths", "image_index", "view")
ROWS_PER_CHUNK = 256
_STR = h5py.string_dtype("utf-8")


class FeatureFileError(Exception):
    """A feature file that cannot be used; ``str(exc)`` is a one-line reason."""


class ConfigMismatch(FeatureFileError):
    """An existing file was made with another configuration."""


def _skipped(group: h5py.Group) -> list[tuple[str, str]]:
    """The ``(path, reason)`` pairs recorded in a split group."""
    return list(zip(group["skipped_paths"].asstr()[...], group["skipped_reasons"].asstr()[...]))


def _json_attr(value) -> str:
    return json.dumps(value, sort_keys=True)


# --------------------------------------------------------------------------- writing


class FeatureWriter:
    """Appends rows batch by batch; each :meth:`commit` leaves a resumable file on disk.

    Use :func:`open_writer` to create one.
    """

    def __init__(self, h5: h5py.File, final_path: str) -> None:
        self._h5 = h5
        self.final_path = final_path

    @property
    def partial_path(self) -> str:
        return self.final_path + PARTIAL_SUFFIX

    def done_images(self, split: str) -> int:
        """How many of the split's candidate files are already processed (written or skipped)."""
        return int(self._h5[split].attrs["done_images"])

    def split_complete(self, split: str) -> bool:
        return bool(self._h5[split].attrs["complete"])

    def commit(
        self,
        split: str,
        features: np.ndarray,
        labels: np.ndarray,
        paths: list[str],
        image_index: np.ndarray,
        view: np.ndarray,
        skipped: list[tuple[str, str]],
        done_images: int,
    ) -> None:
        """Append one batch of rows and skipped files, then record progress and flush.

        Progress counters are written after the data, so a crash at any point leaves
        counters that describe only rows that are fully on disk; :func:`open_writer`
        truncates anything beyond them.
        """
        group = self._h5[split]
        start = int(group.attrs["rows"])
        n = len(labels)
        if n:
            columns = {"features": features, "labels": labels, "paths": np.asarray(paths, dtype=object),
                       "image_index": image_index, "view": view}
            for name, values in columns.items():
                ds = group[name]
                ds.resize(start + n, axis=0)
                ds[start:start + n] = values
        n_skipped = int(group.attrs["skipped"])
        if skipped:
            for name, values in (("skipped_paths", [p for p, _ in skipped]), ("skipped_reasons", [r for _, r in skipped])):
                ds = group[name]
                ds.resize(n_skipped + len(skipped), axis=0)
                ds[n_skipped:] = np.asarray(values, dtype=object)
        group.attrs["rows"] = start + n
        group.attrs["skipped"] = n_skipped + len(skipped)
        group.attrs["done_images"] = done_images
        self._h5.flush()

    def counts(self, split: str) -> tuple[int, int, list[tuple[str, str]]]:
        """Candidate files, rows written, and the skipped ``(path, reason)`` pairs of a split."""
        g = self._h5[split]
        return int(g.attrs["n_images"]), int(g.attrs["rows"]), _skipped(g)

    def discard(self) -> None:
        """Close and delete the partial file (nothing in it is worth keeping)."""
        self.close()
        os.remove(self.partial_path)

    def finish_split(self, split: str) -> None:
        """Mark a split as finished."""
        group = self._h5[split]
        if int(group.attrs["done_images"]) != int(group.attrs["n_images"]):
            raise FeatureFileError(f"split {split!r} is not finished")
        group.attrs["complete"] = True
        self._h5.flush()

    def finalize(self) -> str:
        """Set ``complete``, close, and move the file to its final name. Returns that path."""
        for split in json.loads(self._h5.attrs["splits"]):
            if not self.split_complete(split):
                raise FeatureFileError(f"split {split!r} is not finished")
        self._h5.attrs["complete"] = True
        self._h5.flush()
        self._h5.close()
        os.replace(self.partial_path, self.final_path)
        return self.final_path

    def close(self) -> None:
        """Close without finalising (the partial file stays for a later resume)."""
        if self._h5.id.valid:
            self._h5.close()


def _create(path: str, attrs: dict, split_sizes: dict[str, int], feature_dim: int, dtype: str) -> h5py.File:
    h5 = h5py.File(path, "w")
    h5.attrs["schema"] = SCHEMA
    h5.attrs["schema_version"] = SCHEMA_VERSION
    h5.attrs["complete"] = False
    for key, value in attrs.items():
        h5.attrs[key] = value
    for split, n_images in split_sizes.items():
        g = h5.create_group(split)
        g.attrs.update({"n_images": n_images, "done_images": 0, "rows": 0, "skipped": 0, "complete": False})
        g.create_dataset("features", shape=(0, feature_dim), maxshape=(None, feature_dim), dtype=dtype,
                         chunks=(ROWS_PER_CHUNK, feature_dim))
        g.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,))
        g.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        g.create_dataset("image_index", shape=(0,), maxshape=(None,), dtype="int64", chunks=(4096,))
        g.create_dataset("view", shape=(0,), maxshape=(None,), dtype="int16", chunks=(4096,))
        g.create_dataset("skipped_paths", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
        g.create_dataset("skipped_reasons", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
    h5.flush()
    return h5


def _mismatches(h5_attrs, attrs: dict) -> list[str]:
    return [k for k in IDENTITY_ATTRS if k in attrs and str(h5_attrs.get(k)) != str(attrs[k])]


def _truncate_to_committed(h5: h5py.File) -> None:
    """Drop rows written after the last commit (a crash between data and counters)."""
    for split in json.loads(h5.attrs["splits"]):
        g = h5[split]
        for name in ROW_DATASETS:
            if g[name].shape[0] != int(g.attrs["rows"]):
                g[name].resize(int(g.attrs["rows"]), axis=0)
        for name in ("skipped_paths", "skipped_reasons"):
            if g[name].shape[0] != int(g.attrs["skipped"]):
                g[name].resize(int(g.attrs["skipped"]), axis=0)


@dataclass
class WriterState:
    """Outcome of :func:`open_writer`.

    Attributes
    ----------
    status : str
        ``"new"``, ``"resumed"`` or ``"up_to_date"`` (a complete file with the same
        configuration exists; ``writer`` is then ``None``).
    writer : FeatureWriter or None
    note : str
        One line for the user (why a partial file was restarted, for example).
    """

    status: str
    writer: FeatureWriter | None
    note: str = ""


def final_file_up_to_date(path: str, attrs: dict, overwrite: bool) -> bool:
    """Whether a complete file made with the same configuration already exists at ``path``.

    Raises
    ------
    ConfigMismatch
        A file exists there that differs (or is unreadable) and ``overwrite`` is false.
    """
    if not os.path.exists(path) or overwrite:
        return False
    try:
        with h5py.File(path, "r") as h5:
            bad = _mismatches(h5.attrs, attrs)
            if not bad and h5.attrs.get("complete"):
                return True
    except OSError:
        bad = ["not a readable HDF5 file"]
    raise ConfigMismatch(f"{path} exists and differs ({', '.join(bad or ['incomplete'])}); pass --overwrite to replace it")


def open_writer(path: str, attrs: dict, split_sizes: dict[str, int], feature_dim: int, dtype: str,
                overwrite: bool) -> WriterState:
    """Create a feature file, resume a partial one, or report that it is already done.

    Parameters
    ----------
    path : str
        Final path of the file; work happens in ``path + ".partial"``.
    attrs : dict
        Root attributes (all of ``REQUIRED_ATTRS``), already JSON-encoded where needed.
    split_sizes : dict of str to int
        Number of candidate files per split, in split order.
    feature_dim : int
    dtype : str
        ``"float32"`` or ``"float16"``.
    overwrite : bool
        Replace an existing file made with another configuration instead of refusing.

    Raises
    ------
    ConfigMismatch
        An existing (partial or complete) file was made with another configuration and
        ``overwrite`` is false.
    FeatureFileError
        The output folder is missing or not writable.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FeatureFileError(f"output folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise FeatureFileError(f"output folder {folder!r} is not writable (permission denied)")
    if os.path.isdir(path):
        raise FeatureFileError(f"output path {path!r} is a folder")
    partial = path + PARTIAL_SUFFIX

    if final_file_up_to_date(path, attrs, overwrite):
        return WriterState("up_to_date", None, f"{path} is complete and was made with the same configuration")

    note = ""
    if os.path.exists(partial) and not overwrite:
        try:
            h5 = h5py.File(partial, "r+")
        except OSError:
            h5, note = None, f"{partial} was unreadable after the interruption; starting over"
        if h5 is not None:
            bad = _mismatches(h5.attrs, attrs)
            if bad:
                h5.close()
                raise ConfigMismatch(f"{partial} was started with another configuration ({', '.join(bad)}); "
                                     "pass --overwrite to start over")
            _truncate_to_committed(h5)
            h5.flush()
            return WriterState("resumed", FeatureWriter(h5, path))
    try:
        h5 = _create(partial, attrs, split_sizes, feature_dim, dtype)
    except OSError as exc:
        raise FeatureFileError(f"cannot create {partial}: {exc.strerror or exc}") from None
    if os.path.exists(path):
        os.remove(path)  # only reached with overwrite: the old file is no longer valid
    return WriterState("new", FeatureWriter(h5, path), note)


MERGE_ROWS = 4096  # rows copied per step when merging shards: bounded memory for any file size


def merge_shards(writer: FeatureWriter, shard_paths: list[str], image_offsets: dict[str, list[int]]) -> None:
    """Stream complete shard files, in the given order, into an empty ``writer``.

    Parameters
    ----------
    writer : FeatureWriter
        A new file with the final attributes and the full per-split image counts.
    shard_paths : list of str
        Complete shard files; shard ``k`` holds images ``image_offsets[split][k]``
        onwards of every split, with global ``image_index`` values already.
    image_offsets : dict of str to list of int
        Per split, the first image index of each shard.

    Rows are copied ``MERGE_ROWS`` at a time, so memory does not grow with the file.
    The writer is left unfinalised: the caller decides whether the result is usable.
    """
    for k, shard_path in enumerate(shard_paths):
        with FeatureFile(shard_path) as shard:
            for split in shard.splits:
                g = shard._h5[split]
                n, done_before = shard.n_rows(split), image_offsets[split][k]
                skipped = _skipped(g)
                last_start = max(n - 1, 0) // MERGE_ROWS * MERGE_ROWS
                for start in range(0, max(n, 1), MERGE_ROWS):
                    rows = slice(start, min(start + MERGE_ROWS, n))
                    last = start == last_start
                    writer.commit(
                        split,
                        features=g["features"][rows],
                        labels=g["labels"][rows],
                        paths=list(g["paths"].asstr()[rows]),
                        image_index=g["image_index"][rows],
                        view=g["view"][rows],
                        skipped=skipped if last else [],
                        done_images=done_before + (int(g.attrs["n_images"]) if last else 0),
                    )


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

    Parameters
    ----------
    path : str
        File to open.
    allow_incomplete : bool
        Open a partial file too (for inspection and tests only).

    Raises
    ------
    FeatureFileError
        Missing, unreadable, foreign, incomplete, or of an unknown schema version.
    """

    def __init__(self, path: str, allow_incomplete: bool = False) -> None:
        self.path = path
        if not os.path.exists(path):
            hint = " (a partial file exists: rerun the extraction to finish it)" if os.path.exists(path + PARTIAL_SUFFIX) else ""
            raise FeatureFileError(f"{path}: no such file{hint}")
        try:
            self._h5 = h5py.File(path, "r")
        except OSError:
            raise FeatureFileError(f"{path}: not a readable HDF5 file") from None
        try:
            self._validate(allow_incomplete)
        except FeatureFileError:
            self._h5.close()
            raise

    def _validate(self, allow_incomplete: bool) -> None:
        a = self._h5.attrs
        if a.get("schema") != SCHEMA:
            raise FeatureFileError(f"{self.path}: not a feature file (schema {a.get('schema')!r}, expected {SCHEMA!r})")
        version = int(a.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise FeatureFileError(f"{self.path}: schema version {version} is not supported (this reader knows {SCHEMA_VERSION})")
        if not allow_incomplete and not bool(a.get("complete", False)):
            raise FeatureFileError(f"{self.path}: incomplete feature file (extraction was interrupted); rerun the extraction to finish it")
        missing = [k for k in REQUIRED_ATTRS if k not in a]
        if missing:
            raise FeatureFileError(f"{self.path}: missing root attributes {', '.join(missing)}")
        dim = int(a["feature_dim"])
        for split in self.splits:
            if split not in self._h5:
                raise FeatureFileError(f"{self.path}: split group /{split} is missing")
            g = self._h5[split]
            absent = [d for d in ROW_DATASETS + ("skipped_paths", "skipped_reasons") if d not in g]
            if absent:
                raise FeatureFileError(f"{self.path}: /{split} lacks {', '.join(absent)}")
            n = g["features"].shape[0]
            if g["features"].ndim != 2 or g["features"].shape[1] != dim:
                raise FeatureFileError(f"{self.path}: /{split}/features has shape {g['features'].shape}, expected (N, {dim})")
            if any(g[d].shape != (n,) for d in ROW_DATASETS[1:]):
                raise FeatureFileError(f"{self.path}: /{split} datasets have different row counts")

    # metadata -------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self._h5.attrs)

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
    def preprocessing_json(self) -> str:
        return str(self._h5.attrs["preprocessing"])

    @property
    def config(self) -> dict:
        return json.loads(self._h5.attrs["config"])

    @property
    def data_root(self) -> str:
        return str(self._h5.attrs["data_root"])

    def identity(self) -> dict:
        """What a head trained on this file must match: backbone, weights, layer, preprocessing, classes."""
        a = self._h5.attrs
        return {
            "backbone": str(a["backbone"]),
            "weights": str(a["weights"]),
            "weights_source": str(a["weights_source"]),
            "feature_layer": str(a["feature_layer"]),
            "feature_dim": int(a["feature_dim"]),
            "preprocessing": json.loads(a["preprocessing"]),
            "classes": json.loads(a["classes"]),
        }

    # rows -----------------------------------------------------------------
    def n_rows(self, split: str) -> int:
        return int(self._h5[split]["features"].shape[0])

    def read_split(self, split: str) -> SplitData:
        """Load every row of ``split`` (features as float32)."""
        if split not in self.splits:
            raise FeatureFileError(f"{self.path}: no split {split!r} (has {', '.join(self.splits)})")
        g = self._h5[split]
        return SplitData(
            features=g["features"][...].astype(np.float32, copy=False),
            labels=g["labels"][...],
            paths=g["paths"].asstr()[...],
            image_index=g["image_index"][...],
            view=g["view"][...],
            skipped=_skipped(g),
        )

    def read_features_into(self, split: str, start: int, stop: int, out: np.ndarray) -> None:
        """Read feature rows ``start:stop`` straight into ``out`` (float32, ``stop - start`` rows): no temporary copy."""
        self._h5[split]["features"].read_direct(out, np.s_[start:stop])

    def read_columns(self, split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``labels``, ``image_index`` and ``view`` of rows ``start:stop``."""
        g = self._h5[split]
        return g["labels"][start:stop], g["image_index"][start:stop], g["view"][start:stop]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
