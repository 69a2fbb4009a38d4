"""Sections on stage two and the whole chain: time to accuracy vs the tutorial, head scaling."""

from __future__ import annotations

import json
import os
import re

from benchmarks.common import HYMENOPTERA, run_measured


def _val_accuracy(stdout: str) -> float:
    return float(re.search(r"val: accuracy ([\d.]+)", stdout).group(1))


def section_time_to_accuracy(out_dir: str, quick: bool) -> list[str]:
    """(a)/(b) the tutorial's methods vs (c)/(d)/(e) this project, same backbone, one run."""
    # The tutorial's full fine-tune needs about half an hour for 25 epochs on 2 cores: the full
    # benchmark runs 3 of them and extrapolates the time; it says so in the table.
    planned = {"fixed": 1 if quick else 25, "finetune": 1 if quick else 3}
    ft_epochs = 1 if quick else 2
    rows, commands = [], []
    results = {}
    for mode, label in (("fixed", "(a) tutorial: fixed feature extractor"), ("finetune", "(b) tutorial: full fine-tune")):
        m = run_measured(["benchmarks/tutorial_baseline.py", mode, str(planned[mode])])
        r = json.loads(m.stdout)
        commands.append(m.command)
        seconds, note = m.seconds, f"{planned[mode]} epochs, batch 4, best epoch kept"
        if not quick and planned[mode] < 25:
            per_epoch = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
            seconds = m.seconds + per_epoch * (25 - planned[mode])
            note = (f"ran {planned[mode]} of 25 epochs ({m.seconds:.0f} s, {per_epoch:.0f} s/epoch); wall time "
                    f"extrapolated to 25 epochs; accuracy is the best of the epochs run")
        results[mode] = seconds
        rows.append((label, seconds, r["best_val_accuracy"], note))
    feats = os.path.join(out_dir, "tta-lite0.h5")
    ext = run_measured(["run_extract.py", "--data", HYMENOPTERA, "--out", feats, "--overwrite", "--quiet"])
    commands.append(ext.command)
    logreg = run_measured(["run_head.py", "--features", feats, "--clf", "logreg", "--out", os.path.join(out_dir, "tta-logreg")])
    imagenet_dir = os.path.join(out_dir, "tta-imagenet")
    imagenet = run_measured(["run_head.py", "--features", feats, "--clf", "linear", "--init", "imagenet", "--out", imagenet_dir])
    fuse = run_measured(["-m", "pipeline.fuse", "--head", imagenet_dir, "--out", os.path.join(out_dir, "tta-model"),
                         "--finetune-epochs", str(ft_epochs), "--quiet"])
    commands += [logreg.command, imagenet.command, fuse.command]
    sidecar = json.load(open(os.path.join(out_dir, "tta-model", "model.json"), encoding="utf-8"))
    ft_acc = max(h["val_accuracy"] for h in sidecar["finetune"]["history"][1:])
    rows.append(("(c) extract + logreg head", ext.seconds + logreg.seconds, _val_accuracy(logreg.stdout),
                 "C by 5-fold CV on train"))
    rows.append(("(d) extract + linear --init imagenet", ext.seconds + imagenet.seconds, _val_accuracy(imagenet.stdout),
                 "C by 5-fold CV on train"))
    rows.append(("(e) extract + (d) + fuse + fine-tune", ext.seconds + imagenet.seconds + fuse.seconds, ft_acc,
                 f"{ft_epochs} fine-tuning epochs (best fine-tuned epoch's val accuracy; export included)"))
    base = results["fixed"]
    lines = ["## 2. Time to accuracy against the tutorial method (hymenoptera, EfficientNet-Lite0, 2 cores)", "",
             "Wall time of each whole command (process start, model loading, everything). Tutorial runs use "
             "torchvision's ImageFolder, which skips `imageNotFound.gif` (244 train images); this project reads it (245).",
             "", "| path | wall s | val accuracy | speed-up over (a) | notes |", "|---|---|---|---|---|"]
    for label, seconds, acc, note in rows:
        lines.append(f"| {label} | {seconds:.1f} | {acc:.4f} | {base / seconds:.1f}x | {note} |")
    if quick:
        lines += ["", "Quick run: the tutorial baselines ran 1 epoch instead of 25, so these ratios are not the real ones."]
    lines += ["", "```"] + commands + ["```", ""]
    return lines


def section_head_scaling(quick: bool) -> list[str]:
    """Fit time and peak memory of each head vs rows and dims, with and without the C sweep."""
    sizes = [1000] if quick else [1000, 10000, 30000]
    dims = [1280] if quick else [1280, 2048]
    sweep_max = 1000
    lines = ["## 3. Stage-two scaling (generated 10-class features, float32)", "",
             "Fit time of the head alone (no HDF5 read). `sweep`: C chosen by 5-fold CV over 15 values "
             f"(75 fits, joblib on all cores) then the refit; run up to {sweep_max} rows. `fixed`: one fit with C=1.",
             "", "| rows | dim | head | fixed C s | fixed peak RSS MB | sweep s | sweep peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    commands = []
    for dim in dims:
        for rows in sizes:
            for clf in ("logreg", "svm", "linear"):
                fixed = run_measured(["benchmarks/head_fit.py", clf, str(rows), str(dim), "0"])
                commands.append(fixed.command)
                sweep_s = sweep_mb = "-"
                if rows <= sweep_max:
                    sweep = run_measured(["benchmarks/head_fit.py", clf, str(rows), str(dim), "1"])
                    commands.append(sweep.command)
                    sweep_s, sweep_mb = f"{float(sweep.stdout):.2f}", f"{sweep.peak_rss_mb:.0f}"
                lines.append(f"| {rows} | {dim} | {clf} | {float(fixed.stdout):.2f} | {fixed.peak_rss_mb:.0f} | "
                             f"{sweep_s} | {sweep_mb} |")
    lines += ["", "```"] + commands[:6] + [f"... ({len(commands)} commands, same pattern)"] + ["```", ""]
    return lines
