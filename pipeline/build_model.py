"""Head -> fused network -> (fine-tuned) -> exported MODEL_DIR: the steps behind ``pipeline.fuse``."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch

from features.backbones import Backbone
from features.data import DatasetError
from features.devices import keep_freed_memory, resolve_device, resolve_precision
from features.folding import fold_batchnorm
from features.preprocessing import Preprocessing
from features.store import FeatureFile, FeatureFileError
from pipeline.affine import AffineHead, check_identity, load_affine, read_head_report
from pipeline.artefacts import staged_folder
from pipeline.export import export_model, same_logits, write_sidecar
from pipeline.model_meta import MODEL_FORMAT, MODEL_FORMAT_VERSION
from pipeline.file_splits import split_images, train_and_val
from pipeline.filenames import CHECKPOINT
from pipeline.finetune import FinetuneConfig, LabelledImages, finetune
from pipeline.learning_rate import (FAMILIARITY_THRESHOLD, FAMILIAR_LR, UNFAMILIAR_LR, RateChoice, choose_lr,
                                   format_rate)
from pipeline.fusing import fuse_head, verify_fused
from pipeline.input_size import HeadRefit, SizeChoice, at_size, choose_input_size, model_at_size
from pipeline.rebuild import rebuild_backbone
from pipeline.refit import head_recipe


@dataclass
class BuildConfig:
    """Options of ``python -m pipeline.fuse``."""

    head_dir: str
    out_dir: str
    data_root: str | None = None
    features_path: str | None = None
    finetune: FinetuneConfig | None = None
    device: str = "auto"
    precision: str = "auto"
    check_images: int = 8
    onnx: bool = True  # also export model.onnx when the onnx extra is installed
    input_size: int | str = "auto"  # the exported model's input side; auto: chosen on the val split
    refit_head: bool = True  # also refit the head at input sides other than the extraction's (pipeline.refit)


def real_batch(root: str, items: list[tuple[str, int]], preprocessing, transform, n: int) -> torch.Tensor:
    """The first ``n`` readable images of ``items``, preprocessed (for equality checks)."""
    readable = (item[0] for item in LabelledImages(root, items, preprocessing, transform) if item is not None)
    tensors = list(itertools.islice(readable, n))
    if len(tensors) < 2:
        raise DatasetError(f"fewer than 2 readable images under {root} for the equality check")
    return torch.stack(tensors)


@dataclass
class FileSplits:
    """The images a head's feature file records for training and validation."""

    root: str
    train_split: str | None
    val_split: str | None
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    features_path: str
    precision: str = "fp32"  # the autocast precision the features were extracted in


def _features_path(cfg: BuildConfig, head) -> str:
    path = cfg.features_path or head.extra.get("features") or read_head_report(cfg.head_dir).get("features")
    if not path or not os.path.exists(path):
        raise DatasetError(f"the feature file the head was trained on ({path}) is not found; pass --features FILE "
                           "(it records which images form each split)")
    return path


def file_splits(cfg: BuildConfig, head) -> FileSplits:
    """Training and validation images from the head's feature file, never from a new look at the folder.

    Raises
    ------
    DatasetError
        The feature file or the image root is missing.
    HeadError
        The feature file was not made like the head's training features.
    """
    path = _features_path(cfg, head)
    try:
        with FeatureFile(path) as ff:
            check_identity(head.feature_identity, ff.identity(), path)
            train_split, val_split = train_and_val(ff)
            preferred = head.extra.get("train_split")
            if preferred in ff.splits:
                train_split = preferred
                if val_split == preferred:
                    val_split = None
            root = cfg.data_root or ff.data_root
            train = split_images(ff, train_split) if train_split else []
            val = split_images(ff, val_split) if val_split else []
            precision = ff.config.get("precision", "fp32")
    except FeatureFileError as exc:
        raise DatasetError(str(exc)) from None
    if not os.path.isdir(root):
        raise DatasetError(f"data root {root!r} not found; pass --data ROOT (the images the head's features came from)")
    return FileSplits(root, train_split, val_split, train, val, path, precision)


