"""Writing a feature file: journal while extracting, then one verified HDF5 file, renamed into place.

The protocol, step by step (``OUT`` is the requested path):

1. The caller holds :func:`features.locking.output_lock` on ``OUT`` for the whole run.
2. Batches are appended to the journal ``OUT.partial`` (:mod:`features.journal`); a
   crash, a signal or a failed write at any byte leaves every earlier batch intact.
3. When every split is finished, a child process converts the journal into the HDF5
   file ``OUT.writing`` with per-split checksums. HDF5 cannot recover from a failed
   write inside its own library (it may crash the process when the file is closed), so
   that risk is confined to a process that only reports back.
4. The parent reopens ``OUT.writing`` read-only, checks its structure and every
   checksum, syncs it, renames it to ``OUT`` and deletes the journal.

A file at ``OUT`` is therefore always whole and verified; anything else is either
resumable (the journal) or disposable (``OUT.writing``).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from features import journal
from features.identity import FeatureIdentity
from features.store import (BATCH_SIZE_ATTR, EXTRACTION_ATTRS, PARTIAL_SUFFIX, ROWS_PER_CHUNK, SCHEMA, SCHEMA_VERSION,
                            ConfigMismatch, FeatureFile, FeatureFileError, SplitChecksum, _skipped, attrs_checksum)

WRITING_SUFFIX = ".writing"
_STR = h5py.string_dtype("utf-8")


class WriteFailed(Exception):
    """Writing the output failed (disk full, quota, I/O error, file too large, folder gone).

    Everything committed before the failure is kept; rerunning the same command resumes.
    """


def write_failed(path: str, exc: OSError) -> WriteFailed:
    """A one-line :class:`WriteFailed` naming the file and the cause."""
    name = errno.errorcode.get(exc.errno or 0, "")
    # HDF5's own messages run over several lines; the errno says the same in a few words.
    cause = os.strerror(exc.errno) + f" ({name})" if exc.errno else str(exc).splitlines()[0]
    return WriteFailed(f"cannot write {path}: {cause}; what was committed is kept: "
                       "free space or fix the cause, then rerun the same command to resume")


class FeatureWriter:
    """Appends batches to the journal; each :meth:`commit` is durable against crashes.

    Use :func:`open_writer` to create one.
    """

    def __init__(self, final_path: str, state: journal.JournalState, fd: int) -> None:
        self.final_path = final_path
        self._state = state
        self._fd = fd  # unbuffered: nothing is held back in memory to fail again at close
        start = state.start
        self._split_sizes: dict[str, int] = start["split_sizes"]
        self._dtype: str = start["dtype"]

    @property
    def partial_path(self) -> str:
        return self.final_path + PARTIAL_SUFFIX

    @property
    def started_batch_size(self) -> int | None:
        """The batch size the journal was started with (None for a journal that does not record it)."""
        return self._state.start["attrs"].get(BATCH_SIZE_ATTR)

    def done_images(self, split: str) -> int:
        """How many of the split's candidate files are already processed (written or skipped)."""
        return self._state.done_images(split)

    def split_complete(self, split: str) -> bool:
        return split in self._state.done_splits

    def _append(self, record: bytes) -> int:
        """Append one whole record; on failure cut the torn bytes (best effort) and raise :class:`WriteFailed`."""
        end = self._state.good_end
        try:
            _write_all(self._fd, record, end)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, end)
            except OSError:
                pass  # the next open cuts the torn record anyway
            raise write_failed(self.partial_path, exc) from None
        self._state.good_end = end + len(record)
        return end

    def commit(self, split: str, features: np.ndarray, labels: np.ndarray, paths: list[str], image_index: np.ndarray,
               view: np.ndarray, skipped: list[tuple[str, str]], done_images: int) -> None:
        """Append one batch of rows and skipped files as a single journal record."""
        record = journal.encode_rows(split, features, labels, paths, image_index, view, skipped, done_images,
                                     self._dtype)
        at = self._append(record)
        self._state.records.setdefault(split, []).append(journal.RowsRecord(
            split, len(labels), int(done_images), list(paths), list(skipped), at + journal.payload_start(record)))

    def counts(self, split: str) -> tuple[int, int, list[tuple[str, str]]]:
        """Candidate files, rows written, and the skipped ``(path, reason)`` pairs of a split."""
        return self._split_sizes[split], self._state.rows(split), self._state.skipped(split)

    def finish_split(self, split: str) -> None:
        """Mark a split as finished."""
        if self.done_images(split) != self._split_sizes[split]:
            raise FeatureFileError(f"split {split!r} is not finished")
        self._append(journal.encode_record({"kind": "split_done", "split": split}))
        self._state.done_splits.add(split)

    def discard(self) -> None:
        """Close and delete the journal (nothing in it is worth keeping)."""
        self.close()
        os.remove(self.partial_path)

    def finalize(self) -> str:
        """Convert the journal into the verified HDF5 file at its final name. Returns that path.

        Raises
        ------
        WriteFailed
            The HDF5 file could not be written; the journal is kept for a rerun.
        """
        unfinished = [s for s in self._split_sizes if not self.split_complete(s)]
        if unfinished:
            raise FeatureFileError(f"split {unfinished[0]!r} is not finished")
        self.close()
        tmp = self.final_path + WRITING_SUFFIX
        try:
            _convert_in_child(self.partial_path, tmp)
            with FeatureFile(tmp) as check:
                check.verify()
            _sync(tmp)
            os.replace(tmp, self.final_path)
            _sync(os.path.dirname(os.path.abspath(self.final_path)))
        except BaseException:
            _remove_quietly(tmp)
            raise
        os.remove(self.partial_path)
        return self.final_path

    def close(self) -> None:
        """Close without finalising (the journal stays for a later resume)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a write near a size limit can be short before it fails)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # some file systems cannot sync a folder
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _die_with_parent() -> None:
    """Ask Linux to kill this process if its parent dies (so a killed run leaves no writer holding its lock)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass  # not Linux: the child finishes its short conversion and exits on its own


