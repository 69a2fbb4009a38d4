"""Stage one: run a frozen backbone once over a dataset and stream pooled features to HDF5."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
import zlib
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

import features
from features.backbones import Backbone, load_backbone
from features.casting import cast_weights_for_autocast, example_batch
from features.data import DatasetLayout, Sample, discover
from features.devices import default_batch_size, keep_freed_memory, resolve_device, resolve_precision
from features.distributed import Shard, gather_from_ranks, process_group, shard_device
from features.errors import ExtractionError
from features.exclude import read_exclude
from features.compiling import COMPILE_MODES, BatchForward
from features.folding import fold_batchnorm
from features.hooks import FeatureCapture, capture_features
from features.images import UnreadableImage
from features.interrupt import StopRequest, stop_between_batches
from features.locking import output_lock
from features.prefetch import DECODE_MODES, pooled_batches, prefetched, single_torch_thread
from features.progress import Progress
from features.identity import FeatureIdentity
from features.store import BATCH_SIZE_ATTR, PARTIAL_SUFFIX, FeatureFile, file_attrs
from features.writer import FeatureWriter, check_output_path, final_file_up_to_date, merge_shards, open_writer

_GLOBAL_RNG = threading.Lock()  # held while torch's global generator is reseeded for augmented views


@dataclass
class ExtractConfig:
    """Everything one extraction run depends on (the CLI fills this from its options).

    Attributes mirror ``run_extract.py``'s options; ``workers=None`` and
    ``batch_size=None`` pick defaults suited to the device (see :func:`default_workers`
    and :func:`features.devices.default_batch_size`). ``shard`` is this process's
    place in a multi-process run (``torchrun``); ``None`` for a single process.
    ``labels``, ``image_column``, ``label_column`` and ``unlabeled`` are passed to
    :func:`features.data.discover`.
    """

    data_root: str
    out_path: str
    backbone: str = "efficientnet_lite0"
    weights: str = "DEFAULT"
    image_size: int | None = None  # crop side fed to the network; None: the weights' own evaluation size
    batch_size: int | None = None  # None: by device (features.devices.default_batch_size)
    workers: int | None = None
    # Without workers, between batches: "turn" in this thread, "pool" across the cores (None: the
    # default, measured fastest on 2 cores); "thread": one batch ahead. None leaves the choice of
    # workers to the device (default_workers); an explicit mode decodes in this process.
    decode: str | None = None
    compile: str = "auto"  # torch.compile: "auto" where its warm-up is repaid (features.compiling), "on", "off"
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float32"
    views: int = 0
    val_fraction: float | None = None
    seed: int = 0
    overwrite: bool = False
    limit: int | None = None
    progress: bool = True
    shard: Shard | None = None
    exclude: str | None = None  # file of dataset-relative paths to leave out (see features.exclude)
    labels: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    unlabeled: tuple[str, ...] = ()


@dataclass
class SplitSummary:
    """What happened to one split."""

    split: str
    images: int
    rows: int
    skipped: list[tuple[str, str]]
    processed: int = 0
    seconds: float = 0.0
    # Of ``seconds`` (the slowest rank's, for a torchrun launch): waiting for decoded images, and the
    # forward passes with moving and normalising each batch (and torch.compile's warm-up, when it compiles).
    waiting_seconds: float = 0.0
    forward_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Rate of this run (a resumed run counts only the images it processed)."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ExtractSummary:
    """Result of :func:`extract`, printed by the CLI."""

    path: str
    status: str
    backbone: str
    weights: str
    feature_dim: int
    device: str
    precision: str
    image_size: int  # side of the square crop fed to the network
    classes: list[str]
    batch_size: int = 0  # images per forward pass
    splits: list[SplitSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The summary for ``--report``: every field, each split's rate, skipped files as path and reason."""
        record = dataclasses.asdict(self)
        for split, s in zip(record["splits"], self.splits):
            split["images_per_second"] = s.images_per_second
            split["skipped"] = [{"path": p, "reason": r} for p, r in s.skipped]
        return record

    def lines(self) -> list[str]:
        """Human-readable summary, one line per split plus every skipped file."""
        out = [f"{self.status}: {self.path}",
               f"backbone {self.backbone} ({self.weights}), {self.feature_dim}-d features, "
               f"{len(self.classes)} classes, {self.image_size}-px input, device {self.device}, "
               f"precision {self.precision}, batch {self.batch_size}"]
        out += self.notes
        for s in self.splits:
            line = (f"  {s.split:>10}: {s.images} images, {s.rows} rows, {len(s.skipped)} skipped, "
                    f"{s.seconds:.1f} s, {s.images_per_second:.1f} img/s")
            if s.processed:
                line += f" (waiting for decoded images {s.waiting_seconds:.1f} s, forward {s.forward_seconds:.1f} s)"
            out.append(line)
        for s in self.splits:
            for path, reason in s.skipped:
                out.append(f"  skipped {path}: {reason}")
        return out


