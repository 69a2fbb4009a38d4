"""``python -m pipeline.fuse`` / ``tlcache fuse``: fuse a head, optionally fine-tune, export.

The library behind it is :mod:`pipeline.build_model` (and :mod:`pipeline.fusing`).
"""

from __future__ import annotations

import click

from features.cli_common import (CONTEXT_SETTINGS, auto_or_input_size, auto_or_positive, batch_size_option,
                                 device_option, exit_codes, fail, precision_option, quiet_option, seed_option,
                                 workers_option)
from pipeline.build_model import BuildConfig, build_model
from pipeline.export import ONNX_PACKAGES, onnx_available
from pipeline.filenames import MODEL_META
from pipeline.finetune import OPTIMIZERS, FinetuneConfig
from pipeline.learning_rate import FAMILIAR_LR, FAMILIARITY_THRESHOLD, UNFAMILIAR_LR, format_rate
from pipeline.user_errors import USER_ERRORS

_D = FinetuneConfig(epochs=0)  # the defaults live in one place
AUTO_MAX_EPOCHS = 10
AUTO_PATIENCE = 2


def parse_crop_scale(text: str) -> tuple[float, float] | None:
    """``auto`` -> ``None``; ``LO,HI`` -> ``(LO, HI)`` with 0 < LO <= HI <= 1.

    Raises
    ------
    click.BadParameter
    """
    if text == "auto":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not auto or LO,HI", param_hint="--crop-scale") from None
    if not 0 < lo <= hi <= 1:
        raise click.BadParameter(f"{text!r} needs 0 < LO <= HI <= 1", param_hint="--crop-scale")
    return lo, hi


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--head", "head_dir", required=True, help="HEAD_DIR from run_head.py (a linear head).")
@click.option("--out", "out_dir", required=True, help="MODEL_DIR to write.")
@click.option("--data", "data_root", default=None, help="Image root [default: the one the features came from].")
@click.option("--features", "features_path", default=None,
              help="The head's feature file, whose splits give the images to check and fine-tune on "
                   "[default: the one recorded in the head].")
@click.option("--finetune", "finetune_mode", type=click.Choice(["off", "auto"]), default="off", show_default=True,
              help=f"auto: fine-tune until val accuracy has not improved for --patience epochs (at most "
                   f"{AUTO_MAX_EPOCHS}, or --finetune-epochs); the best epoch is kept.")
@click.option("--finetune-epochs", default=None, type=click.IntRange(min=0),
              help="Fine-tune this many epochs (the most, with --finetune auto) [default: 0, no fine-tuning].")
@click.option("--patience", default=None, type=click.IntRange(min=1),
              help=f"Stop after this many epochs without a better val accuracy [default: {AUTO_PATIENCE} with "
                   "--finetune auto, else off].")
@click.option("--lr", default="auto", show_default=True, callback=auto_or_positive,
              help=f"Body learning rate (peak, after warm-up); auto: {format_rate(UNFAMILIAR_LR)} where the "
                   f"backbone's own ImageNet classifier finds the training images unfamiliar (mean top-class "
                   f"probability below {FAMILIARITY_THRESHOLD}), else {format_rate(FAMILIAR_LR)}.")
@click.option("--head-lr-mult", default=_D.head_lr_mult, show_default=True, type=click.FloatRange(min=0),
              help="Head lr = lr x this.")
@click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default=_D.optimizer, show_default=True)
@click.option("--frozen-epochs", default=_D.frozen_epochs, show_default=True, type=click.IntRange(min=0),
              help="First train the head alone for this many epochs (counted in the total).")
@click.option("--freeze-stages", default=_D.freeze_stages, show_default=True, type=click.IntRange(min=0),
              help="Freeze the lowest K stages (weights and BatchNorm statistics).")
@click.option("--train-bn/--freeze-bn", default=_D.train_bn, show_default=True,
              help="Update BatchNorm statistics from training batches, or keep the pretrained ones (their affine "
                   "weights learn either way).")
@click.option("--dropout/--no-dropout", default=_D.dropout, show_default=True,
              help="Dropout and drop-connect active in training (off: the network runs as at inference).")
