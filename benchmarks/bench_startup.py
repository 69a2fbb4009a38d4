"""Section on start-up: what a command costs before it does anything, and the folder-to-head path both ways
against the tutorial's method."""

from __future__ import annotations

import json
import os
import shutil

from benchmarks.common import HYMENOPTERA, head_val_accuracy, run_measured


def _best_of(args: list[str], repeats: int) -> tuple[float, str]:
    runs = [run_measured(args) for _ in range(repeats)]
    return min(r.seconds for r in runs), runs[0].command


def section_startup(out_dir: str, quick: bool) -> list[str]:
    """Wall time of commands that need no backbone, beside the cost of importing torch and torchvision.

    Parameters
    ----------
    out_dir : str
        Work folder for the feature files and heads.
    quick : bool
        One repeat instead of three (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    repeats = 1 if quick else 3
    feats = os.path.join(out_dir, "startup-lite0.h5")
    two = [run_measured(["run_extract.py", "--data", HYMENOPTERA, "--out", feats, "--overwrite", "--quiet"]),
           run_measured(["run_head.py", "--features", feats, "--clf", "logreg", "--out", os.path.join(out_dir, "startup-head")])]
    one_feats, one_head = os.path.join(out_dir, "startup-fit-lite0.h5"), os.path.join(out_dir, "startup-fit-head")
    for path in (one_feats, one_head):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    one = run_measured(["-m", "pipeline.cli", "fit", "--data", HYMENOPTERA, "--features", one_feats, "--clf", "logreg",
                        "--out", one_head, "--quiet"])
    probes = [("import torch, torchvision (for reference)", ["-c", "import torch, torchvision"]),
              ("run_extract.py --help", ["run_extract.py", "--help"]),
              ("run_extract.py verify FILE", ["run_extract.py", "verify", feats]),
              ("run_head.py --help", ["run_head.py", "--help"]),
              ("run_head.py predict (logreg head, val split)",
               ["run_head.py", "predict", "--head", os.path.join(out_dir, "startup-head"), "--features", feats,
                "--split", "val", "--out", os.path.join(out_dir, "startup-val.csv")])]
    lines = ["## 13. Start-up: commands that need no backbone, and folder to head in one process or two against the "
             "tutorial", "",
             f"Wall time of each whole command, best of {repeats}. Only extraction, the torch `linear` head, "
             "streaming heads, fusing and prediction on images load torch; the rest start without it.", "",
             "| command | wall s |", "|---|---|"]
    commands = []
    for label, args in probes:
        seconds, command = _best_of(args, repeats)
        commands.append(command)
        lines.append(f"| {label} | {seconds:.2f} |")
    two_s = sum(m.seconds for m in two)
    epochs = 1 if quick else 25
    tutorial = run_measured(["benchmarks/tutorial_baseline.py", "fixed", str(epochs)])
    tutorial_acc = json.loads(tutorial.stdout)["best_val_accuracy"]
    lines += ["", "Folder to trained logreg head on hymenoptera, one run each, against the tutorial's fixed-feature-"
              f"extractor method (section 2's row (a): {epochs} epochs, batch 4, fp32, the best epoch kept) in the "
              "same run. This project's commands run with their defaults (`--precision auto`, `--compile auto`).", "",
              "| path | wall s | val accuracy | speed-up over the tutorial |", "|---|---|---|---|",
              f"| tutorial: fixed feature extractor | {tutorial.seconds:.1f} | {tutorial_acc:.4f} | 1.0x |",
              f"| `run_extract.py` then `run_head.py` | {two_s:.1f} | "
              f"{head_val_accuracy(os.path.join(out_dir, 'startup-head'))[0]:.4f} | {tutorial.seconds / two_s:.1f}x |",
              f"| `tlcache fit` (one process) | {one.seconds:.1f} | {head_val_accuracy(one_head)[0]:.4f} | "
              f"{tutorial.seconds / one.seconds:.1f}x |",
              "", f"One process against two: {two_s / one.seconds:.2f}x."]
    if quick:
        lines.append("Quick run: the tutorial ran 1 epoch instead of 25, so its ratio is not the real one.")
    return lines + ["", "```"] + commands + [m.command for m in two] + [one.command, tutorial.command] + ["```", ""]
