"""Section on fine-tuning: the recipe's changes one at a time, then the default command on each dataset."""

from __future__ import annotations

import json
import math
import os
import shutil

from benchmarks.common import HYMENOPTERA, run_measured
from pipeline.learning_rate import format_rate

# (dataset, head) pairs of the diagnosis: variants, epochs and train sample per dataset.
DIAGNOSIS = {
    "digits": ("default,previous,dropout", 2, 400),
    "hymenoptera": ("default,previous", 3, None),
}
# The default command on the whole train split (digits, at about 3 minutes an epoch, is left to the diagnosis).
DEFAULT_COMMAND_HEADS = ("hymenoptera",)


def prepare_heads(out_dir: str, only: tuple[str, ...] | None = None) -> dict[str, str]:
    """Feature files and heads the fine-tuning sections start from (made once, reused by later runs): all of
    them, or the names in ``only``; the head folders by name."""
    digits = os.path.join(out_dir, "ft-digits")
    steps = []
    if not os.path.isdir(digits) and (only is None or "digits" in only):
        steps.append(["-m", "features.demo_data", digits])
    heads = {"digits": (digits, "logreg", []), "hymenoptera": (HYMENOPTERA, "logreg", []),
             "hymenoptera-imagenet": (HYMENOPTERA, "linear", ["--init", "imagenet"])}
    found = {}
    for name, (root, clf, extra) in heads.items():
        if only is not None and name not in only:
            continue
        feats = os.path.join(out_dir, f"ft-{name.split('-')[0]}.h5")
        head = os.path.join(out_dir, f"ft-head-{name}")
        if not os.path.exists(feats):
            steps.append(["run_extract.py", "--data", root, "--out", feats, "--quiet"])
        if not os.path.isdir(head):
            steps.append(["run_head.py", "--features", feats, "--clf", clf, *extra, "--out", head])
        found[name] = head
    for args in steps:
        run_measured(args)
    return found