def default_workers(device: torch.device) -> int:
    """DataLoader workers: decoding in parallel with the forward pass.

    On CPU every worker takes a core from the matrix maths; decoding is several times
    faster than the forward pass, so few workers are enough, and on two cores decoding
    in the main process between batches was measured faster than a worker.
    """
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores)
    if cores <= 2:
        return 0  # measured: on 2 cores a decode worker slows the forward pass more than it helps
    return 1 if cores <= 4 else min(4, cores // 4)


def view_seed(seed: int, split: str, image_index: int, view: int) -> int:
    """Seed of one augmented view: fixed by its coordinates, so resumed runs draw the same crops."""
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode()), image_index, view]).generate_state(1)[0])


class ImageRows(Dataset):
    """Decodes candidate files into one clean uint8 tensor plus ``views`` augmented ones
    (the batch is normalised at once, by ``Preprocessing.normalise``).

    Items are ``(index into samples, tensor_or_None, reason_or_None)``; unreadable files
    yield ``None`` and the reason instead of raising, so one bad file never stops a run.
    ``offset`` is the split-wide index of ``samples[0]`` (non-zero for a shard), so views
    are seeded by the image's place in the whole split.
    """

    def __init__(self, root: str, split: str, samples: list[Sample], first: int, offset: int, backbone: Backbone,
                 views: int, seed: int) -> None:
        self.root, self.split, self.samples, self.first, self.offset = root, split, samples, first, offset
        self.preprocessing = backbone.preprocessing
        self.eval_pixels = backbone.preprocessing.eval_pixels()
        self.train_pixels = backbone.preprocessing.train_pixels()
        self.views, self.seed = views, seed

    def __len__(self) -> int:
        return len(self.samples) - self.first

    def __getitem__(self, i: int):
        index = self.first + i
        sample = self.samples[index]
        if sample.missing:
            return index, None, sample.missing
        try:
            img = self.preprocessing.load(os.path.join(self.root, sample.path))
        except UnreadableImage as exc:
            return index, None, str(exc)
        tensors = [self.eval_pixels(img)]
        # The views draw from torch's global generator, seeded per view: one thread at a time,
        # or a decode pool's threads would reseed it under each other.
        with _GLOBAL_RNG:
            for v in range(1, self.views + 1):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(view_seed(self.seed, self.split, self.offset + index, v))
                    tensors.append(self.train_pixels(img))
        return index, torch.stack(tensors), None


def _keep_as_list(batch):
    return batch


def _inventory_hash(samples: list[Sample]) -> str:
    digest = hashlib.sha256()
    for s in samples:
        digest.update(f"{s.path}\0{s.label}\n".encode())
    return digest.hexdigest()[:16]


def _file_attrs(cfg: ExtractConfig, layout: DatasetLayout, splits: dict[str, list[Sample]], backbone: Backbone,
                views_split: str | None, precision: str, excluded: dict | None, folded: int) -> dict:
    config = {
        "views": cfg.views,
        "views_split": views_split,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "limit": cfg.limit,
        "dtype": cfg.dtype,
        "precision": precision,
        "inventory": {name: _inventory_hash(s) for name, s in splits.items()},
        "labels": layout.label_file,
        "unlabeled_splits": list(layout.unlabeled),
        "id_form": layout.id_form,
        "batchnorm_folded": folded,
    }
    if excluded is not None:  # part of the config attribute, hence of what a resume must match
        config["exclude"] = excluded
    versions = {"tlcache": features.__version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "h5py": h5py.__version__, "numpy": np.__version__}
    attrs = file_attrs(FeatureIdentity.of_backbone(backbone, layout.classes), list(splits), layout.root, config,
                       versions)
    # Not in the config (another batch gives the same rows up to rounding): recorded, and what a resume continues at.
    attrs[BATCH_SIZE_ATTR] = cfg.batch_size
    return attrs


