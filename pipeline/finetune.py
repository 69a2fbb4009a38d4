"""End-to-end fine-tuning of a fused network, with discriminative learning rates and resume."""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from features.backbones import Backbone
from features.devices import autocast
from features.images import UnreadableImage
from features.preprocessing import Preprocessing
from features.progress import Progress
from pipeline.filenames import CHECKPOINT
from pipeline.learning_rate import FAMILIAR_LR

# Options that shape the optimisation: a resumed run must use the checkpoint's values. The
# number of epochs may grow (a finished fine-tune continues with more).
RESUME_OPTIONS = ("lr", "head_lr_mult", "optimizer", "frozen_epochs", "freeze_stages", "batch_size", "momentum",
                  "weight_decay", "label_smoothing", "crop_scale", "flip", "warmup_fraction", "train_bn", "dropout",
                  "ema_half_life", "seed")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class FinetuneConfig:
    """Options of the fine-tuning stage (see ``python -m pipeline.fuse --help``).

    ``epochs`` is the most epochs to run; with ``patience`` the run stops earlier once
    validation accuracy has not improved for that many epochs. ``crop_scale=None``
    chooses the crop's area share from the images' resolution (:func:`crop_scale_for`).
    """

    epochs: int
    lr: float | None = None  # the body's rate; None: FAMILIAR_LR here, chosen per dataset by pipeline.fuse
    head_lr_mult: float = 10.0
    optimizer: str = "adamw"
    frozen_epochs: int = 0
    freeze_stages: int = 0
    batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    crop_scale: tuple[float, float] | None = None
    flip: bool = True
    warmup_fraction: float = 0.1
    train_bn: bool = False
    dropout: bool = False
    ema_half_life: float | None = None  # in epochs; None: the trained weights are scored and kept as they are
    patience: int | None = None
    workers: int = 0
    seed: int = 0
    resume: bool = False
    progress: bool = True


