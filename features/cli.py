"""``run_extract.py`` / ``tlcache extract``: parse options and call :func:`features.extract.extract`;
``run_extract.py verify FILE...`` (``tlcache verify``) checks feature files in full.

Exit codes are those of :mod:`features.cli_common`.
"""

from __future__ import annotations

import json
import os
import sys

import click

from features.cli_common import (CONTEXT_SETTINGS, EXIT_BAD_INPUT, USER_ERRORS, batch_size_option, default_features_path,
                                 device_option, image_size_option,
                                 exit_codes, fail, precision_option, quiet_option, seed_option, workers_option)
from features.entry import run_command
from features.prefetch import DECODE_MODES
from features.store import FeatureFile, FeatureFileError


@click.command(context_settings=CONTEXT_SETTINGS)
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
@image_size_option()
@click.option("--out", "out_path", type=str,
              help="Output HDF5 file [default: ROOTNAME-BACKBONE.h5; ROOTNAME-BACKBONE-NNNpx.h5 with --image-size].")
@batch_size_option(None)
@workers_option(None, "DataLoader decode workers [default: 0 on 2 CPU cores, more on larger machines and GPUs].")
@click.option("--decode", type=click.Choice(list(DECODE_MODES)), default=None,
              help="Without workers: decode between batches in this thread (turn) or across the cores (pool), "
                   "or in a thread one batch ahead of the model (thread) [default: pool].")
@click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="torch.compile the backbone. auto: on the CPU, only when the forward passes left (timed on the "
                   "first batches) save more than its warm-up of about 30 s.")
@device_option()
@precision_option("Extraction autocast; auto: fp16 on CUDA, bf16 on CPUs with native bf16 (AMX, AVX512-BF16), else fp32.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage type of the features.")
@click.option("--views", default=0, show_default=True, type=click.IntRange(min=0),
              help="Augmented views (RandomResizedCrop + flip) stored per training image, besides the centre crop.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="One labeled split only (an ImageFolder, or --labels without a split column): "
                   "stratified fraction moved to a val split.")
@seed_option("Seed of the val split and of the augmented views.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file made with another configuration.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N files of each split (smoke runs).")
@click.option("--exclude", "exclude", default=None,
              help="File of dataset-relative paths to leave out, one per line (exclude.txt of run_head.py audit).")
@quiet_option()
@click.option("--report", "report_path", default=None, help="Also write the summary as JSON to this file.")
@click.option("--list-backbones", is_flag=True, help="List the registered backbones and exit.")
def extract_command(data_root, labels, image_column, label_column, unlabeled, backbone, weights, image_size, out_path,
                    batch_size, workers, decode, compile_mode, device, precision, dtype, views, val_fraction, seed,
                    overwrite, limit, exclude, quiet, report_path, list_backbones) -> None:
    """Extract pooled features of a frozen pretrained backbone into an HDF5 file (stage one).

    Launched with torchrun, each process extracts a block of every split and rank 0
    merges the blocks into --out (see the README's "Scaling out").
    """
    # torch and torchvision load here, not at import: --help and verify start in a moment.
    from features.backbones import backbone_table
    from features.distributed import shard_from_env
    from features.extract import ExtractConfig, extract

    if list_backbones:
        click.echo("\n".join(backbone_table()))
        return
    if not data_root:
        fail("--data ROOT is required (or use --list-backbones)")
    if out_path is None:
        out_path = default_features_path(data_root, backbone, image_size)
    try:
        shard = shard_from_env(os.environ)
    except ValueError as exc:
        fail(str(exc))
    cfg = ExtractConfig(data_root=data_root, out_path=out_path, backbone=backbone, weights=weights,
                        image_size=image_size, batch_size=batch_size, workers=workers, decode=decode,
                        compile=compile_mode, device=device, precision=precision, dtype=dtype,
                        views=views, val_fraction=val_fraction, seed=seed, overwrite=overwrite, limit=limit,
                        progress=not quiet, shard=shard, exclude=exclude, labels=labels, image_column=image_column,
                        label_column=label_column, unlabeled=tuple(unlabeled))
    with exit_codes(USER_ERRORS, f"interrupted; rerun the same command to resume {out_path}"):
        summary = extract(cfg)
    if report_path and summary.status != "shard written":
        try:
            with open(report_path, "w", encoding="utf-8") as fh:
                json.dump(summary.to_dict(), fh, indent=2)
        except OSError as exc:
            fail(f"cannot write {report_path}: {exc.strerror or exc}")
    if summary.status == "shard written":
        click.echo(f"rank {shard.rank}: shard complete, {summary.path}")
    else:
        click.echo("\n".join(summary.lines()))


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, required=True)
def verify(paths) -> None:
    """Check feature files in full: structure, attributes and every split's checksum."""
    damaged = 0
    for path in paths:
        try:
            with FeatureFile(path) as f:
                checked = f.verify()
                unchecked = f.schema_version < 2
        except FeatureFileError as exc:
            click.echo(f"error: {exc}", err=True)
            damaged += 1
            continue
        rows = ", ".join(f"{split} {n} rows" for split, n in checked.items())
        click.echo(f"ok: {path} ({rows})" + (" - version 1 file: structure only, it has no checksums" if unchecked else ""))
    if damaged:
        sys.exit(EXIT_BAD_INPUT)


def main(args: list[str] | None = None) -> None:
    """Dispatch: ``verify FILE...``, or an extraction (``run_extract.py --data ROOT ...``)."""
    args = sys.argv[1:] if args is None else args
    if args and args[0] == "verify":
        run_command(verify, args[1:], prog_name="run_extract.py verify")
    run_command(extract_command, args, prog_name="run_extract.py")


if __name__ == "__main__":
    main()
