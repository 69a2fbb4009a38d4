"""``python -m pipeline.fuse`` / ``tlcache-fuse``: fuse a head, optionally fine-tune, export."""

from __future__ import annotations

import sys

import click

from features.backbones import BackboneError
from features.data import DatasetError
from features.locking import LockError
from features.store import FeatureFileError
from pipeline.affine import HeadError
from pipeline.build_model import BuildConfig, build_model
from pipeline.export import ONNX_PACKAGES, ExportMismatch, onnx_available
from pipeline.finetune import FinetuneConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Fine-tuning autocast; auto: bf16 on CPUs with native bf16, fp16 AMP on CUDA.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue an interrupted fine-tune from MODEL_DIR/checkpoint.pt.")
@click.option("--onnx/--no-onnx", default=None,
              help="Also export model.onnx, checked with onnxruntime (adds about 10 s for efficientnet_lite0 on 2 "
                   "cores) [default: when the onnx extra is installed].")
@click.option("--quiet", is_flag=True, help="No progress line.")
def main(head_dir, out_dir, data_root, features_path, finetune_epochs, lr, head_lr_mult, freeze_stages, freeze_bn, batch_size, workers,
         device, precision, seed, resume, onnx, quiet) -> None:
    """Fuse a trained head into its backbone, fine-tune end to end (optional), export and verify."""
    if onnx and not onnx_available():
        click.echo(f"error: --onnx needs the onnx extra: pip install {' '.join(ONNX_PACKAGES)}", err=True)
        sys.exit(2)
    ft = FinetuneConfig(epochs=finetune_epochs, lr=lr, head_lr_mult=head_lr_mult, freeze_stages=freeze_stages,
                        train_bn=not freeze_bn, batch_size=batch_size, workers=workers, seed=seed, resume=resume, progress=not quiet)
    cfg = BuildConfig(head_dir=head_dir, out_dir=out_dir, data_root=data_root, features_path=features_path,
                      finetune=ft, device=device, precision=precision, onnx=onnx is not False)
    try:
        sidecar = build_model(cfg, log=click.echo)
    except (HeadError, DatasetError, BackboneError, ExportMismatch, FeatureFileError, LockError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo(f"error: interrupted; rerun with --resume to continue from the last epoch checkpoint in {out_dir}.partial",
                   err=True)
        sys.exit(130)
    files = [info["file"] for info in sidecar["exports"].values() if "file" in info]
    click.echo(f"saved {out_dir}/ ({', '.join(files + ['model.json'])})")


if __name__ == "__main__":
    main()
