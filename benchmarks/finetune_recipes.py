"""Fine-tuning recipes compared one change at a time, from one fused head: per-epoch val accuracy and time.

``python benchmarks/finetune_recipes.py --head HEAD_DIR --variants default,previous --epochs 2 --json OUT``
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from dataclasses import replace

import click
import torch

from features.devices import resolve_precision
from pipeline.affine import load_affine
from pipeline.build_model import BuildConfig, file_splits
from pipeline.finetune import FinetuneConfig, PHOTO_CROP_SCALE, finetune
from pipeline.fusing import fuse_head
from pipeline.rebuild import rebuild_backbone

# Each variant changes the default recipe in one respect (the "demo" ones excepted); "previous" is the recipe before
# it; "bf16" and "fp32" keep the recipe and force the training precision (the default is `resolve_precision("auto")`).
VARIANTS = {
    "default": {},
    "previous": dict(optimizer="sgd", lr=1e-3, train_bn=True, dropout=True, crop_scale=(0.08, 1.0),
                     warmup_fraction=0.0),
    "dropout": dict(dropout=True),
    "smoothing_0.1": dict(label_smoothing=0.1),
    "sgd": dict(optimizer="sgd", lr=1e-3),
    "sgd_lr1e-4": dict(optimizer="sgd", lr=1e-4),
    "adamw_lr1e-4": dict(lr=1e-4),
    "adamw_lr3e-4": dict(lr=3e-4),
    "adamw_lr3e-5": dict(lr=3e-5),
    "head_lr_x1": dict(head_lr_mult=1.0),
    "train_bn": dict(train_bn=True),
    "crop_0.08": dict(crop_scale=(0.08, 1.0)),
    "crop_photo": dict(crop_scale=PHOTO_CROP_SCALE),
    "no_flip": dict(flip=False),
    "frozen_1": dict(frozen_epochs=1),
    "ema_0.5": dict(ema_half_life=0.5),
    "adamw_lr3e-4_ema_0.5": dict(lr=3e-4, ema_half_life=0.5),
    # the digits demo's fine-tune (the body rate --lr auto takes for it, no flips), and the same with the average
    "demo": dict(lr=3e-4, flip=False),
    "demo_ema_0.5": dict(lr=3e-4, flip=False, ema_half_life=0.5),
    "top5": dict(freeze_stages=15),
    "sgd_top5": dict(optimizer="sgd", lr=1e-3, freeze_stages=15),
    "bf16": dict(),
    "fp32": dict(),
}


def run_variant(head_dir: str, name: str, epochs: int, max_train: int | None, seed: int) -> dict:
    """Fuse the head afresh and fine-tune it with one variant; the per-epoch history."""
    head = load_affine(head_dir)
    backbone = rebuild_backbone(head.feature_identity)
    splits = file_splits(BuildConfig(head_dir=head_dir, out_dir=""), head)
    train = splits.train
    if max_train and len(train) > max_train:
        train = sorted(random.Random(seed).sample(train, max_train))
    fuse_head(backbone, head)
    cfg = replace(FinetuneConfig(epochs=epochs, seed=seed, progress=False), **VARIANTS[name])
    device = torch.device("cpu")
    precision = name if name in ("bf16", "fp32") else resolve_precision("auto", device)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = finetune(backbone, splits.root, train, splits.val, cfg, device, precision, tmp)
    return {"variant": name, "precision": precision, "train_images": len(train), "val_images": len(splits.val),
            "crop_scale": list(result.crop_scale), "best_epoch": result.best_epoch,
            "history": result.history, "seconds": round(time.perf_counter() - started, 1)}


@click.command()
@click.option("--head", "head_dir", required=True)
@click.option("--variants", default="default,previous")
@click.option("--epochs", default=2, type=int)
@click.option("--max-train", default=None, type=int, help="Fine-tune on a seeded sample of this many train images.")
@click.option("--seed", default=0, type=int)
@click.option("--json", "json_path", required=True, help="Append one JSON line per variant.")
def main(head_dir, variants, epochs, max_train, seed, json_path) -> None:
    """Run each variant in turn; one JSON line per variant, one summary line on stderr."""
    for name in variants.split(","):
        record = run_variant(head_dir, name, epochs, max_train, seed)
        record["head"] = head_dir
        with open(json_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        accs = " ".join(f"{h['val_accuracy']:.3f}" for h in record["history"])
        print(f"{name:14s} val by epoch {accs}  ({record['seconds']} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
