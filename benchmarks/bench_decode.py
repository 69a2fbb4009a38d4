"""Section on overlapping decoding with the forward pass: decoding in turn against a decode thread."""

from __future__ import annotations

import json

from benchmarks.bench_extract import forward_only, full_path
from benchmarks.common import run_measured


def section_decode(out_dir: str, quick: bool) -> list[str]:
    """Full-path rate with ``--decode turn`` and ``--decode thread`` against the forward-only rate.

    Parameters
    ----------
    out_dir : str
        Work folder for the feature files.
    quick : bool
        Lite0 only, one repeat (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    configs = [("efficientnet_lite0", "DEFAULT")] + ([] if quick else [("resnet50", "none")])
    repeats = 1 if quick else 2
    split = run_measured(["benchmarks/time_split.py", "efficientnet_lite0", "DEFAULT", "fp32", "32", "keep"])
    host_ms = json.loads(split.stdout)["decode_ms"] + json.loads(split.stdout)["transform_ms"]
    lines = ["## 14. Decoding in turn or in a thread (hymenoptera, 398 images, batch 32)", "",
             "Forward-only: 128 preprocessed val images through the network as built and with BatchNorm folded "
             "(what extraction runs). Full path: `run_extract.py` rate over its extraction loops, decoding "
             f"between batches (`--decode turn`) or in a thread one batch ahead (`--decode thread`); the two "
             f"alternate, best of {repeats}. Ratios are against the forward pass as built; the full path aims at 0.95 of it or more.",
             "", f"Bounds on 2 cores, from decoding and resizing at {host_ms:.2f} ms per image on one core "
             "(`benchmarks/time_split.py`) and the folded forward pass F (both cores): in turn an image costs "
             f"F + {host_ms:.2f} ms; with perfect overlap, F + {host_ms / 2:.2f} ms (the decode thread's core-time "
             "is shared with the forward pass).",
             "", "| backbone | precision | forward as built img/s | folded img/s | turn img/s | thread img/s | "
             "turn / built | thread / built | bound in turn / built | bound overlapped / built | thread / turn |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    commands = [split.command]
    for backbone, weights in configs:
        for precision in ("fp32", "bf16"):
            built_m, built = forward_only(backbone, weights, precision, 32, fold=0)
            folded_m, folded = forward_only(backbone, weights, precision, 32, fold=1)
            commands += [built_m.command, folded_m.command]
            rates = {"turn": [], "thread": []}
            for _ in range(repeats):
                for mode in rates:
                    m, _, rate = full_path(out_dir, backbone, weights, precision, 32,
                                           name=f"decode-{backbone}-{precision}-{mode}.h5", extra=("--decode", mode))
                    rates[mode].append(rate)
                    if len(rates[mode]) == 1:
                        commands.append(m.command)
            turn, thread = max(rates["turn"]), max(rates["thread"])
            in_turn = 1000 / (1000 / folded + host_ms)
            overlapped = 1000 / (1000 / folded + host_ms / 2)
            lines.append(f"| {backbone} ({weights}) | {precision} | {built:.1f} | {folded:.1f} | {turn:.1f} | "
                         f"{thread:.1f} | {turn / built:.2f} | {thread / built:.2f} | {in_turn / built:.2f} | "
                         f"{overlapped / built:.2f} | {thread / turn:.2f}x |")
    return lines + ["", "```"] + commands + ["```", ""]
