"""Section 20: whether ``--precision auto``'s choices hold on the CPU at hand (bf16 or fp32, extraction and training)."""

from __future__ import annotations

import json
import os
import statistics

import torch

from benchmarks.bench_extract import forward_only, full_path
from benchmarks.bench_finetune import prepare_heads
from benchmarks.common import run_measured
from features.devices import cpu_has_amx, cpu_has_native_bf16, default_batch_size, resolve_precision

FORWARD_CONFIGS = (("efficientnet_lite0", "DEFAULT", 128), ("resnet50", "none", 64))


def _medians(measure, rounds: int) -> tuple[dict[str, float], list[str]]:
    """``measure(precision) -> (Measured, value)`` over ``rounds`` alternating fp32/bf16 rounds: the median value per
    precision (a rate or seconds), and the first round's commands."""
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    commands = []
    for round_ in range(rounds):
        for precision in rates:
            m, rate = measure(precision)
            rates[precision].append(rate)
            if round_ == 0:
                commands.append(m.command)
    return {p: statistics.median(r) for p, r in rates.items()}, commands


def _training_seconds(out_dir: str, rounds: int) -> tuple[dict[str, float], list[str]]:
    """Median seconds of one fine-tuning epoch on hymenoptera from its logreg head: fp32 against bf16 autocast."""
    head = prepare_heads(out_dir, only=("hymenoptera",))["hymenoptera"]
    jsonl = os.path.join(out_dir, "cpu-precision-training.jsonl")

    def measure(precision: str):
        if os.path.exists(jsonl):
            os.remove(jsonl)
        m = run_measured(["benchmarks/finetune_recipes.py", "--head", head, "--variants", precision, "--epochs", "1",
                          "--json", jsonl])
        with open(jsonl, encoding="utf-8") as fh:
            record = json.loads(fh.readline())
        return m, record["history"][-1]["seconds"]

    return _medians(measure, rounds)


def section_cpu_precision(out_dir: str, quick: bool) -> list[str]:
    """Forward pass, full extraction path and one fine-tuning epoch in fp32 and bf16 on this CPU, against what
    ``--precision auto`` chooses here.

    Parameters
    ----------
    out_dir : str
        Work folder for feature files and heads.
    quick : bool
        One round instead of three (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    rounds = 1 if quick else 3
    cpu = torch.device("cpu")
    batch = default_batch_size(cpu)
    kind = "AMX" if cpu_has_amx() else ("AVX512-BF16 without AMX" if cpu_has_native_bf16() else "no native bf16")
    lines = ["## 20. bf16 or fp32 on this CPU: what `--precision auto` chooses, and what it measures", "",
             f"This CPU: {kind}. `--precision auto` chooses {resolve_precision('auto', cpu)} for extraction and "
             f"{resolve_precision('auto', cpu)} for fine-tuning here. Each figure is the median of {rounds} "
             f"rounds, fp32 and bf16 alternating, at extraction's default batch on the CPU ({batch}); the forward "
             "passes run the network as extraction prepares it (BatchNorm folded; in bf16 the weights cast once).",
             "",
             "| step | fp32 | bf16 | bf16 / fp32 speed | faster here | auto chooses |", "|---|---|---|---|---|---|"]
    commands = []
    for backbone, weights, images in FORWARD_CONFIGS:
        rates, cmds = _medians(lambda p: forward_only(backbone, weights, p, batch, 1, images), rounds)
        commands += cmds
        lines.append(_row(f"{backbone} forward pass, img/s", rates, rates["bf16"] / rates["fp32"],
                          resolve_precision("auto", cpu)))

    def extract(precision: str):
        m, _, rate = full_path(out_dir, "efficientnet_lite0", "DEFAULT", precision, batch,
                               name=f"cpu-precision-{precision}.h5")
        return m, rate

    rates, cmds = _medians(extract, rounds)
    commands += cmds
    lines.append(_row("efficientnet_lite0 full extraction path on hymenoptera, img/s", rates,
                      rates["bf16"] / rates["fp32"], resolve_precision("auto", cpu)))
    seconds, cmds = _training_seconds(out_dir, rounds)
    commands += cmds
    lines.append(_row("efficientnet_lite0 fine-tuning epoch on hymenoptera (245 train, 153 val), s", seconds,
                      seconds["fp32"] / seconds["bf16"], resolve_precision("auto", cpu)))
    return lines + ["", "```"] + commands + ["```", ""]


def _row(step: str, values: dict[str, float], speed: float, auto: str) -> str:
    return (f"| {step} | {values['fp32']:.1f} | {values['bf16']:.1f} | {speed:.2f}x | "
            f"{'bf16' if speed > 1 else 'fp32'} | {auto} |")
