"""Section 23: the exported model's input size and head, chosen on val by ``pipeline.fuse --input-size auto``."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from benchmarks.bench_extract import digits_dataset, full_path
from benchmarks.bench_finetune import fuse_measured
from benchmarks.bench_image_size import shapes_dataset
from benchmarks.common import HYMENOPTERA, better_same_worse, head_val_accuracy, run_measured
from pipeline.input_size import candidate_sizes

EXTRACTION_SIZE = 224
SIZES = candidate_sizes(EXTRACTION_SIZE)


def section_input_size(out_dir: str, quick: bool) -> list[str]:
    """A 224-px head fed larger inputs, over resplits; then the fuse command's choice per dataset.

    Parameters
    ----------
    out_dir : str
        Work folder for the datasets, feature files, heads and models.
    quick : bool
        Two resplits and one fine-tuning epoch (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    seeds = 2 if quick else 10
    shapes_root, commands = shapes_dataset(out_dir)
    datasets = [("hymenoptera", HYMENOPTERA), ("digits demo", digits_dataset(out_dir)), ("shapes", shapes_root)]
    lines = ["## 23. The exported model's input size and head, chosen on val (`pipeline.fuse --input-size auto`, "
             "efficientnet_lite0)", "",
             f"A fused model takes any input size. Here a logreg head fitted on the {EXTRACTION_SIZE}-px features "
             f"(C by 5-fold CV) scores the features of the same val images at {', '.join(map(str, SIZES[1:]))} px: "
             "what the fused head computes when fed larger inputs, with nothing refitted (fed). Beside it, a logreg "
             "head fitted the same way on the training images' features at each side (refitted): what the fuse "
             "command's refit does, from these feature files (extracted with `--precision auto`) where the fuse "
             "command computes them in fp32 through the exported network. The dataset's own split, and "
             f"{seeds} stratified resplits of every labeled image (the same ones for every column), heads fitted on "
             "each resplit's train rows (`benchmarks/size_evidence.py --head-from-first`, and without it).", "",
             f"| dataset | input size | head | own split val acc | mean resplit val acc | vs {EXTRACTION_SIZE}, "
             f"images per resplit | better / same / worse than {EXTRACTION_SIZE} |",
             "|---|---|---|---|---|---|---|"]
    features = {}
    for label, root in datasets:
        paths = []
        for size in SIZES:
            m, path, _ = full_path(out_dir, "efficientnet_lite0", "DEFAULT", "auto", 32, data=root,
                                   name=f"input-{label.split()[0]}-{size}.h5", extra=("--image-size", str(size)))
            commands.append(m.command)
            paths.append(path)
        features[label] = paths[0]
        evidence = {}
        for head, mode in (("fed", ["--head-from-first"]), ("refitted", [])):
            m = run_measured(["benchmarks/size_evidence.py", *mode, str(seeds), *paths])
            commands.append(m.command)
            evidence[head] = json.loads(m.stdout)["files"]
        base = np.array(evidence["fed"][0]["resplits"])  # the 224-px head: the same in both modes
        for i, size in enumerate(SIZES):
            for head in ("fed", "refitted") if i else ("fed",):
                f = evidence[head][i]
                acc = np.array(f["resplits"])
                diff = (acc - base) * f["resplit_val_images"]
                lines.append(f"| {label} | {size} | {head if i else 'its own'} | {f['own_split']:.4f} | "
                             f"{acc.mean():.4f} | {diff.mean():+.2f} | {better_same_worse(diff)} |")
    fuse_lines, fuse_commands = _fuse_choices(out_dir, features, quick)
    return lines + fuse_lines + ["", "```"] + commands + fuse_commands + ["```", ""]


def _fuse_choices(out_dir: str, features: dict[str, str], quick: bool) -> tuple[list[str], list[str]]:
    """Heads on each dataset's 224-px features through the fuse command: the kept epoch, then the input size."""
    runs = [("hymenoptera", "logreg", ["--clf", "logreg"], ["--finetune", "auto"]),
            ("hymenoptera", "linear --init imagenet", ["--clf", "linear", "--init", "imagenet"], ["--finetune", "auto"]),
            ("digits demo", "logreg", ["--clf", "logreg"], ["--finetune-epochs", "3", "--no-flip"]),
            ("shapes", "logreg", ["--clf", "logreg"], ["--finetune-epochs", "3"])]
    lines = ["", "Each head, on the dataset's 224-px features above, through the fuse command with the input size "
             "left to `--input-size auto`: fine-tuning first (`--finetune auto` is the default command: up to 10 "
             "epochs, patience 2; the digits demo's own command and the shapes run take 3 epochs; `--lr auto`), its "
             "best epoch kept on val at 224 px, then that model scored on val as exported (BatchNorm folded) at each "
             "side, fed and with its head refitted there on the training images (logreg heads; a head initialised "
             "from ImageNet's classifier is not refitted), and exported at the best side with the better head. "
             "These choices are made on the same val images, so the exported model's val accuracy is an optimistic "
             "estimate; the resplits above are the check that does not select on them.", "",
             f"| dataset | head | fuse options | head val acc | kept epoch | val acc at "
             f"{' / '.join(map(str, SIZES))} | refitted at {' / '.join(map(str, SIZES[1:]))} | input size | "
             "exported head | exported model's val acc | epochs run | s per epoch | s to choose the size |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for label, head_label, head_args, fuse_args in runs:
        name = f"input-{label.split()[0]}-{head_args[1]}{'-imagenet' if '--init' in head_args else ''}"
        head, model = os.path.join(out_dir, f"{name}-head"), os.path.join(out_dir, f"{name}-model")
        shutil.rmtree(head, ignore_errors=True)
        commands.append(run_measured(["run_head.py", "--features", features[label], *head_args, "--out", head]).command)
        options = ["--finetune-epochs", "1"] if quick else fuse_args
        m, meta, epochs, per_epoch = fuse_measured(head, model, options)
        commands.append(m.command)
        ft, choice = meta["finetune"], meta["input_size_choice"]
        scored = " / ".join(f"{choice['val_accuracy'][str(s)]:.4f}" for s in SIZES)
        refitted = choice["val_accuracy_refit"]
        refit = " / ".join(f"{refitted[str(s)]:.4f}" if str(s) in refitted else "-" for s in SIZES[1:])
        kept = (refitted if choice["head"] == "refitted" else choice["val_accuracy"])[str(choice["size"])]
        lines.append(f"| {label} | {head_label} | `{' '.join(options)}` | {head_val_accuracy(head)[0]:.4f} | "
                     f"{ft['best_epoch']} | {scored} | {refit} | {choice['size']} | {choice['head']} | {kept:.4f} | "
                     f"{epochs} | {per_epoch:.1f} | {choice['seconds']:.1f} |")
    return lines, commands