def _convert_in_child(journal_path: str, out_path: str) -> None:
    """Run :func:`write_hdf5` in a forked child; raise :class:`WriteFailed` with its error if it fails."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: reports through the pipe and leaves with os._exit, never through Python's clean-up
        os.close(read_end)
        _die_with_parent()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # h5py prints clean-up errors of a failed file; the parent prints the one line

        def report(exc: BaseException) -> None:
            if isinstance(exc, OSError):
                message = str(write_failed(out_path, exc))
            else:
                message = f"cannot write {out_path}: {type(exc).__name__}: {exc}"
            os.write(write_end, message.encode()[:4000])
            os._exit(1)  # the failed file is never closed: closing it is what can crash

        try:
            write_hdf5(journal_path, out_path, report)
        except BaseException as exc:  # noqa: BLE001 - anything before the file exists
            report(exc)
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        message = b"".join(chunks).decode(errors="replace").strip()
        raise WriteFailed(message or f"cannot write {out_path}: the writing process ended with status {status}")


def write_hdf5(journal_path: str, out_path: str, on_error) -> None:
    """Write the HDF5 feature file ``out_path`` from a finished journal (format: ``docs/FORMAT.md``).

    ``on_error(exc)`` is called, with the file still open, if writing fails; it must not return.
    """
    state = journal.scan(journal_path)
    h5 = h5py.File(out_path, "w")
    try:
        with open(journal_path, "rb") as jf:
            _fill(h5, state, jf)
        h5.close()
        _sync(out_path)
    except BaseException as exc:  # noqa: BLE001 - handed on while ``h5`` is still referenced
        on_error(exc)


def _fill(h5: h5py.File, state: journal.JournalState, jf) -> None:
    start = state.start
    dim, dtype = int(start["feature_dim"]), start["dtype"]
    h5.attrs["schema"] = SCHEMA
    h5.attrs["schema_version"] = SCHEMA_VERSION
    h5.attrs["complete"] = False
    for key, value in start["attrs"].items():
        h5.attrs[key] = value
    for split, n_images in start["split_sizes"].items():
        n = state.rows(split)
        g = h5.create_group(split)
        cols = {
            "features": g.create_dataset("features", shape=(n, dim), maxshape=(None, dim), dtype=dtype,
                                         chunks=(ROWS_PER_CHUNK, dim)),
            "labels": g.create_dataset("labels", shape=(n,), maxshape=(None,), dtype="int64", chunks=(4096,)),
            "paths": g.create_dataset("paths", shape=(n,), maxshape=(None,), dtype=_STR, chunks=(1024,)),
            "image_index": g.create_dataset("image_index", shape=(n,), maxshape=(None,), dtype="int64", chunks=(4096,)),
            "view": g.create_dataset("view", shape=(n,), maxshape=(None,), dtype="int16", chunks=(4096,)),
        }
        checksum = SplitChecksum(dtype)
        at = 0
        for rec in state.records.get(split, []):
            features, labels, image_index, view = journal.read_rows(jf, rec, dim, dtype)
            rows = slice(at, at + rec.rows)
            for name, values in (("features", features), ("labels", labels), ("image_index", image_index),
                                 ("view", view)):
                cols[name][rows] = values
            cols["paths"][rows] = np.asarray(rec.paths, dtype=object)
            checksum.update_rows(features, labels, rec.paths, image_index, view)
            at += rec.rows
        skipped = state.skipped(split)
        checksum.update_skipped(skipped)
        for name, values in (("skipped_paths", [p for p, _ in skipped]), ("skipped_reasons", [r for _, r in skipped])):
            g.create_dataset(name, data=np.asarray(values, dtype=object), dtype=_STR, maxshape=(None,), chunks=(256,))
        g.attrs.update({"n_images": n_images, "done_images": state.done_images(split), "rows": n,
                        "skipped": len(skipped), "complete": True, "rows_sha256": checksum.hexdigest()})
    h5.attrs["attrs_sha256"] = attrs_checksum(h5.attrs)
    h5.attrs["complete"] = True


def _mismatches(found: dict, attrs: dict) -> list[str]:
    """Names of the identity fields and extraction attributes in which two sets of root attributes differ
    (another image size is named with both sizes: a forgotten ``--image-size`` is the likeliest cause)."""
    try:
        in_file, asked = FeatureIdentity.from_attrs(found), FeatureIdentity.from_attrs(attrs)
        bad = list(in_file.mismatches(asked))
    except (KeyError, ValueError, TypeError):
        bad = ["identity (unreadable)"]
    else:
        sizes = asked.preprocessing.crop_size, in_file.preprocessing.crop_size
        if "preprocessing" in bad and sizes[0] != sizes[1]:
            bad[bad.index("preprocessing")] = f"image size: {sizes[0]} px asked, {sizes[1]} px in the file"
    return bad + [k for k in EXTRACTION_ATTRS if str(found.get(k)) != str(attrs.get(k))]


@dataclass
class WriterState:
    """Outcome of :func:`open_writer`.

    Attributes
    ----------
    status : str
        ``"new"``, ``"resumed"`` or ``"up_to_date"`` (a complete file with the same
        configuration exists; ``writer`` is then ``None``).
    writer : FeatureWriter or None
    notes : list of str
        Lines for the user (a damaged journal moved aside, a torn batch cut off).
    """

    status: str
    writer: FeatureWriter | None
    notes: list[str]


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
        with FeatureFile(path) as existing:
            bad = _mismatches(existing.attrs, attrs)
    except FeatureFileError as exc:
        bad = [str(exc)]
    if not bad:
        return True
    raise ConfigMismatch(f"{path} exists and differs ({', '.join(bad)}); pass --overwrite to replace it")


def check_output_path(path: str) -> None:
    """Refuse an output whose folder is missing or read-only, or that is a folder itself."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FeatureFileError(f"output folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise FeatureFileError(f"output folder {folder!r} is not writable (permission denied)")
    if os.path.isdir(path):
        raise FeatureFileError(f"output path {path!r} is a folder")