def build_model(cfg: BuildConfig, log=print) -> dict:
    """Fuse the head, verify, optionally fine-tune, export and write the sidecar.

    The folder is built under ``OUT.partial`` (where an interrupted fine-tune leaves its
    checkpoint for ``--resume``) and renamed to ``cfg.out_dir`` once complete.

    Returns
    -------
    dict
        The sidecar written to ``model.json``.

    Raises
    ------
    HeadError
        Broken, tampered, non-linear or mismatched head; fused logits that differ.
    features.data.DatasetError
        Missing data root (it is needed for the equality check and fine-tuning).
    features.locking.LockError
        Another process is writing the same folder.
    """
    resume = bool(cfg.finetune and cfg.finetune.resume)
    with staged_folder(cfg.out_dir, keep_staging=resume) as work:
        finished_checkpoint = os.path.join(cfg.out_dir, CHECKPOINT)
        if resume and not os.path.exists(os.path.join(work, CHECKPOINT)) and os.path.exists(finished_checkpoint):
            shutil.copy2(finished_checkpoint, work)  # --resume on a finished folder: continue with more epochs
        return _build_into(cfg, work, log)


def _build_into(cfg: BuildConfig, out_dir: str, log) -> dict:
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)  # refused here, before any work, when impossible
    head = load_affine(cfg.head_dir)
    head_report = read_head_report(cfg.head_dir)
    backbone = rebuild_backbone(head.feature_identity)
    splits = file_splits(cfg, head)
    check = _check_batch(splits, backbone.preprocessing, cfg.check_images)
    if cfg.input_size != "auto":
        model_at_size(backbone, cfg.input_size)  # a side the network cannot take is refused before any work

    finetuning = bool(cfg.finetune and cfg.finetune.epochs > 0)
    if finetuning and not splits.train:
        raise DatasetError("the feature file has no labeled training split to fine-tune on")
    rate = None
    if finetuning and cfg.finetune.lr is None:
        # Asked before fusing: the backbone's own ImageNet classifier is replaced by the head.
        rate = choose_lr(backbone, splits.features_path, splits.train_split)
    fuse_head(backbone, head)
    diff = verify_fused(backbone, head, check)
    log(f"fused {head.clf} head into {backbone.spec.name}.{backbone.spec.classifier_slot}: "
        f"logits equal head(features) on {len(check)} real images (max abs diff {diff:.2e})")
    if splits.precision != "fp32":
        log(f"note: the head was trained on {splits.precision} features and the fused model runs in fp32, so its "
            "accuracy can differ from the head's report by a borderline image or two (extract with --precision "
            "fp32 for an exact match)")
    finetune_info = None
    if finetuning:
        finetune_info = _finetune(cfg.finetune, backbone, splits, device, precision, out_dir, log, rate)
    size_choice = _input_size(cfg, backbone, head, head_report, splits, device, log)
    if size_choice.size != size_choice.extraction_size:
        backbone = at_size(backbone, size_choice.size)
        check = _check_batch(splits, backbone.preprocessing, cfg.check_images)
    backbone.model.cpu().eval()
    if size_choice.refit is not None:
        refit = size_choice.refit
        fuse_head(backbone, refit.head)
        refit_diff = verify_fused(backbone, refit.head, check)
        log(f"head refitted at {size_choice.size} px on {refit.train_images} training images (C={refit.C:g}), as "
            f"{head.clf} was fitted at {size_choice.extraction_size} px: logits equal head(features) on "
            f"{len(check)} real images (max abs diff {refit_diff:.2e})")
    inference, folded = fold_batchnorm(backbone.model, (backbone.spec.classifier_slot,))
    if folded:
        fold_diff = same_logits("BatchNorm folding", backbone.model, inference, check)
        log(f"folded {folded} BatchNorm layers into their convolutions for the exports "
            f"(logits within {fold_diff:.2e} of the unfolded model)")
    exports = export_model(inference, check, out_dir, onnx=cfg.onnx)
    for fmt, info in exports.items():
        log(f"export {fmt}: " + (f"{info['file']} matches eager (max abs diff {info['max_abs_diff']:.2e})"
                                 if "file" in info else info["skipped"]))
    sidecar = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
        "classes": head.classes,
        "input_size": backbone.preprocessing.crop_size,
        "preprocessing": backbone.preprocessing.to_dict(),
        "backbone": backbone.spec.name,
        "weights": head.feature_identity.weights,
        "feature_layer": head.feature_identity.feature_layer,
        "classifier_slot": backbone.spec.classifier_slot,
        "head": {"clf": head.clf, "C": head.extra.get("C"), "splits": head_report.get("splits")},
        "fused_check_max_abs_diff": diff,
        "finetune": finetune_info,
        "input_size_choice": size_choice.to_dict(),
        "batchnorm_folded": folded,
        "exports": exports,
    }
    write_sidecar(out_dir, sidecar)
    return sidecar


