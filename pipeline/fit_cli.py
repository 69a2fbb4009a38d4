"""``tlcache fit``: image folder to trained head in one process (extraction, then the head).

It writes the same feature file and head folder as ``run_extract.py`` followed by
``run_head.py``, and saves the second interpreter start-up and imports.
"""

from __future__ import annotations

import click

from features.cli_common import (CONTEXT_SETTINGS, auto_or_positive, batch_size_option, default_features_path,
                                 device_option, exit_codes, image_size_option, precision_option, quiet_option,
                                 seed_option, workers_option)
from features.extract import ExtractConfig, extract
from pipeline.train_head import HeadConfig, summary_lines, train_head
from pipeline.user_errors import USER_ERRORS


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--data", "data_root", required=True,
              help="Dataset root: ROOT/SPLIT/CLASS/IMAGE, ROOT/CLASS/IMAGE, or the images of --labels.")
@click.option("--labels", default=None, help="CSV/TSV label file (see `tlcache extract --help`).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="Registry name.")
@click.option("--weights", default="DEFAULT", show_default=True)
@image_size_option()
@click.option("--features", "features_path", default=None,
              help="Feature file to write (or resume) [default: ROOTNAME-BACKBONE.h5; "
                   "ROOTNAME-BACKBONE-NNNpx.h5 with --image-size].")
@click.option("--overwrite", is_flag=True, help="Replace an existing feature file made with another configuration.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="One labeled split only: stratified fraction moved to a val split.")
@batch_size_option(None)
@workers_option(None, "DataLoader decode workers [default: by machine].")
@device_option()
@precision_option("Extraction autocast; auto: fp16 on CUDA, bf16 on CPUs with native bf16 (AMX, AVX512-BF16), else fp32.")
@click.option("--clf", type=click.Choice(["svm", "logreg", "linear"]), default="logreg", show_default=True)
@click.option("--C", "C", default="auto", show_default=True, callback=auto_or_positive,
              help="Inverse regularisation, or auto: chosen by K-fold CV on train.")
@click.option("--cv", default=5, show_default=True, type=click.IntRange(min=2), help="Folds of the C sweep.")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@seed_option("Seed of the val split and of the C sweep's folds.")
@click.option("--out", "out_dir", default="head", show_default=True, help="HEAD_DIR to write.")
@quiet_option()
def fit_command(data_root, labels, backbone, weights, image_size, features_path, overwrite, val_fraction, batch_size,
                workers, device, precision, clf, C, cv, class_weight, seed, out_dir, quiet) -> None:
    """Extract features and train a head in one process: `tlcache extract` then `tlcache head`."""
    features_path = features_path or default_features_path(data_root, backbone, image_size)
    extraction = ExtractConfig(data_root=data_root, out_path=features_path, backbone=backbone, weights=weights,
                               image_size=image_size, batch_size=batch_size, workers=workers, device=device,
                               precision=precision, val_fraction=val_fraction, seed=seed, overwrite=overwrite,
                               progress=not quiet, labels=labels)
    head = HeadConfig(features_path=features_path, out_dir=out_dir, clf=clf, C=C, cv=cv,
                      class_weight=None if class_weight == "none" else class_weight, seed=seed)
    with exit_codes(USER_ERRORS, f"interrupted; rerun the same command to resume {features_path}"):
        summary = extract(extraction)
        click.echo("\n".join(summary.lines()))
        result = train_head(head)
    click.echo("\n".join(summary_lines(result, out_dir)))


if __name__ == "__main__":
    from features.entry import run_command

    run_command(fit_command)