def fuse_measured(head: str, model: str, options: list[str]):
    """``python -m pipeline.fuse --head HEAD --out MODEL OPTIONS --no-onnx``: the measured command, its
    ``model.json``, the epochs trained and their mean seconds."""
    m = run_measured(["-m", "pipeline.fuse", "--head", head, "--out", model, *options, "--no-onnx", "--quiet"])
    with open(os.path.join(model, "model.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    trained = meta["finetune"]["history"][1:] if meta["finetune"] else []
    return m, meta, len(trained), sum(h["seconds"] for h in trained) / max(len(trained), 1)


def fuse_finetune_auto(head: str, model: str, quick: bool):
    """``python -m pipeline.fuse --finetune auto`` (one epoch at most when ``quick``): the measured command, the
    ``finetune`` record of its ``model.json``, the epochs trained and their mean seconds."""
    m, meta, epochs, per_epoch = fuse_measured(head, model, ["--finetune", "auto"] + (
        ["--finetune-epochs", "1"] if quick else []))
    return m, meta["finetune"], epochs, per_epoch


def section_finetune(out_dir: str, quick: bool) -> list[str]:
    """Diagnosis table (val accuracy by epoch per variant) and the default command's outcome per dataset.

    Parameters
    ----------
    out_dir : str
        Work folder for datasets, feature files, heads and models.
    quick : bool
        One variant per dataset and one epoch (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    heads = prepare_heads(out_dir)
    commands = []
    lines = ["## 11. Fine-tuning: the recipe, one change at a time (EfficientNet-Lite0, fp32, 2 cores)", "",
             "### Diagnosis: one change at a time", "",
             "Each row fuses the same logreg head afresh and fine-tunes with the default recipe changed in one "
             "respect (`benchmarks/finetune_recipes.py`). The default: AdamW, body lr 1e-5 (the rate `--lr auto` "
             "takes for photos), head x10, warm-up "
             "then cosine, BatchNorm statistics and dropout as at inference, crops by source resolution, flip. "
             "`previous` is the recipe before it: SGD lr 1e-3, head x10, BatchNorm statistics from batches of 16, "
             "dropout on, RandomResizedCrop 0.08-1, no warm-up. `dropout`: the default with dropout and "
             "drop-connect on. Digits fine-tune on a seeded sample of 400 of the 1347 train images to keep the "
             "table affordable; val is always the whole split.", "",
             "| dataset | variant | val accuracy by epoch (0 = the fused head) | train loss by epoch | kept epoch | s |",
             "|---|---|---|---|---|---|"]
    for dataset, (variants, epochs, max_train) in DIAGNOSIS.items():
        if quick:
            variants, epochs = variants.split(",")[0], 1
        jsonl = os.path.join(out_dir, f"ft-diagnosis-{dataset}.jsonl")
        if os.path.exists(jsonl):
            os.remove(jsonl)
        args = ["benchmarks/finetune_recipes.py", "--head", heads[dataset], "--variants", variants,
                "--epochs", str(epochs), "--json", jsonl] + (["--max-train", str(max_train)] if max_train else [])
        commands.append(run_measured(args).command)
        with open(jsonl, encoding="utf-8") as fh:
            for record in map(json.loads, fh):
                accs = " / ".join(f"{h['val_accuracy']:.3f}" for h in record["history"])
                losses = " / ".join(f"{h['train_loss']:.3f}" for h in record["history"][1:])
                lines.append(f"| {dataset} ({record['train_images']} train) | {record['variant']} | {accs} | {losses} | "
                             f"{record['best_epoch']} | {record['seconds']:.0f} |")
    lines += ["", "### The default command", "",
              "`python -m pipeline.fuse --head H --out M --finetune auto` on the whole train split: up to "
              "10 epochs, stopping after 2 without a better val accuracy; the best epoch is kept (the hymenoptera "
              "logreg head only: a digits epoch takes about 3 minutes on 2 cores, so digits stay in the diagnosis). The tutorial's "
              "full fine-tune epoch (batch 4, SGD, every layer, hymenoptera) is timed in the same run.", "",
              "| dataset | head val | fine-tuned val | kept epoch | epochs run | s per epoch | total s |",
              "|---|---|---|---|---|---|---|"]
    for name in DEFAULT_COMMAND_HEADS:
        head = heads[name]
        m, ft, epochs, per_epoch = fuse_finetune_auto(head, os.path.join(out_dir, f"ft-model-{name}"), quick)
        commands.append(m.command)
        lines.append(f"| {name} | {ft['history'][0]['val_accuracy']:.4f} | {ft['best_val_accuracy']:.4f} | "
                     f"{ft['best_epoch']} | {epochs} | {per_epoch:.1f} | {m.seconds:.0f} |")
    tutorial = run_measured(["benchmarks/tutorial_baseline.py", "finetune", "1"])
    commands.append(tutorial.command)
    tutorial_epoch = json.loads(tutorial.stdout)["epoch_seconds"][0]
    lines += ["", f"The tutorial's full fine-tune: {tutorial_epoch:.1f} s per epoch on hymenoptera in this run.",
              "", "```"] + commands + ["```", ""]
    return lines


# (head, variants) of the learning-rate table: 3 epochs each on the whole train split.
RATE_RUNS = (("digits", "default,adamw_lr1e-4,adamw_lr3e-4"),
             ("hymenoptera", "default,adamw_lr3e-5,adamw_lr1e-4,adamw_lr3e-4"),
             ("hymenoptera-imagenet", "default,adamw_lr1e-4"))
RATE_LABELS = {"default": "1e-5", "adamw_lr3e-5": "3e-5", "adamw_lr1e-4": "1e-4", "adamw_lr3e-4": "3e-4"}


def section_finetune_rates(out_dir: str, quick: bool) -> list[str]:
    """Val accuracy by epoch at several body learning rates, per dataset and head (3 epochs, whole train split).

    Parameters
    ----------
    out_dir : str
        Work folder holding (or receiving) the heads of section 11.
    quick : bool
        One epoch and the first variant of each head (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    commands, records = run_recipes(out_dir, prepare_heads(out_dir), RATE_RUNS, "rates", quick)
    return rates_section(records, commands)


def run_recipes(out_dir: str, heads: dict[str, str], runs: tuple[tuple[str, str], ...], table: str,
                quick: bool) -> tuple[list[str], list[dict]]:
    """``finetune_recipes.py`` for each ``(head name, variants)`` of ``runs``, 3 epochs on the whole train split (one
    epoch and the first variant when ``quick``): the commands and the records, in order (``ft-TABLE-NAME.jsonl``)."""
    commands, records = [], []
    for name, variants in runs:
        jsonl = os.path.join(out_dir, f"ft-{table}-{name}.jsonl")
        if os.path.exists(jsonl):
            os.remove(jsonl)
        args = ["benchmarks/finetune_recipes.py", "--head", heads[name], "--variants",
                variants.split(",")[0] if quick else variants, "--epochs", "1" if quick else "3", "--json", jsonl]
        commands.append(run_measured(args).command)
        with open(jsonl, encoding="utf-8") as fh:
            records += [dict(json.loads(line), name=name) for line in fh]
    return commands, records


def rates_section(records: list[dict], commands: list[str]) -> list[str]:
    """Section 17's Markdown from the records of ``finetune_recipes.py`` and the commands that made them."""
    lines = ["## 17. Fine-tuning: the body's learning rate, per dataset (AdamW, head x10, 3 epochs, whole train split)",
             "", "Each row fuses the head afresh and fine-tunes it with the default recipe at another body learning "
             "rate (`benchmarks/finetune_recipes.py`; cosine decay over the 3 epochs). Gain: the best fine-tuned "
             "epoch's val accuracy minus the fused head's (epoch 0).", ""]
    return lines + rate_rows(records) + ["", "```"] + commands + ["```", ""]


def rate_rows(records: list[dict]) -> list[str]:
    """A table with one row per record of ``finetune_recipes.py``: val accuracy and loss by epoch, gain, time."""
    rows = ["| head | body lr | val accuracy by epoch (0 = the fused head) | train loss by epoch | gain | s per epoch |",
            "|---|---|---|---|---|---|"]
    for r in records:
        accs = " / ".join(f"{h['val_accuracy']:.3f}" for h in r["history"])
        losses = " / ".join(f"{h['train_loss']:.3f}" for h in r["history"][1:])
        gain = max(h["val_accuracy"] for h in r["history"][1:]) - r["history"][0]["val_accuracy"]
        rows.append(f"| {os.path.basename(r['head']).replace('ft-head-', '')} | {RATE_LABELS.get(r['variant'], r['variant'])} "
                    f"| {accs} | {losses} | {gain:+.3f} | {r['seconds'] / (len(r['history']) - 1):.0f} |")
    return rows


def _nearest(test: dict, rate: float) -> tuple[float, float]:
    """The tried rate nearest ``rate`` on a log scale, and the smoothed loss there."""
    i = min(range(len(test["lrs"])), key=lambda k: abs(math.log(test["lrs"][k] / rate)))
    return test["lrs"][i], test["losses"][i]


def section_range_test(out_dir: str, quick: bool) -> list[str]:
    """What a learning-rate range test from each fused head would choose (``benchmarks/lr_range.py``).

    Parameters
    ----------
    out_dir : str
        Work folder holding (or receiving) the heads of section 11.
    quick : bool
        The hymenoptera logreg head only (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    heads = prepare_heads(out_dir)
    names = ["hymenoptera"] if quick else ["digits", "hymenoptera", "hymenoptera-imagenet"]
    lines = ["## 18. Learning-rate range test from the fused head (AdamW, head x10, batch 16, default crops)", "",
             "`benchmarks/lr_range.py` fuses the head and trains end to end for up to 30 batches with the body's "
             "rate rising geometrically from 1e-6 to 1e-2, stopping once the smoothed loss (EMA 0.9) reaches 4x "
             "its lowest; the weights are restored after. fastai's rule suggests a tenth of the rate at the lowest "
             "loss, or none where the lowest is not 5 % below the first. The smoothing trails the rate by several "
             "batches (each raises it 1.37x), so a loss shown at a rate was mostly earned at lower ones; the rate "
             "in brackets is the nearest one tried. Section 17 gives the rate that paid on each head.", "",
             "| head | batches | s | smoothed loss at the first rate | lowest loss (at rate) | suggested rate | "
             "loss near 1e-4 | loss near 3e-4 |", "|---|---|---|---|---|---|---|---|"]
    commands = []
    for name in names:
        m = run_measured(["benchmarks/lr_range.py", "--head", heads[name]])
        commands.append(m.command)
        test = json.loads(m.stdout)
        low = min(range(len(test["losses"])), key=test["losses"].__getitem__)
        suggested = f"{test['suggested']:.2g}" if test["suggested"] is not None else "none (no descent)"
        near = [_nearest(test, r) for r in (1e-4, 3e-4)]
        lines.append(f"| {name} | {len(test['lrs'])} | {test['seconds']} | {test['losses'][0]:.3f} | "
                     f"{test['losses'][low]:.3f} ({test['lrs'][low]:.2g}) | {suggested} | "
                     + " | ".join(f"{loss:.3f} ({rate:.2g})" for rate, loss in near) + " |")
    return lines + ["", "```"] + commands + ["```", ""]


SMALL_SIDE = 40


def section_small_source(out_dir: str, quick: bool) -> list[str]:
    """The body's rate on a 40-px copy of hymenoptera: does the source resolution or the content want a higher rate?

    Parameters
    ----------
    out_dir : str
        Work folder for the copy, its feature file, head and records.
    quick : bool
        The default rate only, one epoch (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    prepare_heads(out_dir)  # the digits and hymenoptera feature files compared below
    feats, commands = _small_source_features(out_dir, fresh=True)
    head = os.path.join(out_dir, f"ft-head-hymenoptera_{SMALL_SIDE}px")
    commands.append(run_measured(["run_head.py", "--features", feats, "--clf", "logreg", "--out", head]).command)
    jsonl = os.path.join(out_dir, f"ft-rates-hymenoptera_{SMALL_SIDE}px.jsonl")
    if os.path.exists(jsonl):
        os.remove(jsonl)
    variants = "default" if quick else "default,adamw_lr1e-4,adamw_lr3e-4"
    commands.append(run_measured(["benchmarks/finetune_recipes.py", "--head", head, "--variants", variants,
                                  "--epochs", "1" if quick else "3", "--json", jsonl]).command)
    with open(jsonl, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    familiar = run_measured(["benchmarks/imagenet_confidence.py", os.path.join(out_dir, "ft-digits.h5"),
                             os.path.join(out_dir, "ft-hymenoptera.h5"), feats])
    commands.append(familiar.command)
    lines = [f"## 19. Fine-tuning: small sources or unfamiliar content? (hymenoptera at {SMALL_SIDE} px, AdamW, "
             f"head x10, {1 if quick else 3} epochs)", "",
             f"`benchmarks/small_source.py` reduces every hymenoptera image to a {SMALL_SIDE}-px shorter side (PNG), "
             "photos of what ImageNet knows, stored smaller than the digits demo's 8x8 drawings (upscaled to 64 px); the same "
             "rates as section 17 (where 3e-4 paid on digits) fine-tune its logreg head.", ""]
    lines += rate_rows(records)
    lines += ["", "How familiar each training set looks to Lite0's own ImageNet classifier "
              "(`benchmarks/imagenet_confidence.py`, over the cached train features): a possible signal for "
              "the rate, with one dataset on the side that wanted a higher rate, too few to set a threshold.", "",
              "| feature file | train rows | mean top-class probability | median | mean entropy (nats) |",
              "|---|---|---|---|---|"]
    for line in familiar.stdout.splitlines():
        r = json.loads(line)
        lines.append(f"| {os.path.basename(r['file'])} | {r['rows']} | {r['mean_top']:.3f} | {r['median_top']:.3f} | "
                     f"{r['mean_entropy']:.2f} |")
    return lines + ["", "```"] + commands + ["```", ""]


SHAPES = ("shapes", 100, 50)  # folder name, train and val images per class


def _shapes_size(quick: bool) -> tuple[str, int, int]:
    """:data:`SHAPES`, with fewer images for a quick run."""
    return (SHAPES[0], 10, 5) if quick else SHAPES


def shapes_head(out_dir: str, folder: str, quick: bool) -> tuple[str, str, list[str]]:
    """The drawn shapes written afresh under ``out_dir/folder`` (the generator's output is the dataset), their
    features and logreg head (``ft-head-FOLDER``): the feature file, the head folder and the commands."""
    _, train_per_class, val_per_class = _shapes_size(quick)
    root = os.path.join(out_dir, folder)
    feats, head = f"{root}.h5", os.path.join(out_dir, f"ft-head-{folder}")
    steps = [["benchmarks/shapes_data.py", root, str(train_per_class), str(val_per_class), "0"],
             ["run_extract.py", "--data", root, "--out", feats, "--overwrite", "--quiet"],
             ["run_head.py", "--features", feats, "--clf", "logreg", "--out", head]]
    if os.path.isdir(root):
        shutil.rmtree(root)
    return feats, head, [run_measured(args).command for args in steps]


def _small_source_features(out_dir: str, fresh: bool) -> tuple[str, list[str]]:
    """Section 19's 40-px hymenoptera copy and feature file, made afresh or only if missing; its path and the
    commands run."""
    root = os.path.join(out_dir, f"hymenoptera_{SMALL_SIDE}px")
    feats = f"{root}.h5"
    if os.path.exists(feats) and not fresh:
        return feats, []
    steps = [["benchmarks/small_source.py", HYMENOPTERA, root, str(SMALL_SIDE)],
             ["run_extract.py", "--data", root, "--out", feats, "--overwrite", "--quiet"]]
    return feats, [run_measured(args).command for args in steps]


def section_rate_rule(out_dir: str, quick: bool) -> list[str]:
    """``--lr auto``: generated shapes as a second unfamiliar dataset, familiarity per dataset, and the digits demo's
    default command.

    Parameters
    ----------
    out_dir : str
        Work folder for the datasets, feature files, heads and models.
    quick : bool
        Fewer images, one epoch (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    heads = prepare_heads(out_dir)
    name, train_per_class, val_per_class = _shapes_size(quick)
    epochs = "1" if quick else "3"
    feats, head, commands = shapes_head(out_dir, name, quick)
    small_feats, small_commands = _small_source_features(out_dir, fresh=False)
    commands += small_commands
    jsonl = os.path.join(out_dir, f"ft-rates-{name}.jsonl")
    if os.path.exists(jsonl):
        os.remove(jsonl)
    commands.append(run_measured(["benchmarks/finetune_recipes.py", "--head", head, "--variants",
                                  "default,adamw_lr3e-4", "--epochs", epochs, "--json", jsonl]).command)
    with open(jsonl, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    files = [os.path.join(out_dir, "ft-digits.h5"), feats, small_feats, os.path.join(out_dir, "ft-hymenoptera.h5")]
    familiar = run_measured(["benchmarks/imagenet_confidence.py", *files])
    commands.append(familiar.command)
    model = os.path.join(out_dir, "ft-model-digits-auto")
    demo = ["-m", "pipeline.fuse", "--head", heads["digits"], "--out", model, "--finetune-epochs", epochs,
            "--no-flip", "--no-onnx", "--quiet"]
    if os.path.isdir(model):
        shutil.rmtree(model)
    commands.append(run_measured(demo).command)
    with open(os.path.join(model, "model.json"), encoding="utf-8") as fh:
        ft = json.load(fh)["finetune"]

    lines = ["## 21. Choosing the body's rate: `--lr auto` from the backbone's own ImageNet classifier", "",
             f"`benchmarks/shapes_data.py` draws {6 * train_per_class} train and {6 * val_per_class} val images of six "
             "outlined shapes among random strokes on noise, at 96 px: drawings, like the digits demo, but stored near the "
             "input size. Its logreg head is fine-tuned at the two rates that split sections 17 and 19 "
             f"(AdamW, head x10, {epochs} epochs):", ""]
    lines += rate_rows(records)
    lines += ["", "The mean top-class probability of Lite0's ImageNet classifier over each training set's cached features, "
              "and the rate `--lr auto` takes from it (3e-4 below 0.25, else 1e-5; `benchmarks/imagenet_confidence.py`), "
              "against the rate that paid in sections 17, 19 and above:", "",
              "| feature file | train rows | mean top-class probability | mean entropy (nats) | `--lr auto` |",
              "|---|---|---|---|---|"]
    for line in familiar.stdout.splitlines():
        r = json.loads(line)
        lines.append(f"| {os.path.basename(r['file'])} | {r['rows']} | {r['mean_top']:.3f} | {r['mean_entropy']:.2f} "
                     f"| {format_rate(r['auto_lr'])} |")
    accs = " / ".join(f"{h['val_accuracy']:.4f}" for h in ft["history"])
    lines += ["", f"The digits demo's command with the rate left to `--lr auto` (the whole train split, "
              f"{ft['train_images']} images): body rate {format_rate(ft['lr'])}, val accuracy by epoch {accs}, kept epoch "
              f"{ft['best_epoch']} ({ft['best_val_accuracy']:.4f}), {ft['seconds'] / max(1, len(ft['history']) - 1):.0f} s "
              f"per epoch ({ft['precision']}).", "", "```"] + commands + ["```", ""]
    return lines


# (head, variants) of the weight-average table: a moving average of the weights (half-life 0.5 epoch) against the
# same run scoring the raw weights (the default), at the rate --lr auto takes for each: the digits demo as its own
# command runs (no flips), the drawn shapes and hymenoptera with the default flips.
AVERAGE_RUNS = (("digits", "demo_ema_0.5,demo"), ("shapes", "adamw_lr3e-4_ema_0.5,adamw_lr3e-4"),
                ("hymenoptera", "ema_0.5,default"))


def section_weight_average(out_dir: str, quick: bool) -> list[str]:
    """Val accuracy by epoch, each epoch scored as the moving average of the weights or as the raw weights.

    Parameters
    ----------
    out_dir : str
        Work folder holding (or receiving) the heads of section 11 and the drawn shapes.
    quick : bool
        Fewer shapes, one epoch and the first variant of each head (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    heads = prepare_heads(out_dir, only=("digits", "hymenoptera"))
    _, heads["shapes"], commands = shapes_head(out_dir, f"average-{SHAPES[0]}", quick)
    recipe_commands, records = run_recipes(out_dir, heads, AVERAGE_RUNS, "average", quick)
    commands += recipe_commands
    rows = []
    for r in records:
        scored = "moving average" if "ema" in r["variant"] else "raw weights (default)"
        accs = " / ".join(f"{h['val_accuracy']:.4f}" for h in r["history"])
        rows.append(f"| {r['name']} | {scored} | {accs} | {r['best_epoch']} | "
                    f"{r['history'][r['best_epoch']]['val_accuracy']:.4f} | "
                    f"{r['seconds'] / (len(r['history']) - 1):.0f} |")
    return ["## 24. Fine-tuning: scoring a moving average of the weights (AdamW, head x10, 3 epochs, whole train split)",
            "", "Each row fuses the head afresh and fine-tunes it (`benchmarks/finetune_recipes.py`); the two rows of a "
            "head train identically and differ only in what each epoch is scored and kept as: the weights the "
            "optimiser reached (the default), or their exponential moving average with a half-life of half an "
            "epoch, which starts at the fused head (`--ema 0.5`; torch's `AveragedModel`). Each runs at the rate "
            "`--lr auto` takes for it: 3e-4 for the digits demo (without flips, as `make demo` runs) and for the "
            "drawn shapes of section 21, 1e-5 for hymenoptera. s per epoch includes the validation passes.", "",
            "| head | each epoch scored as | val accuracy by epoch (0 = the fused head) | kept epoch | kept val "
            "accuracy | s per epoch |", "|---|---|---|---|---|---|"] + rows + ["", "```"] + commands + ["```", ""]