@dataclass
class FinetuneResult:
    """Per-epoch history and the epoch whose weights were kept (0 = the fused head unchanged)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float | None = None
    seconds: float = 0.0
    resumed_from: int | None = None
    stopped_early: bool = False
    crop_scale: tuple[float, float] | None = None


def stages(model: nn.Module, classifier_slot: str) -> list[tuple[str, nn.Module]]:
    """The network's stages from input to output, for ``--freeze-stages``.

    A stage is a top-level child that has parameters, except that a top-level
    ``Sequential``/``ModuleList`` (``features``, ``_blocks``) contributes each of its
    children as one stage. The classifier slot's top-level module is never a stage.
    """
    top_slot = classifier_slot.split(".")[0]
    found = []
    for name, child in model.named_children():
        if name == top_slot or not any(True for _ in child.parameters()):
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            found += [(f"{name}.{sub}", m) for sub, m in child.named_children() if any(True for _ in m.parameters())]
        else:
            found.append((name, child))
    return found


def freeze_lowest(model: nn.Module, classifier_slot: str, k: int) -> list[str]:
    """Stop gradients in the lowest ``k`` stages; returns their names.

    Frozen stages are also kept in eval mode during training (see :func:`set_train_mode`),
    so their BatchNorm running statistics stay those of the pretrained network.
    """
    frozen = stages(model, classifier_slot)[:k]
    for _, module in frozen:
        module.requires_grad_(False)
    return [name for name, _ in frozen]


def set_train_mode(model: nn.Module, frozen: list[str], train_bn: bool = False, dropout: bool = False) -> None:
    """Train/eval modes for an end-to-end epoch; frozen stages always stay in eval mode.

    ``train_bn`` puts BatchNorm layers in training mode (statistics from each batch, and
    updated); otherwise they normalise with the pretrained running statistics, as during
    feature extraction, so the fused head sees the features it was trained on, while
    their affine weights still learn. ``dropout`` puts everything else in training mode
    too (dropout, drop-connect); otherwise it runs as at inference.
    """
    model.train(dropout)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(train_bn)
    for name in frozen:
        model.get_submodule(name).eval()


def parameter_groups(model: nn.Module, classifier_slot: str, lr: float, head_lr_mult: float) -> list[dict]:
    """Two SGD groups: the body at ``lr``, the fused head at ``lr * head_lr_mult`` (trainable params only)."""
    head_ids = {id(p) for p in model.get_submodule(classifier_slot).parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids and p.requires_grad]
    body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    return [{"params": body, "lr": lr, "name": "body"}, {"params": head, "lr": lr * head_lr_mult, "name": "head"}]


PHOTO_CROP_SCALE = (0.35, 1.0)
SMALL_SOURCE_CROP_SCALE = (0.8, 1.0)


def source_short_side(root: str, items: list[tuple[str, int]], sample: int = 32) -> int | None:
    """Median shorter side, in pixels, of up to ``sample`` images spread over ``items`` (headers only).

    ``None`` when none of them can be opened.
    """
    step = max(1, len(items) // sample)
    sides = []
    for path, _ in items[::step][:sample]:
        try:
            with Image.open(os.path.join(root, path)) as im:
                sides.append(min(im.size))
        except (OSError, ValueError):
            continue  # the loader records unreadable files; a size sample can do without them
    return int(statistics.median(sides)) if sides else None


def crop_scale_for(short_side: int | None, resize_size: int) -> tuple[float, float]:
    """RandomResizedCrop's area share for training images of this resolution.

    Photos at least as large as the evaluation resize get ``PHOTO_CROP_SCALE``; images
    smaller than that (8x8 digits written at 64 px, thumbnails) are already upscaled to
    reach the crop size, and a deep crop would leave a few source pixels, so they get
    the milder ``SMALL_SOURCE_CROP_SCALE``.
    """
    if short_side is not None and short_side < resize_size:
        return SMALL_SOURCE_CROP_SCALE
    return PHOTO_CROP_SCALE


def make_optimizer(groups: list[dict], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum over the parameter groups, with ``cfg.weight_decay``."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} ({' or '.join(OPTIMIZERS)})")


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """Learning-rate factor per step: linear warm-up over the first ``warmup_fraction``, then cosine decay to 0."""
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class LabelledImages(Dataset):
    """Images as ``(tensor, label)``; unreadable files become ``None``.

    Parameters
    ----------
    root : str
        Folder the paths are relative to (a feature file's ``data_root``).
    items : list of (str, int)
        ``(path, label)`` of each image, as a feature file records them
        (:func:`pipeline.file_splits.split_images`).
    preprocessing : Preprocessing
        Decodes each file (EXIF orientation, reduced-scale JPEG decoding) as extraction did.
    transform : callable
        PIL image to tensor.
    """

    def __init__(self, root: str, items: list[tuple[str, int]], preprocessing: Preprocessing, transform) -> None:
        self.root, self.items, self.preprocessing, self.transform = root, items, preprocessing, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        try:
            return self.transform(self.preprocessing.load(os.path.join(self.root, path))), label
        except UnreadableImage:
            return None


def _collate_readable(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])


def _logits(output) -> torch.Tensor:
    # Inception returns (logits, aux_logits) in training mode.
    return output.logits if hasattr(output, "logits") else output


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float | None:
    """Accuracy over a loader in eval mode and fp32 (as the exported model runs); restores the mode it found.

    Parameters
    ----------
    model : nn.Module
    loader : DataLoader
        Batches of ``(images, labels)``, ``None`` for a batch with no readable image.
    device : torch.device

    Returns
    -------
    float or None
        ``None`` when the loader holds no readable image.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            x, y = batch
            pred = _logits(model(x.to(device))).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / total if total else None


class ResumeMismatch(ValueError):
    """``--resume`` with options other than those of the checkpoint; ``str(exc)`` names them."""


def _load_checkpoint(path: str, cfg: FinetuneConfig, precision: str) -> dict:
    """A checkpoint's state, loaded with ``weights_only=True`` (tensors and plain values only).

    Raises
    ------
    ResumeMismatch
        The checkpoint was made with other optimisation options.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    ours = dict(_options(cfg), precision=precision)
    differ = [f"{k} {state['options'].get(k)!r} (now {v!r})" for k, v in ours.items() if state["options"].get(k) != v]
    if differ:
        raise ResumeMismatch(f"{path} was made with other options: {', '.join(differ)}; rerun with those, or "
                             "without --resume to start over")
    return state


def _options(cfg: FinetuneConfig) -> dict:
    options = {k: getattr(cfg, k) for k in RESUME_OPTIONS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}  # as the checkpoint stores them


def _save_checkpoint(path: str, state: dict) -> None:
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # a checkpoint is never half-written


def _loaders(backbone: Backbone, root: str, train_items: list[tuple[str, int]],
             val_items: list[tuple[str, int]] | None, cfg: FinetuneConfig, crop_scale: tuple[float, float],
             generator: torch.Generator) -> tuple[DataLoader, DataLoader | None]:
    """Shuffled, augmented training images and centre-cropped validation images."""
    prep = backbone.preprocessing
    train_loader = DataLoader(LabelledImages(root, train_items, prep, prep.train_transform(crop_scale, cfg.flip)),
                              batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                              collate_fn=_collate_readable, generator=generator, drop_last=False)
    val_loader = eval_loader(root, val_items, prep, cfg.workers) if val_items else None
    return train_loader, val_loader


def eval_loader(root: str, items: list[tuple[str, int]], preprocessing: Preprocessing, workers: int = 0,
                batch_size: int = 64) -> DataLoader:
    """Centre-cropped images of ``items`` in order, for :func:`evaluate`.

    Parameters
    ----------
    root : str
        Image root the paths are relative to.
    items : list of (str, int)
        ``(path, label)`` pairs.
    preprocessing : Preprocessing
        Decoding, resize and crop (:meth:`~features.preprocessing.Preprocessing.eval_transform`).
    workers : int
        DataLoader decode workers.
    batch_size : int

    Returns
    -------
    DataLoader
    """
    return DataLoader(LabelledImages(root, items, preprocessing, preprocessing.eval_transform()),
                      batch_size=batch_size, num_workers=workers, collate_fn=_collate_readable)


def weight_average(model: nn.Module, half_life_epochs: float | None, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights, starting from them.

    The decay per optimiser step is set so that a step's weight halves after
    ``half_life_epochs`` epochs (at least one step), whatever the batch count. Floating-point
    buffers are averaged the same way: BatchNorm statistics, which only ``--train-bn`` updates,
    follow the averaged weights they belong to (without it they never move, so their average
    stays the pretrained statistics). Other buffers (counters, indices) are copied as they are.

    Parameters
    ----------
    model : nn.Module
        The network the optimiser steps; call ``update_parameters(model)`` after each step.
    half_life_epochs : float or None
        None or 0: no average.
    steps_per_epoch : int
        Optimiser steps in one epoch (batches of the training loader).

    Returns
    -------
    AveragedModel or None
        The average, whose ``module`` is scored and kept.
    """
    if not half_life_epochs:
        return None
    decay = 0.5 ** (1.0 / max(1.0, half_life_epochs * steps_per_epoch))
    ema = get_ema_multi_avg_fn(decay)

    def average_floats_copy_the_rest(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        # AveragedModel groups tensors by dtype, so each call sees one dtype: an average of
        # integers would be truncated back into them (BatchNorm's num_batches_tracked, index tables).
        if averaged[0].is_floating_point():
            ema(averaged, current, n_averaged)
        else:
            for a, c in zip(averaged, current):
                a.copy_(c)

    average = AveragedModel(model, multi_avg_fn=average_floats_copy_the_rest, use_buffers=True)
    average.update_parameters(model)  # counts the starting weights, so that the next update averages
    return average


def _train_epoch(model: nn.Module, loader: DataLoader, optimiser, scheduler, scaler, device: torch.device,
                 precision: str, label_smoothing: float, progress: Progress, average: AveragedModel | None) -> float:
    """One pass over the training images, stepping the schedule (and the weight average) per batch; returns the
    mean training loss."""
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    total_loss, seen = 0.0, 0
    for batch in loader:
        if batch is None:
            continue
        x, y = batch[0].to(device), batch[1].to(device)
        optimiser.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = loss_fn(_logits(model(x)).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        scheduler.step()
        if average is not None:
            average.update_parameters(model)
        total_loss += float(loss.detach()) * len(y)
        seen += len(y)
        progress.update(len(y))
    progress.close()
    return total_loss / max(seen, 1)


def _set_phase(model: nn.Module, slot: str, head_only: bool, frozen: list[str], train_bn: bool, dropout: bool) -> None:
    """Gradients and train/eval modes for a head-only epoch or an end-to-end one."""
    model.requires_grad_(not head_only)
    model.get_submodule(slot).requires_grad_(True)
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    if head_only:
        model.eval()  # the body runs as in extraction: BatchNorm statistics and dropout as at inference
    else:
        set_train_mode(model, frozen, train_bn, dropout)


def _epoch_label(epoch: int, cfg: FinetuneConfig, last_val: float | None) -> str:
    phase = "head only" if epoch <= cfg.frozen_epochs else "end to end"
    val = f", val {last_val:.3f} so far" if last_val is not None else ""
    return f"epoch {epoch}/{cfg.epochs} ({phase}{val})"


def finetune(backbone: Backbone, root: str, train_items: list[tuple[str, int]], val_items: list[tuple[str, int]] | None,
             cfg: FinetuneConfig, device: torch.device, precision: str, out_dir: str) -> FinetuneResult:
    """Fine-tune ``backbone.model`` (already fused) in place and keep the best epoch's weights.

    ``train_items`` and ``val_items`` are the ``(path, label)`` pairs a feature file
    records for its training and validation splits (paths relative to ``root``); no
    other image is used.

    The recipe (the README's Fine-tuning section gives the measurements behind it):
    ``cfg.frozen_epochs`` head-only epochs, then end to end; AdamW (or SGD) with the
    body at ``cfg.lr`` (:data:`~pipeline.learning_rate.FAMILIAR_LR` when None) and the
    head at ``lr * head_lr_mult``; per-step linear warm-up then cosine decay over
    ``cfg.epochs``; optional label smoothing; RandomResizedCrop with an area share
    chosen from the images' resolution, and a horizontal flip unless ``cfg.flip`` is
    off; BatchNorm statistics and dropout as at inference unless ``cfg.train_bn`` /
    ``cfg.dropout``. With ``cfg.ema_half_life`` an exponential moving average of the
    weights (:func:`weight_average`) is what each epoch is scored and kept as; the
    optimiser steps the raw weights. A validation pass ends each epoch, then a checkpoint
    (``out_dir/checkpoint.pt``, tensors and plain values only). With ``cfg.patience``
    the run stops once that many epochs in a row have not beaten the best. With
    ``cfg.resume`` a checkpoint left by an interrupted run is continued, if it was
    made with the same options. Epoch 0 is the fused model before any update; its
    weights are kept if no epoch beats it on validation.

    Raises
    ------
    ResumeMismatch
        ``cfg.resume`` with options other than the checkpoint's.
    """
    model = backbone.model.to(device)
    slot = backbone.spec.classifier_slot
    model.requires_grad_(True)
    frozen = freeze_lowest(model, slot, cfg.freeze_stages)
    crop_scale = cfg.crop_scale or crop_scale_for(source_short_side(root, train_items), backbone.preprocessing.resize_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader, val_loader = _loaders(backbone, root, train_items, val_items, cfg, crop_scale, generator)
    lr = FAMILIAR_LR if cfg.lr is None else cfg.lr
    optimiser = make_optimizer(parameter_groups(model, slot, lr, cfg.head_lr_mult), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, warmup_cosine(cfg.epochs * len(train_loader), cfg.warmup_fraction))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")
    average = weight_average(model, cfg.ema_half_life, len(train_loader))
    evaluated = average.module if average is not None else model  # what each epoch is scored and kept as

    result = FinetuneResult(crop_scale=crop_scale)
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    start_epoch = 1
    if cfg.resume and os.path.exists(ckpt_path):
        state = _load_checkpoint(ckpt_path, cfg, precision)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        if average is not None:
            average.load_state_dict(state["average"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        result.history, result.best_epoch, result.best_val_accuracy = state["history"], state["best_epoch"], state["best_val"]
        best_state = state["best_model"]
        start_epoch = state["epoch"] + 1
        result.resumed_from = state["epoch"]
    else:
        torch.manual_seed(cfg.seed)
        val0 = evaluate(model, val_loader, device) if val_loader else None
        result.history.append({"epoch": 0, "phase": "fused head", "train_loss": None, "val_accuracy": val0,
                               "seconds": 0.0})
        result.best_epoch, result.best_val_accuracy = 0, val0
        best_state = copy.deepcopy(model.state_dict())

    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        if _out_of_patience(result, cfg.patience):
            result.stopped_early = True
            break
        epoch_start = time.perf_counter()
        head_only = epoch <= cfg.frozen_epochs
        _set_phase(model, slot, head_only, frozen, cfg.train_bn, cfg.dropout)
        progress = Progress(len(train_loader.dataset), _epoch_label(epoch, cfg, result.history[-1]["val_accuracy"]),
                            enabled=cfg.progress)
        train_loss = _train_epoch(model, train_loader, optimiser, scheduler, scaler, device, precision,
                                  cfg.label_smoothing, progress, average)
        val_acc = evaluate(evaluated, val_loader, device) if val_loader else None
        result.history.append({"epoch": epoch, "phase": "head only" if head_only else "end to end",
                               "train_loss": train_loss, "val_accuracy": val_acc,
                               "seconds": round(time.perf_counter() - epoch_start, 2)})
        improved = val_acc is not None and (result.best_val_accuracy is None or val_acc > result.best_val_accuracy)
        if improved or val_loader is None:  # without validation the last epoch is kept
            result.best_epoch, result.best_val_accuracy = epoch, val_acc
            best_state = copy.deepcopy(evaluated.state_dict())
        _save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "average": average.state_dict() if average is not None else None,
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
            "history": result.history, "best_epoch": result.best_epoch, "best_val": result.best_val_accuracy,
            "best_model": best_state, "options": dict(_options(cfg), precision=precision)})
    model.load_state_dict(best_state)
    model.eval()
    model.requires_grad_(False)
    result.seconds = time.perf_counter() - started
    return result


def _out_of_patience(result: FinetuneResult, patience: int | None) -> bool:
    """True once ``patience`` epochs in a row have passed without beating the best (needs validation)."""
    if patience is None or result.best_val_accuracy is None:
        return False
    return result.history[-1]["epoch"] - result.best_epoch >= patience