@dataclass(frozen=True)
class SplitTiming:
    """Where one split's extraction loop spent its time."""

    processed: int  # files this run read or tried (a resumed run skips the done ones)
    seconds: float  # the whole loop
    waiting: float  # blocked on the next batch of decoded images
    forward: float  # moving and normalising each batch, and the backbone's forward pass


def _run_split(writer, split: str, layout: DatasetLayout, samples: list[Sample], offset: int, backbone: Backbone,
               device: torch.device, forward: BatchForward, capture: FeatureCapture, views: int, cfg: ExtractConfig,
               workers: int, stop: StopRequest) -> SplitTiming:
    """Extract the unfinished part of one split (or of this rank's block of it, starting at
    split index ``offset``).

    A stop request (SIGINT, SIGTERM) takes effect after the batch in hand is committed.
    """
    first = writer.done_images(split)
    dataset = ImageRows(layout.root, split, samples, first, offset, backbone, views, cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_keep_as_list, pin_memory=device.type == "cuda",
                        worker_init_fn=single_torch_thread, prefetch_factor=4 if workers else None)
    progress = Progress(len(dataset), f"{split}", enabled=cfg.progress and (cfg.shard is None or cfg.shard.rank == 0))
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        batches = loader
        if cfg.decode == "thread" and workers == 0:
            batches = stack.enter_context(contextlib.closing(prefetched(loader, 2, single_torch_thread)))
        elif cfg.decode in (None, "pool") and workers == 0:
            batches = stack.enter_context(contextlib.closing(
                pooled_batches(dataset, cfg.batch_size, torch.get_num_threads(), single_torch_thread)))
        stack.enter_context(torch.inference_mode())
        waiting = forward_seconds = 0.0
        asked = time.perf_counter()  # when the loop asked for the next batch
        for batch in batches:
            waiting += time.perf_counter() - asked
            good = [(idx, t) for idx, t, _ in batch if t is not None]
            skipped = [(samples[idx].path, reason) for idx, t, reason in batch if t is None]
            feats = np.zeros((0, backbone.feature_dim), dtype=np.float32)
            rows_index = np.zeros(0, dtype=np.int64)
            rows_view = np.zeros(0, dtype=np.int16)
            if good:
                forward_from = time.perf_counter()
                # uint8 until here: a quarter of the bytes to gather and move, normalised at once
                x = torch.cat([t for _, t in good]).to(device, non_blocking=True)
                x = backbone.preprocessing.normalise(x).contiguous(memory_format=torch.channels_last)
                feats = forward(x, capture).float().cpu().numpy()  # .cpu() waits for the device
                forward_seconds += time.perf_counter() - forward_from
                per_image = views + 1
                rows_index = np.repeat([idx for idx, _ in good], per_image).astype(np.int64)  # into samples
                rows_view = np.tile(np.arange(per_image, dtype=np.int16), len(good))
            writer.commit(
                split,
                features=feats,
                labels=np.array([samples[i].label for i in rows_index], dtype=np.int64),
                paths=[samples[i].path for i in rows_index],
                image_index=rows_index + offset,
                view=rows_view,
                skipped=skipped,
                done_images=batch[-1][0] + 1,
            )
            progress.update(len(batch))
            stop.check()
            asked = time.perf_counter()
        waiting += time.perf_counter() - asked  # the end of the data is a wait too
    progress.close()
    writer.finish_split(split)
    return SplitTiming(len(dataset), time.perf_counter() - started, waiting, forward_seconds)


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Extract features for every split of ``cfg.data_root`` into ``cfg.out_path``.

    With ``cfg.shard`` set (one process of a ``torchrun`` launch), this process
    extracts its block of every split into its own shard file, waits for the other
    ranks, and rank 0 merges the shards into ``cfg.out_path``.

    Parameters
    ----------
    cfg : ExtractConfig

    Returns
    -------
    ExtractSummary
        ``status`` is ``"written"``, ``"resumed and written"``, ``"nothing to do"`` (a
        complete file with the same configuration already exists) or, on ranks other
        than 0, ``"shard written"``.

    Raises
    ------
    features.data.DatasetError, features.backbones.BackboneError,
    features.store.FeatureFileError, ValueError
        Unusable input or configuration (the CLI turns these into exit code 2).
    features.locking.LockError
        Another process is writing the same output, or its lock file cannot be created.
    features.writer.WriteFailed
        The output could not be written (disk full, ...); rerunning resumes.
    features.interrupt.Interrupted
        SIGINT or SIGTERM stopped the run between two batches; rerunning resumes.
    ExtractionError
        No image of the dataset could be read.
    """
    if (cfg.views < 0 or (cfg.batch_size is not None and cfg.batch_size < 1)
            or (cfg.limit is not None and cfg.limit < 1)):
        raise ValueError("--views must be >= 0, --batch-size >= 1 and --limit >= 1")
    if cfg.dtype not in ("float32", "float16"):
        raise ValueError(f"--dtype must be float32 or float16, got {cfg.dtype!r}")
    if cfg.decode not in (None, *DECODE_MODES) or (cfg.decode and cfg.workers):
        raise ValueError(f"--decode is {', '.join(DECODE_MODES)}, and applies without --workers (drop one of the two)")
    if cfg.compile not in COMPILE_MODES:
        raise ValueError(f"--compile is {', '.join(COMPILE_MODES)}, got {cfg.compile!r}")
    device = resolve_device(cfg.device)
    if cfg.shard is not None:
        device = shard_device(cfg.shard, device)
    precision = resolve_precision(cfg.precision, device)
    batch_given = cfg.batch_size is not None
    if not batch_given:
        cfg = dataclasses.replace(cfg, batch_size=default_batch_size(device))
    layout = discover(cfg.data_root, cfg.val_fraction, cfg.seed, labels=cfg.labels, image_column=cfg.image_column,
                      label_column=cfg.label_column, unlabeled=tuple(cfg.unlabeled))
    excluded = None
    if cfg.exclude:
        exclude = read_exclude(cfg.exclude)
        kept = {name: [s for s in samples if os.path.normpath(s.path) not in exclude.paths]
                for name, samples in layout.splits.items()}
        excluded = exclude.record(sum(len(s) for s in layout.splits.values()) - sum(len(s) for s in kept.values()))
        layout = dataclasses.replace(layout, splits=kept)
    splits = {name: s[: cfg.limit] if cfg.limit else s for name, s in layout.splits.items()}
    views_split = layout.train_split_name() if cfg.views else None
    if cfg.views and views_split is None:
        raise ValueError(f"--views needs a labeled training split; found {', '.join(splits)}")

    check_output_path(cfg.out_path)
    backbone = load_backbone(cfg.backbone, cfg.weights, cfg.image_size)
    # Frozen inference: every conv -> BatchNorm pair of the traced graph becomes one convolution.
    backbone.model, folded = fold_batchnorm(backbone.model, (backbone.spec.feature_module,
                                                             backbone.spec.classifier_slot))
    # bf16/fp16: weights cast once instead of every batch, for bitwise the same rows.
    cast_weights_for_autocast(backbone.model, precision, example_batch(backbone.preprocessing.crop_size))
    attrs = _file_attrs(cfg, layout, splits, backbone, views_split, precision, excluded, folded)
    summary = ExtractSummary(cfg.out_path, "", backbone.spec.name, backbone.weights.identity, backbone.feature_dim,
                             str(device), precision, backbone.preprocessing.crop_size, layout.classes, cfg.batch_size)
    if excluded is not None:
        summary.notes.append(f"excluded {excluded['excluded']} files listed in {cfg.exclude}"
                             + (f" ({excluded['listed'] - excluded['excluded']} listed paths are not in the dataset)"
                                if excluded["listed"] > excluded["excluded"] else ""))
    summary.notes += layout.notes
    for path in layout.unusual_extensions():
        summary.notes.append(f"note: {path} has an uncommon extension; it is decoded by content like every file")
    for split, empty in layout.empty_classes.items():
        summary.notes.append(f"warning: {split} has empty class folders: {', '.join(empty)}")
    with stop_between_batches() as stop:
        run = _SplitRunner(cfg, layout, backbone, device, precision, views_split, stop, batch_given)
        if cfg.shard is None:
            with output_lock(cfg.out_path):
                return _extract_single(cfg, splits, attrs, run, summary)
        # Rank 0 holds the final file's lock for the whole run, merge included; every rank holds its shard's.
        final_lock = output_lock(cfg.out_path) if cfg.shard.rank == 0 else contextlib.nullcontext()
        with process_group(device), final_lock, output_lock(cfg.shard.path(cfg.out_path)):
            return _extract_sharded(cfg, cfg.shard, splits, attrs, run, summary)


@dataclass
class _SplitRunner:
    """What every split's extraction loop shares; calling it runs the unfinished splits."""

    cfg: ExtractConfig
    layout: DatasetLayout
    backbone: Backbone
    device: torch.device
    precision: str
    views_split: str | None
    stop: StopRequest
    batch_given: bool  # --batch-size was given; otherwise a resumed run continues at the batch it started with
    notes: list[str] = field(default_factory=list)

    def continue_from(self, writer: FeatureWriter) -> list[str]:
        """Take the batch size a resumed journal was started with, unless one was given; say so either way.

        The rows then equal an uninterrupted run's bit for bit: another batch size may run other
        kernels (cuDNN's, oneDNN's on some CPUs), whose rounding differs.
        """
        started = writer.started_batch_size
        if started is None or started == self.cfg.batch_size:
            return []
        if not self.batch_given:
            self.cfg = dataclasses.replace(self.cfg, batch_size=started)
            return [f"note: continuing at batch {started}, the batch this file was started with"]
        return [f"note: the rows written before were computed at batch {started}, the rest at batch "
                f"{self.cfg.batch_size} (another batch may round differently)"]

    def __call__(self, writer: FeatureWriter, splits: dict[str, list[Sample]],
                 offsets: dict[str, int]) -> dict[str, SplitTiming]:
        """Extract every unfinished split into ``writer``; returns each one's timing."""
        keep_freed_memory()
        self.backbone.model.to(self.device).to(memory_format=torch.channels_last)
        workers = self.cfg.workers
        if workers is None:  # an explicit --decode asks for decoding in this process
            workers = 0 if self.cfg.decode else default_workers(self.device)
        todo = [split for split in splits if not writer.split_complete(split)]
        views = {split: self.cfg.views if split == self.views_split else 0 for split in todo}
        forward = BatchForward(self.backbone.model, self.cfg.compile, self.device, self.precision, self.cfg.batch_size,
                               sum((len(splits[s]) - writer.done_images(s)) * (views[s] + 1) for s in todo))
        timings = {}
        # One feature hook for every split: a compiled model keeps the hooks it was traced with.
        try:
            with capture_features(self.backbone.model, self.backbone.spec) as capture:
                for split in todo:
                    timings[split] = _run_split(writer, split, self.layout, splits[split], offsets[split],
                                                self.backbone, self.device, forward, capture, views[split], self.cfg,
                                                workers, self.stop)
        finally:
            self.notes += forward.notes
        return timings


