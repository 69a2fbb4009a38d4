"""``python -m pipeline.fuse`` / ``tlcache fuse``: fuse a head, optionally fine-tune, export.

The library behind it is :mod:`pipeline.build_model` (and :mod:`pipeline.fusing`).
"""

from __future__ import annotations

import click

from features.cli_common import (CONTEXT_SETTINGS, batch_size_option, device_option, exit_codes, fail,
                                 precision_option, quiet_option, seed_option, workers_option)
from pipeline.build_model import BuildConfig, build_model
from pipeline.export import ONNX_PACKAGES, onnx_available
from pipeline.filenames import MODEL_META
from pipeline.finetune import FinetuneConfig
from pipeline.user_errors import USER_ERRORS


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--head", "head_dir", required=True, help="HEAD_DIR from run_head.py (a linear head).")
@click.option("--out", "out_dir", required=True, help="MODEL_DIR to write.")
@click.option("--data", "data_root", default=None, help="Image root [default: the one the features came from].")
@click.option("--features", "features_path", default=None,
              help="The head's feature file, whose splits give the images to check and fine-tune on "
                   "[default: the one recorded in the head].")
@click.option("--finetune-epochs", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Body learning rate.")
@click.option("--head-lr-mult", default=10.0, show_default=True, type=click.FloatRange(min=0), help="Head lr = lr x this.")
@click.option("--freeze-stages", default=0, show_default=True, type=click.IntRange(min=0),
              help="Freeze the lowest K stages (weights and BatchNorm statistics).")
@click.option("--freeze-bn", is_flag=True,
              help="Keep every BatchNorm layer's pretrained statistics (default: update them from training batches).")
@batch_size_option(16)
@workers_option(0, "DataLoader decode workers for fine-tuning.")
@device_option()
@precision_option("Fine-tuning autocast; auto: bf16 on CPUs with native bf16, fp16 AMP on CUDA.")
@seed_option()
@click.option("--resume", is_flag=True, help="Continue an interrupted fine-tune from MODEL_DIR/checkpoint.pt.")
@click.option("--onnx/--no-onnx", default=None,
              help="Also export model.onnx, checked with onnxruntime (adds about 10 s for efficientnet_lite0 on 2 "
                   "cores) [default: when the onnx extra is installed].")
@quiet_option()
def main(head_dir, out_dir, data_root, features_path, finetune_epochs, lr, head_lr_mult, freeze_stages, freeze_bn, batch_size, workers,
         device, precision, seed, resume, onnx, quiet) -> None:
    """Fuse a trained head into its backbone, fine-tune end to end (optional), export and verify."""
    if onnx and not onnx_available():
        fail(f"--onnx needs the onnx extra: pip install {' '.join(ONNX_PACKAGES)}")
    ft = FinetuneConfig(epochs=finetune_epochs, lr=lr, head_lr_mult=head_lr_mult, freeze_stages=freeze_stages,
                        train_bn=not freeze_bn, batch_size=batch_size, workers=workers, seed=seed, resume=resume, progress=not quiet)
    cfg = BuildConfig(head_dir=head_dir, out_dir=out_dir, data_root=data_root, features_path=features_path,
                      finetune=ft, device=device, precision=precision, onnx=onnx is not False)
    interrupted = f"interrupted; rerun with --resume to continue from the last epoch checkpoint in {out_dir}.partial"
    with exit_codes(USER_ERRORS, interrupted):
        sidecar = build_model(cfg, log=click.echo)
    files = [info["file"] for info in sidecar["exports"].values() if "file" in info]
    click.echo(f"saved {out_dir}/ ({', '.join(files + [MODEL_META])})")


if __name__ == "__main__":
    main()
