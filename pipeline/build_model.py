"""Head -> fused network -> (fine-tuned) -> exported MODEL_DIR: the steps behind ``pipeline.fuse``."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass

import torch

from features.data import DatasetError, discover, find_train_split
from features.devices import keep_freed_memory, resolve_device, resolve_train_precision
from pipeline.affine import HeadError, load_affine
from pipeline.export import export_model, write_sidecar
from pipeline.artefacts import staged_folder
from pipeline.finetune import CHECKPOINT, FinetuneConfig, LabelledImages, finetune
from pipeline.fuse import fuse_head, verify_fused
from pipeline.rebuild import rebuild_backbone


@dataclass
class BuildConfig:
    """Options of ``python -m pipeline.fuse``."""

    head_dir: str
    out_dir: str
    data_root: str | None = None
    finetune: FinetuneConfig | None = None
    device: str = "auto"
    precision: str = "auto"
    check_images: int = 8


def real_batch(layout, split: str, transform, n: int) -> torch.Tensor:
    """The first ``n`` readable images of a split, preprocessed (for equality checks)."""
    readable = (item[0] for item in LabelledImages(layout, split, transform) if item is not None)
    tensors = list(itertools.islice(readable, n))
    if len(tensors) < 2:
        raise DatasetError(f"fewer than 2 readable images in split {split!r} for the equality check")
    return torch.stack(tensors)


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
    head = load_affine(cfg.head_dir)
    identity = head.feature_identity
    backbone = rebuild_backbone(identity)
    root = cfg.data_root or head.extra.get("data_root")
    if not root or not os.path.isdir(root):
        raise DatasetError(f"data root {root!r} not found; pass --data ROOT (the images the head's features came from)")
    layout = discover(root)
    if layout.classes != head.classes:
        raise HeadError(f"{root} has classes {layout.classes}, the head was trained on {head.classes}")
    train_split = find_train_split(list(layout.splits))
    val_split = next((s for s in layout.splits if s != train_split), None)
    eval_tf = backbone.preprocessing.eval_transform()
    check = real_batch(layout, val_split or train_split, eval_tf, cfg.check_images)

    fuse_head(backbone, head)
    diff = verify_fused(backbone, head, check)
    log(f"fused {head.clf} head into {backbone.spec.name}.{backbone.spec.classifier_slot}: "
        f"logits equal head(features) on {len(check)} real images (max abs diff {diff:.2e})")

    head_report = {}
    if os.path.exists(os.path.join(cfg.head_dir, "report.json")):
        with open(os.path.join(cfg.head_dir, "report.json"), encoding="utf-8") as fh:
            head_report = json.load(fh)
    finetune_info = None
    if cfg.finetune and cfg.finetune.epochs > 0:
        if train_split is None:
            raise DatasetError(f"{root} has no training split to fine-tune on")
        device = resolve_device(cfg.device)
        precision = resolve_train_precision(cfg.precision, device)
        keep_freed_memory()
        log(f"fine-tuning {cfg.finetune.epochs} epochs on {train_split} ({len(layout.splits[train_split])} images), "
            f"device {device}, precision {precision}")
        result = finetune(backbone, layout, train_split, val_split, cfg.finetune, device, precision, out_dir)
        for h in result.history:
            val = f"{h['val_accuracy']:.4f}" if h["val_accuracy"] is not None else "-"
            loss = f"{h['train_loss']:.4f}" if h["train_loss"] is not None else "-"
            log(f"  epoch {h['epoch']}: train loss {loss}, val accuracy {val}, {h['seconds']} s")
        log(f"kept epoch {result.best_epoch} (val accuracy {result.best_val_accuracy}), fine-tuning took {result.seconds:.1f} s")
        finetune_info = {"epochs": cfg.finetune.epochs, "lr": cfg.finetune.lr, "head_lr_mult": cfg.finetune.head_lr_mult,
                         "freeze_stages": cfg.finetune.freeze_stages, "train_bn": cfg.finetune.train_bn, "precision": precision, "device": str(device),
                         "history": result.history, "best_epoch": result.best_epoch,
                         "best_val_accuracy": result.best_val_accuracy, "seconds": round(result.seconds, 1),
                         "resumed_from_epoch": result.resumed_from}
    backbone.model.cpu().eval()
    exports = export_model(backbone.model, check, out_dir)
    for fmt, info in exports.items():
        log(f"export {fmt}: " + (f"{info['file']} matches eager (max abs diff {info['max_abs_diff']:.2e})"
                                 if "file" in info else info["skipped"]))
    sidecar = {
        "format": "tlcache.model", "format_version": 1,
        "classes": head.classes,
        "input_size": backbone.preprocessing.crop_size,
        "preprocessing": json.loads(backbone.preprocessing.to_json()),
        "backbone": backbone.spec.name,
        "weights": identity["weights"],
        "feature_layer": identity["feature_layer"],
        "classifier_slot": backbone.spec.classifier_slot,
        "head": {"clf": head.clf, "C": head.extra.get("C"), "splits": head_report.get("splits")},
        "fused_check_max_abs_diff": diff,
        "finetune": finetune_info,
        "exports": exports,
    }
    write_sidecar(out_dir, sidecar)
    return sidecar