def _finish(writer: FeatureWriter, summary: ExtractSummary, splits: dict[str, list[Sample]],
            timings: dict[str, SplitTiming], root: str) -> None:
    """Count what was written, refuse an empty result, and finalise the file."""
    for split in splits:
        n_images, rows, skipped = writer.counts(split)
        t = timings.get(split, SplitTiming(0, 0.0, 0.0, 0.0))
        summary.splits.append(SplitSummary(split, n_images, rows, skipped, t.processed, t.seconds, t.waiting, t.forward))
    if sum(s.rows for s in summary.splits) == 0:
        writer.discard()
        reasons = "; ".join(f"{p}: {r}" for s in summary.splits for p, r in s.skipped[:3])
        raise ExtractionError(f"no image under {root} could be read ({reasons})")
    summary.path = writer.finalize()


def _recorded_batch(path: str, default: int) -> int:
    """The batch size a complete feature file (or shard) was started with; ``default`` where it does not say
    (the attribute is only informative, so a malformed one is not an error)."""
    with FeatureFile(path) as existing:
        recorded = existing.attrs.get(BATCH_SIZE_ATTR, default)
    try:
        return int(recorded)
    except (TypeError, ValueError):
        return default


def _extract_single(cfg: ExtractConfig, splits: dict[str, list[Sample]], attrs: dict, run: _SplitRunner,
                    summary: ExtractSummary) -> ExtractSummary:
    state = open_writer(cfg.out_path, attrs, {n: len(s) for n, s in splits.items()}, run.backbone.feature_dim,
                        cfg.dtype, cfg.overwrite)
    summary.status = {"new": "written", "resumed": "resumed and written", "up_to_date": "nothing to do"}[state.status]
    summary.notes[:0] = state.notes
    if state.writer is None:
        summary.batch_size = _recorded_batch(cfg.out_path, summary.batch_size)
        return summary
    summary.notes += run.continue_from(state.writer)
    summary.batch_size = run.cfg.batch_size
    try:
        timings = run(state.writer, splits, {split: 0 for split in splits})
        summary.notes += run.notes
        _finish(state.writer, summary, splits, timings, run.layout.root)
    finally:
        state.writer.close()
    return summary