def _check_batch(splits: FileSplits, preprocessing: Preprocessing, n: int) -> torch.Tensor:
    """The real images every equality check runs on: the first ``n`` readable val (else train) images."""
    return real_batch(splits.root, splits.val or splits.train, preprocessing, preprocessing.eval_transform(), n)


def _input_size(cfg: BuildConfig, backbone: Backbone, head: AffineHead, head_report: dict, splits: FileSplits,
                device: torch.device, log: Callable[[str], object]) -> SizeChoice:
    """The exported model's input side, asked for or (``auto``) the best on the val split, and its head."""
    own = backbone.preprocessing.crop_size
    asked = None if cfg.input_size == "auto" else int(cfg.input_size)
    if asked == own:
        return SizeChoice(own, own, {}, "asked")
    if asked is None and not splits.val:
        log(f"input size {own} px, the extraction size (--input-size auto needs a val split to choose on)")
        return SizeChoice(own, own, {}, "no val split")
    keep_freed_memory()  # several val passes: without it, every batch's buffers are page-faulted back in
    workers = cfg.finetune.workers if cfg.finetune else 0
    choice = choose_input_size(backbone, splits.root, splits.val, device, workers,
                               _refit_plan(cfg, head, head_report, splits, log), asked)
    for note in choice.notes:
        log(note)
    if asked is not None:
        log(f"input size {asked} px (--input-size), the features were extracted at {own} px"
            + (f" (val accuracy {_scores(choice)})" if choice.accuracies else ""))
    elif choice.size == own:
        log(f"input size {own} px, the extraction size (--input-size auto, val accuracy {_scores(choice)})")
    else:
        log(f"input size {choice.size} px (--input-size auto, val accuracy {_scores(choice)}): a larger input than "
            f"the extraction's {own} px scored better on val; it costs {(choice.size / own) ** 2:.2f}x the pixels "
            f"per image (--input-size {own} keeps the extraction size)")
    return choice


def _refit_plan(cfg: BuildConfig, head: AffineHead, head_report: dict, splits: FileSplits,
                log: Callable[[str], object]) -> HeadRefit | None:
    """How to refit the head at other sides, or ``None`` (said why) where it cannot be."""
    if not cfg.refit_head:
        return None
    recipe, why_not = head_recipe(head_report, head.clf)
    if recipe is None or not splits.train:
        log(f"the head is not refitted at other input sizes: {why_not or 'the feature file has no training split'}")
        return None
    return HeadRefit(head, recipe, splits.train)


def _scores(choice: SizeChoice) -> str:
    """``224 px 0.9477, 288 px 0.9673 (refitted 0.9739)``: each side's val accuracy, as fused and refitted."""
    parts = []
    for size, acc in choice.accuracies.items():
        refit = choice.refit_accuracies.get(size)
        parts.append(f"{size} px " + (f"{acc:.4f}" if acc is not None else "-")
                     + (f" (refitted {refit:.4f})" if refit is not None else ""))
    return ", ".join(parts)


