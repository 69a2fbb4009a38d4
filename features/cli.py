"""``run_extract.py`` / ``tlcache-extract``: parse options and call :func:`features.extract.extract`."""

from __future__ import annotations

import os
import sys

import click

from features.backbones import BackboneError, backbone_table
from features.data import DatasetError
from features.distributed import shard_from_env
from features.extract import ExtractConfig, ExtractionError, extract
from features.store import FeatureFileError


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", "data_root", type=str,
              help="Dataset root: ROOT/SPLIT/CLASS/IMAGE, ROOT/CLASS/IMAGE, or the images of --labels.")
@click.option("--labels", type=str, default=None,
              help="CSV/TSV label file (header row): an image column (path under ROOT or bare id), a label column, "
                   "an optional split column. 'none': read class folders only [default: class folders; a label file "
                   "in ROOT is used when the folders are clearly splits].")
@click.option("--image-column", type=str, default=None,
              help="Image column of --labels [default: id, image, image_id, file, file_name, filename or path].")
@click.option("--label-column", type=str, default=None,
              help="Label column of --labels [default: label, class, category, ... or the only other column].")
@click.option("--unlabeled", "unlabeled", multiple=True, type=str,
              help="Folder of images without labels, extracted as a split named after it (label -1). Repeatable.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="Registry name (see --list-backbones).")
@click.option("--weights", default="DEFAULT", show_default=True,
              help="DEFAULT, a torchvision weights name (IMAGENET1K_V1), a state_dict PATH, or none.")
@click.option("--out", "out_path", type=str, help="Output HDF5 file [default: ROOTNAME-BACKBONE.h5].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader decode workers [default: 0 on 2 CPU cores, more on larger machines and GPUs].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: fp16 autocast on CUDA, fp32 on CPU.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage type of the features.")
@click.option("--views", default=0, show_default=True, type=click.IntRange(min=0),
              help="Augmented views (RandomResizedCrop + flip) stored per training image, besides the centre crop.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="One labeled split only (an ImageFolder, or --labels without a split column): "
                   "stratified fraction moved to a val split.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the val split and of the augmented views.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file made with another configuration.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N files of each split (smoke runs).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--list-backbones", is_flag=True, help="List the registered backbones and exit.")
def main(data_root, labels, image_column, label_column, unlabeled, backbone, weights, out_path, batch_size, workers, device, precision, dtype, views, val_fraction,
         seed, overwrite, limit, quiet, list_backbones) -> None:
    """Extract pooled features of a frozen pretrained backbone into an HDF5 file (stage one).

    Launched with torchrun, each process extracts a block of every split and rank 0
    merges the blocks into --out (see the README's "Scaling out").
    """
    if list_backbones:
        click.echo("\n".join(backbone_table()))
        return
    if not data_root:
        _fail("--data ROOT is required (or use --list-backbones)")
    if out_path is None:
        out_path = f"{os.path.basename(os.path.normpath(data_root))}-{backbone}.h5"
    try:
        shard = shard_from_env(os.environ)
    except ValueError as exc:
        _fail(str(exc))
    cfg = ExtractConfig(data_root=data_root, out_path=out_path, backbone=backbone, weights=weights,
                        batch_size=batch_size, workers=workers, device=device, precision=precision, dtype=dtype,
                        views=views, val_fraction=val_fraction, seed=seed, overwrite=overwrite, limit=limit,
                        progress=not quiet, shard=shard, labels=labels, image_column=image_column,
                        label_column=label_column, unlabeled=tuple(unlabeled))
    try:
        summary = extract(cfg)
    except (DatasetError, BackboneError, FeatureFileError, ValueError) as exc:
        _fail(str(exc))
    except ExtractionError as exc:
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        _fail(f"interrupted; rerun the same command to resume {out_path}", code=130)
    if summary.status == "shard written":
        click.echo(f"rank {shard.rank}: shard complete, {summary.path}")
    else:
        click.echo("\n".join(summary.lines()))


if __name__ == "__main__":
    main()
