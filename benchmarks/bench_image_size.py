"""Section 22: the input size of frozen-feature extraction, accuracy against time (efficientnet_lite0)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from benchmarks.bench_extract import digits_dataset, full_path
from benchmarks.bench_finetune import SHAPES, fuse_finetune_auto
from benchmarks.common import HYMENOPTERA, better_same_worse, head_val_accuracy, run_measured

SIZES = (224, 256, 288, 320)
FUSE_SIZE = 288  # hymenoptera's best size above: its heads go through the default fuse command


def shapes_dataset(out_dir: str) -> tuple[str, list[str]]:
    """Section 21's generated shapes (600 train, 300 val at 96 px), written afresh into this section's own folder
    (section 21's quick runs leave a smaller set in theirs); the root and the command."""
    name, train_per_class, val_per_class = SHAPES
    root = os.path.join(out_dir, f"size-{name}")
    shutil.rmtree(root, ignore_errors=True)
    m = run_measured(["benchmarks/shapes_data.py", root, str(train_per_class), str(val_per_class), "0"])
    return root, [m.command]


def section_image_size(out_dir: str, quick: bool) -> list[str]:
    """Extraction at several ``--image-size`` on three datasets: rate, and logreg val accuracy over resplits.

    Parameters
    ----------
    out_dir : str
        Work folder for the datasets and feature files.
    quick : bool
        Two sizes and two resplits (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    sizes = (224, 288) if quick else SIZES
    seeds = 2 if quick else 10
    shapes_root, commands = shapes_dataset(out_dir)
    datasets = [("hymenoptera", HYMENOPTERA), ("digits demo", digits_dataset(out_dir)), ("shapes", shapes_root)]
    lines = ["## 22. Input size for frozen features: accuracy against time (efficientnet_lite0, logreg)", "",
             "Each dataset is extracted at each `--image-size` (the crop side; the resize keeps the 256/224 ratio) "
             "with the other options at their defaults. A logreg head, C chosen by 5-fold CV, is scored on the "
             f"dataset's own split and on {seeds} stratified resplits of every labeled image, the same rows at every "
             "size (`benchmarks/size_evidence.py`). Networks trained with random-resized crops see objects larger "
             "in training than in a centre crop at the same size, so a larger test input often scores better "
             "(Touvron et al., *Fixing the train-test resolution discrepancy*, 2019).", "",
             "| dataset | image size | extraction img/s | time per image vs 224 | own split val acc | mean resplit "
             "val acc | vs 224, images per resplit | better / same / worse than 224 |",
             "|---|---|---|---|---|---|---|---|"]
    for label, root in datasets:
        paths, rates = [], {}
        for size in sizes:
            m, path, rates[size] = full_path(out_dir, "efficientnet_lite0", "DEFAULT", "auto", 32, data=root,
                                             name=f"size-{label.split()[0]}-{size}.h5",
                                             extra=("--image-size", str(size)))
            commands.append(m.command)
            paths.append(path)
        m = run_measured(["benchmarks/size_evidence.py", str(seeds), *paths])
        commands.append(m.command)
        files = json.loads(m.stdout)["files"]
        base = np.array(files[0]["resplits"])
        for f, size in zip(files, sizes):
            acc = np.array(f["resplits"])
            diff = (acc - base) * f["resplit_val_images"]
            lines.append(f"| {label} | {size} | {rates[size]:.1f} | {rates[sizes[0]] / rates[size]:.2f}x | "
                         f"{f['own_split']:.4f} | {acc.mean():.4f} | {diff.mean():+.2f} | "
                         f"{better_same_worse(diff)} |")
    fuse_lines, fuse_commands = _fused_at_size(out_dir, quick)
    return lines + fuse_lines + ["", "```"] + commands + fuse_commands + ["```", ""]


def _fused_at_size(out_dir: str, quick: bool) -> tuple[list[str], list[str]]:
    """Hymenoptera's logreg and ``--init imagenet`` heads on the 224 and ``FUSE_SIZE`` features, and the
    ``FUSE_SIZE`` heads through ``python -m pipeline.fuse --finetune auto``: val accuracy of each."""
    lines = ["", f"Hymenoptera's heads on the 224 and the {FUSE_SIZE} features above; the {FUSE_SIZE} heads then go "
             "through the default fuse command (`--finetune auto`: up to 10 epochs, patience 2, the best epoch "
             "kept; `--lr auto`).", "",
             f"| head | head val acc at 224 | head val acc at {FUSE_SIZE} | after the fuse command | kept epoch | "
             "epochs run | s per epoch |",
             "|---|---|---|---|---|---|---|"]
    commands = []
    for label, extra in (("logreg", ["--clf", "logreg"]),
                         ("linear --init imagenet", ["--clf", "linear", "--init", "imagenet"])):
        name = "imagenet" if "--init" in extra else "logreg"
        heads = {}
        for size in (224, FUSE_SIZE):
            heads[size] = os.path.join(out_dir, f"size-head-{name}-{size}")
            shutil.rmtree(heads[size], ignore_errors=True)
            feats = os.path.join(out_dir, f"size-hymenoptera-{size}.h5")
            commands.append(run_measured(["run_head.py", "--features", feats, *extra, "--out", heads[size]]).command)
        m, tuned, epochs, per_epoch = fuse_finetune_auto(heads[FUSE_SIZE], os.path.join(
            out_dir, f"size-model-{name}-{FUSE_SIZE}"), quick)
        commands.append(m.command)
        lines.append(f"| {label} | {head_val_accuracy(heads[224])[0]:.4f} | {head_val_accuracy(heads[FUSE_SIZE])[0]:.4f} | "
                     f"{tuned['best_val_accuracy']:.4f} | {tuned['best_epoch']} | {epochs} | {per_epoch:.1f} |")
    return lines, commands