def _finetune(ft: FinetuneConfig, backbone, splits: FileSplits, device: torch.device, precision: str, out_dir: str,
              log, rate: RateChoice | None) -> dict:
    """Fine-tune the fused network on the feature file's images; returns what ``model.json`` records of it.

    ``rate`` is the body rate chosen for ``--lr auto`` (None when the user gave one).
    """
    if rate is not None:
        ft = dataclasses.replace(ft, lr=rate.lr)
        log(f"body learning rate {format_rate(rate.lr)} (--lr auto): {rate.reason}")
    keep_freed_memory()
    validation = f"validating on {splits.val_split} ({len(splits.val)} images)" if splits.val else "no val split"
    most = f"up to {ft.epochs} epochs, stopping after {ft.patience} without improvement" if ft.patience else f"{ft.epochs} epochs"
    log(f"fine-tuning {most} on {splits.train_split} ({len(splits.train)} images), "
        f"{validation}, as the feature file records them; device {device}, precision {precision}"
        + (f"; each epoch scored as the moving average of its weights (half-life {ft.ema_half_life:g} epochs)"
           if ft.ema_half_life else ""))
    result = finetune(backbone, splits.root, splits.train, splits.val or None, ft, device, precision, out_dir)
    for h in result.history:
        val = f"{h['val_accuracy']:.4f}" if h["val_accuracy"] is not None else "-"
        loss = f"{h['train_loss']:.4f}" if h["train_loss"] is not None else "-"
        log(f"  epoch {h['epoch']} ({h['phase']}): train loss {loss}, val accuracy {val}, {h['seconds']} s")
    if result.stopped_early:
        log(f"stopped after epoch {result.history[-1]['epoch']}: {ft.patience} epochs without a better val accuracy")
    if result.best_epoch == 0 and result.best_val_accuracy is not None:
        log(f"fine-tuning did not improve on the head: kept epoch 0 (val accuracy {result.best_val_accuracy:.4f}), "
            f"so the exported model is the fused head (fine-tuning took {result.seconds:.1f} s). {_suggestion(ft.lr)}")
    else:
        log(f"kept epoch {result.best_epoch} (val accuracy {result.best_val_accuracy}), "
            f"fine-tuning took {result.seconds:.1f} s")
    options = {k: v for k, v in dataclasses.asdict(ft).items() if k not in ("workers", "resume", "progress")}
    lr_rule = None if rate is None else {"familiarity": rate.familiarity, "threshold": FAMILIARITY_THRESHOLD,
                                         "reason": rate.reason}
    return dict(options, lr_auto=lr_rule, crop_scale=list(result.crop_scale), precision=precision, device=str(device),
                train_split=splits.train_split, train_images=len(splits.train),
                val_split=splits.val_split, val_images=len(splits.val),
                history=result.history, best_epoch=result.best_epoch, best_val_accuracy=result.best_val_accuracy,
                stopped_early=result.stopped_early, seconds=round(result.seconds, 1),
                resumed_from_epoch=result.resumed_from)


def _suggestion(lr: float) -> str:
    """What to try after a fine-tune that kept the head, given the body rate it ran at."""
    if lr <= FAMILIAR_LR:
        return ("On photos like ImageNet's the head is often the best model; if your images are unlike them "
                f"(drawings, scans, charts), try --lr {format_rate(UNFAMILIAR_LR)} --finetune-epochs 3 "
                "(README, Fine-tuning)")
    return (f"At body rate {format_rate(lr)} the first epochs dip before they gain: try more epochs "
            f"(--finetune-epochs), or --lr {format_rate(FAMILIAR_LR)} if your images are photos like ImageNet's "
            "(README, Fine-tuning)")
