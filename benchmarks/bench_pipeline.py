"""Sections on stage two and the whole chain: time to accuracy vs the tutorial, head scaling."""

from __future__ import annotations

import json
import os

from benchmarks.common import HYMENOPTERA, head_val_accuracy, run_measured


def section_time_to_accuracy(out_dir: str, quick: bool) -> list[str]:
    """(a)/(b) the tutorial's methods vs (c)/(d)/(e) this project, same backbone, one run."""
    planned = {"fixed": 1 if quick else 25, "finetune": 1 if quick else 25}
    ft_epochs = 1 if quick else 2
    rows, commands = [], []
    results = {}
    for mode, label in (("fixed", "(a) tutorial: fixed feature extractor"), ("finetune", "(b) tutorial: full fine-tune")):
        m = run_measured(["benchmarks/tutorial_baseline.py", mode, str(planned[mode])])
        r = json.loads(m.stdout)
        commands.append(m.command)
        seconds = m.seconds
        note = f"{planned[mode]} epochs ({sum(r['epoch_seconds']) / planned[mode]:.1f} s/epoch), batch 4, best epoch kept"
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
    rows.append(("(c) extract + logreg head", ext.seconds + logreg.seconds, head_val_accuracy(os.path.join(out_dir, "tta-logreg"))[0],
                 "C by 5-fold CV on train"))
    rows.append(("(d) extract + linear --init imagenet", ext.seconds + imagenet.seconds, head_val_accuracy(imagenet_dir)[0],
                 "C by 5-fold CV on train"))
    rows.append(("(e) extract + (d) + fuse + fine-tune", ext.seconds + imagenet.seconds + fuse.seconds, ft_acc,
                 f"{ft_epochs} fine-tuning epochs (best fine-tuned epoch's val accuracy; export included)"))
    base = results["fixed"]
    lines = ["## 2. Time to accuracy against the tutorial method (hymenoptera, EfficientNet-Lite0, 2 cores)", "",
             "Wall time of each whole command (process start, model loading, everything). Tutorial runs use "
             "torchvision's ImageFolder, which skips `imageNotFound.gif` (244 train images); this project reads it (245). "
             "The tutorial scripts run as a user would run them, with glibc's default allocator settings; this "
             "project's commands keep freed memory for reuse (section 1), which is part of their speed.",
             "", "| path | wall s | val accuracy | speed-up over (a) | notes |", "|---|---|---|---|---|"]
    for label, seconds, acc, note in rows:
        lines.append(f"| {label} | {seconds:.1f} | {acc:.4f} | {base / seconds:.1f}x | {note} |")
    if quick:
        lines += ["", "Quick run: the tutorial baselines ran 1 epoch instead of 25, so these ratios are not the real ones."]
    lines += ["", "```"] + commands + ["```", ""]
    return lines


def section_head_scaling(quick: bool) -> list[str]:
    """Fit time and peak memory of each head vs rows and dims, with and without the C sweep."""
    sizes = {1280: [1000, 10000, 30000], 2048: [1000, 30000]} if not quick else {1280: [1000]}
    sweep_max = 1000
    lines = ["## 3. Stage-two scaling (generated 10-class features, float32)", "",
             "Fit time of the head alone (no HDF5 read), rows in memory. `sweep`: C chosen by 5-fold CV over 15 "
             f"values (75 fits, joblib on all cores) then the refit; run at {sweep_max} rows and 1280 dims (at 2048 "
             "dims it costs about 1.3x more). `fixed`: one fit with C=1. Section 6 goes to 100,000 rows, streamed.",
             "", "| rows | dim | head | fixed C s | fixed peak RSS MB | sweep s | sweep peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    commands = []
    for dim, dim_sizes in sizes.items():
        for rows in dim_sizes:
            for clf in ("logreg", "svm", "linear"):
                fixed = run_measured(["benchmarks/head_fit.py", clf, str(rows), str(dim), "0"])
                commands.append(fixed.command)
                sweep_s = sweep_mb = "-"
                if rows <= sweep_max and dim == 1280 and not (quick and clf == "svm"):
                    sweep = run_measured(["benchmarks/head_fit.py", clf, str(rows), str(dim), "1"])
                    commands.append(sweep.command)
                    sweep_s, sweep_mb = f"{json.loads(sweep.stdout)['seconds']:.2f}", f"{sweep.peak_rss_mb:.0f}"
                lines.append(f"| {rows} | {dim} | {clf} | {json.loads(fixed.stdout)['seconds']:.2f} | {fixed.peak_rss_mb:.0f} | "
                             f"{sweep_s} | {sweep_mb} |")
    lines += ["", "```"] + commands[:6] + [f"... ({len(commands)} commands, same pattern)"] + ["```", ""]
    return lines