def _move_aside(partial: str, reason: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    aside = f"{partial}.damaged-{stamp}"
    os.replace(partial, aside)
    return f"note: {partial} could not be resumed ({reason}); moved it to {aside} and started afresh"


def _resume(path: str, attrs: dict, overwrite: bool) -> tuple[FeatureWriter | None, list[str]]:
    """Reopen an existing journal for appending, or move a damaged one aside."""
    partial = path + PARTIAL_SUFFIX
    try:
        state = journal.scan(partial)
    except journal.JournalDamaged as exc:
        return None, [_move_aside(partial, str(exc))]
    except OSError as exc:
        raise FeatureFileError(f"cannot read {partial}: {exc.strerror or exc}") from None
    bad = _mismatches(state.start["attrs"], attrs)
    if bad:
        if overwrite:
            return None, []
        raise ConfigMismatch(f"{partial} was started with another configuration ({', '.join(bad)}); "
                             "pass --overwrite to start over")
    notes = []
    try:
        fd = os.open(partial, os.O_RDWR)
    except OSError as exc:
        raise FeatureFileError(f"cannot open {partial}: {exc.strerror or exc}") from None
    if state.torn_bytes:
        os.ftruncate(fd, state.good_end)
        notes.append(f"note: cut {state.torn_bytes} bytes of a batch that was not fully written before the interruption")
    return FeatureWriter(path, state, fd), notes


def open_writer(path: str, attrs: dict, split_sizes: dict[str, int], feature_dim: int, dtype: str,
                overwrite: bool) -> WriterState:
    """Create a feature file, resume a partial one, or report that it is already done.

    The caller must hold :func:`features.locking.output_lock` on ``path``.

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
        Replace an existing file or journal made with another configuration instead of
        refusing. A journal made with the same configuration is resumed either way.

    Raises
    ------
    ConfigMismatch
        An existing (partial or complete) file was made with another configuration and
        ``overwrite`` is false.
    FeatureFileError
        The output folder is missing or not writable.
    WriteFailed
        The journal cannot be written (disk full, ...).
    """
    check_output_path(path)
    _remove_quietly(path + WRITING_SUFFIX)  # left by a run killed while converting; we hold the lock
    partial = path + PARTIAL_SUFFIX
    notes: list[str] = []
    if os.path.exists(partial):
        writer, notes = _resume(path, attrs, overwrite)
        if writer is not None:
            return WriterState("resumed", writer, notes)
    if final_file_up_to_date(path, attrs, overwrite):
        return WriterState("up_to_date", None, [f"{path} is complete and was made with the same configuration"])
    start = {"kind": "start", "attrs": attrs, "split_sizes": split_sizes, "feature_dim": feature_dim, "dtype": dtype}
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise FeatureFileError(f"cannot create {partial}: {exc.strerror or exc}") from None
    head = journal.MAGIC + journal.encode_record(start)
    try:
        _write_all(fd, head, 0)
    except OSError as exc:
        os.close(fd)
        _remove_quietly(partial)
        raise write_failed(partial, exc) from None
    state = journal.JournalState(start=json.loads(json.dumps(start)), good_end=len(head))
    return WriterState("new", FeatureWriter(path, state, fd), notes)


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
            shard.verify()
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
