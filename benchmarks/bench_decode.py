"""Section on where decoding runs: in turn in the main thread, in turn across the cores, or in a thread ahead."""

from __future__ import annotations

import json

import torch

from benchmarks.bench_extract import FORWARD_PASSES, forward_only, full_path
from benchmarks.common import extraction_totals, run_measured
from features.devices import default_batch_size

# The batch size the earlier runs of this section used, and the one the default used to be.
EARLIER_BATCH = 32


def section_decode(out_dir: str, quick: bool) -> list[str]:
    """Full-path rate with ``--decode turn``, ``pool`` and ``thread`` against the forward-only rate.

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
    batch = default_batch_size(torch.device("cpu"))
    split = run_measured(["benchmarks/time_split.py", "efficientnet_lite0", "DEFAULT", "fp32", str(batch), "keep"])
    host_ms = json.loads(split.stdout)["decode_ms"] + json.loads(split.stdout)["transform_ms"]
    lines = [f"## 14. Decoding in turn, across the cores, or in a thread (hymenoptera, 398 images, batch {batch})", "",
             f"At `run_extract.py`'s default batch size on the CPU ({batch}; section 1's batch sweep). "
             "Forward-only: 128 preprocessed val images through the network as built and as extraction "
             "prepares it (folded: BatchNorm folded into the convolutions and, in bf16, the weights stored in "
             f"bf16 once instead of cast on every call), the fastest of {FORWARD_PASSES} passes after a warm-up "
             f"batch; the network as built is also timed at batch {EARLIER_BATCH}, so that no ratio rests on the "
             f"batch-{batch} forward pass alone. Full path: "
             "`run_extract.py` rate over its extraction loops, decoding "
             "between batches in the main thread (`--decode turn`), between batches by a pool of one thread per "
             "core (`--decode pool`, the default), or in a thread one batch ahead (`--decode thread`); the three "
             f"alternate, best of {repeats}. Ratios are against the forward pass as built; the full path aims at "
             "0.95 of it or more.",
             "", f"Bounds on 2 cores, from decoding and resizing at {host_ms:.2f} ms per image on one core "
             "(`benchmarks/time_split.py`) and the folded forward pass F (both cores): in turn on one core an "
             f"image costs F + {host_ms:.2f} ms; with the decoding spread perfectly over both cores (a pool in "
             f"turn, or a thread overlapped), F + {host_ms / 2:.2f} ms.",
             "", f"| backbone | precision | forward as built img/s | as built at batch {EARLIER_BATCH} img/s | "
             "folded img/s | turn img/s | pool img/s | thread img/s | turn / built | pool / built | thread / built | "
             f"pool / built at {EARLIER_BATCH} | bound in turn / built | bound on both cores / built | pool / turn |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    commands = [split.command]
    parts_lines = []
    for backbone, weights in configs:
        for precision in ("fp32", "bf16"):
            built_m, built = forward_only(backbone, weights, precision, batch, fold=0, passes=FORWARD_PASSES)
            earlier_m, earlier = forward_only(backbone, weights, precision, EARLIER_BATCH, fold=0,
                                              passes=FORWARD_PASSES)
            folded_m, folded = forward_only(backbone, weights, precision, batch, fold=1, passes=FORWARD_PASSES)
            commands += [built_m.command, earlier_m.command, folded_m.command]
            rates = {"turn": [], "pool": [], "thread": []}
            pool_parts = []  # (rate, waiting ms/img, forward ms/img) of each pool run
            for _ in range(repeats):
                for mode in rates:
                    m, out, rate = full_path(out_dir, backbone, weights, precision, batch,
                                             name=f"decode-{backbone}-{precision}-{mode}.h5", extra=("--decode", mode))
                    rates[mode].append(rate)
                    if mode == "pool":
                        totals = extraction_totals(out + ".json")
                        pool_parts.append((rate, 1000 * totals.waiting / totals.images,
                                           1000 * totals.forward / totals.images))
                    if len(rates[mode]) == 1:
                        commands.append(m.command)
            best = {mode: max(r) for mode, r in rates.items()}
            pool_rate, waiting_ms, forward_ms = max(pool_parts)
            other_ms = 1000 / pool_rate - waiting_ms - forward_ms
            estimate = 1000 / (1000 / folded + waiting_ms)
            parts_lines.append(f"| {backbone} ({weights}) | {precision} | {pool_rate:.1f} | {waiting_ms:.2f} | "
                               f"{forward_ms:.2f} | {other_ms:.2f} | {1000 / folded:.2f} | "
                               f"{forward_ms / (1000 / folded):.2f}x | {estimate / built:.2f} | "
                               f"{pool_rate / built:.2f} |")
            in_turn = 1000 / (1000 / folded + host_ms)
            both_cores = 1000 / (1000 / folded + host_ms / 2)
            lines.append(f"| {backbone} ({weights}) | {precision} | {built:.1f} | {earlier:.1f} | {folded:.1f} | "
                         f"{best['turn']:.1f} | {best['pool']:.1f} | {best['thread']:.1f} | "
                         f"{best['turn'] / built:.2f} | "
                         f"{best['pool'] / built:.2f} | {best['thread'] / built:.2f} | {best['pool'] / earlier:.2f} | "
                         f"{in_turn / built:.2f} | "
                         f"{both_cores / built:.2f} | {best['pool'] / best['turn']:.2f}x |")
    lines += ["", "Where the best pool run's time went, from its own report (`run_extract.py` times each batch's "
              "wait for decoded images, and its forward pass with the batch's normalising; other: HDF5 writes "
              "and progress). The forward pass in the loop also pays what the forward-only figure leaves out: "
              "the first batches' warm-up (oneDNN primitives, first-touch memory) and each split's shorter last "
              "batch, a new shape; where it comes out below the forward-only figure, that is run-to-run noise. "
              "Estimate from the parts: the folded forward-only pass plus the pool's measured wait, without "
              "warm-up or anything else; the path can beat it only by the noise in those two figures.", "",
              "| backbone | precision | pool img/s | waiting ms/img | forward in the loop ms/img | other ms/img | "
              "folded forward-only ms/img | loop forward / forward-only | estimate from the parts / built | "
              "pool / built |", "|---|---|---|---|---|---|---|---|---|---|", *parts_lines]
    return lines + ["", "```"] + commands + ["```", ""]