def _extract_sharded(cfg: ExtractConfig, shard: Shard, splits: dict[str, list[Sample]], attrs: dict,
                     run: _SplitRunner, summary: ExtractSummary) -> ExtractSummary:
    dim = run.backbone.feature_dim
    if final_file_up_to_date(cfg.out_path, attrs, cfg.overwrite):  # every rank sees the same file
        summary.status = "nothing to do"
        summary.batch_size = _recorded_batch(cfg.out_path, summary.batch_size)
        return summary
    blocks = {split: shard.block(len(s)) for split, s in splits.items()}
    # The shard's own identity includes its place, so a rerun with another world size starts afresh.
    shard_attrs = dict(attrs, config=json.dumps(dict(json.loads(attrs["config"]), shard=[shard.rank, shard.world_size]),
                                                sort_keys=True))
    state = open_writer(shard.path(cfg.out_path), shard_attrs, {split: b - a for split, (a, b) in blocks.items()},
                        dim, cfg.dtype, cfg.overwrite)
    timings = {}
    if state.writer is None:
        summary.batch_size = _recorded_batch(shard.path(cfg.out_path), summary.batch_size)
    else:
        summary.notes += run.continue_from(state.writer)
        summary.batch_size = run.cfg.batch_size
        try:
            mine = {split: splits[split][a:b] for split, (a, b) in blocks.items()}
            timings = run(state.writer, mine, {split: a for split, (a, b) in blocks.items()})
            summary.notes += run.notes
            state.writer.finalize()
        finally:
            state.writer.close()
    every_rank = gather_from_ranks(timings)  # also the barrier: all shards are complete after it
    if shard.rank != 0:
        summary.status = "shard written"
        summary.path = shard.path(cfg.out_path)
        return summary

    merged = {}
    for split in splits:
        # Ranks run side by side: images add up, the times are the slowest rank's.
        parts = [t[split] for t in every_rank if split in t]
        if parts:
            slowest = max(parts, key=lambda t: t.seconds)
            merged[split] = SplitTiming(sum(t.processed for t in parts), slowest.seconds, slowest.waiting,
                                        slowest.forward)
    if os.path.exists(cfg.out_path + PARTIAL_SUFFIX):
        os.remove(cfg.out_path + PARTIAL_SUFFIX)  # an interrupted merge starts over: the shards hold every row
    # The merged file records the batch rank 0's shard was started with, as a single process's file does.
    attrs = dict(attrs, **{BATCH_SIZE_ATTR: _recorded_batch(shard.path(cfg.out_path), cfg.batch_size)})
    writer = open_writer(cfg.out_path, attrs, {n: len(s) for n, s in splits.items()}, dim, cfg.dtype, True).writer
    try:
        offsets = {split: [Shard(r, shard.world_size, 0).block(len(s))[0] for r in range(shard.world_size)]
                   for split, s in splits.items()}
        merge_shards(writer, shard.all_paths(cfg.out_path), offsets)
        for split in splits:
            writer.finish_split(split)
        _finish(writer, summary, splits, merged, run.layout.root)
    finally:
        writer.close()
    for path in shard.all_paths(cfg.out_path):
        os.remove(path)
    summary.status = "written"
    summary.notes.append(f"note: {shard.world_size} processes; shards merged in rank order into {cfg.out_path}")
    return summary