@click.option("--label-smoothing", default=_D.label_smoothing, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--ema", "ema_half_life", default=_D.ema_half_life or 0.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Score and keep an exponential moving average of the weights with this half-life in epochs, e.g. "
                   "0.5 (it starts at the fused head); 0: the trained weights as they are.")
@click.option("--crop-scale", default="auto", show_default=True,
              help="RandomResizedCrop area share LO,HI (e.g. 0.08,1); auto: chosen from the images' resolution.")
@click.option("--flip/--no-flip", default=_D.flip, show_default=True,
              help="Random horizontal flips (turn off where mirror images mean something else, e.g. text).")
@batch_size_option(16)
@workers_option(0, "DataLoader decode workers for fine-tuning.")
@device_option()
@precision_option("Fine-tuning autocast; auto: bf16 on CPUs with AMX or AVX512-BF16, fp16 AMP on CUDA, else fp32.")
@seed_option()
@click.option("--resume", is_flag=True, help="Continue an interrupted fine-tune from MODEL_DIR/checkpoint.pt.")
@click.option("--input-size", default="auto", show_default=True, callback=auto_or_input_size,
              help="Input side of the exported model; auto: the extraction size or 8/7 or 9/7 of it (256 and 288 for "
                   "224), whichever scores best on the val split, each larger side with the better of the fused and "
                   "the refitted head (a larger input often pays for photos: see the README); N: that side.")
@click.option("--refit-head/--no-refit-head", default=True, show_default=True,
              help="At input sizes other than the extraction's, also refit the head the way run_head.py fitted it, on "
                   "the training images' features at that size; it is kept unless it scores worse on val.")
@click.option("--onnx/--no-onnx", default=None,
              help="Also export model.onnx, checked with onnxruntime (adds about 10 s for efficientnet_lite0 on 2 "
                   "cores) [default: when the onnx extra is installed].")
@quiet_option()
def main(head_dir, out_dir, data_root, features_path, finetune_mode, finetune_epochs, patience, lr, head_lr_mult,
         optimizer, frozen_epochs, freeze_stages, train_bn, dropout, label_smoothing, ema_half_life, crop_scale, flip,
         batch_size, workers, device, precision, seed, resume, input_size, refit_head, onnx, quiet) -> None:
    """Fuse a trained head into its backbone, fine-tune end to end (optional), export and verify."""
    if onnx and not onnx_available():
        fail(f"--onnx needs the onnx extra: pip install {' '.join(ONNX_PACKAGES)}")
    if finetune_mode == "auto":
        finetune_epochs = AUTO_MAX_EPOCHS if finetune_epochs is None else finetune_epochs
        patience = AUTO_PATIENCE if patience is None else patience
    ft = FinetuneConfig(epochs=finetune_epochs or 0, lr=None if lr == "auto" else lr, head_lr_mult=head_lr_mult,
                        optimizer=optimizer, frozen_epochs=frozen_epochs, freeze_stages=freeze_stages,
                        train_bn=train_bn, dropout=dropout, label_smoothing=label_smoothing,
                        ema_half_life=ema_half_life or None,
                        crop_scale=parse_crop_scale(crop_scale), flip=flip,
                        patience=patience, batch_size=batch_size, workers=workers, seed=seed, resume=resume,
                        progress=not quiet)
    cfg = BuildConfig(head_dir=head_dir, out_dir=out_dir, data_root=data_root, features_path=features_path,
                      finetune=ft, device=device, precision=precision, onnx=onnx is not False,
                      input_size=input_size, refit_head=refit_head)
    interrupted = (f"interrupted; rerun with --resume to continue from the last epoch checkpoint in {out_dir}.partial"
                   if ft.epochs else f"interrupted; nothing was written to {out_dir}; rerun the command")
    with exit_codes(USER_ERRORS, interrupted):
        sidecar = build_model(cfg, log=click.echo)
    files = [info["file"] for info in sidecar["exports"].values() if "file" in info]
    click.echo(f"saved {out_dir}/ ({', '.join(files + [MODEL_META])})")


if __name__ == "__main__":
    from features.entry import run_command

    run_command(main)
