"""Section on the C sweep: ``choose_C`` against ``GridSearchCV`` as the sweep first ran, same folds, same grid, one process."""

from __future__ import annotations

import json
import os

from benchmarks.bench_finetune import prepare_heads
from benchmarks.common import run_measured


def section_sweep(out_dir: str, quick: bool) -> list[str]:
    """Seconds of each way of sweeping C for a logreg head, and the C each chooses, on real feature files.

    Parameters
    ----------
    out_dir : str
        Work folder holding (or receiving) the feature files of section 11.
    quick : bool
        One repeat instead of three (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    prepare_heads(out_dir)
    files = {"hymenoptera (Lite0)": ("ft-hymenoptera.h5", "1" if quick else "3"),
             "digits demo (Lite0, 10 classes)": ("ft-digits.h5", "1" if quick else "3")}
    lines = ["## 12. Choosing C: `choose_C` against GridSearchCV (logreg, 5 folds x 15 values)", "",
             "The same folds and grid every way, in one process, alternating; best of the stated repeats. "
             "`GridSearchCV`: the sweep as first written (one job, BLAS threads as they come: two here). "
             "`choose_C`: every C still fitted afresh on every fold, the scaler fitted once per fold, BLAS on "
             "one thread; with one job and with two joblib workers (started once, so the second repeat "
             "reuses them).", "",
             "| features | rows x dim | GridSearchCV s | choose_C s | speed-up | 2 workers s | speed-up | "
             "C (GridSearchCV) | C (choose_C) | C (2 workers) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for label, (name, repeats) in files.items():
        m = run_measured(["benchmarks/c_sweep.py", os.path.join(out_dir, name), "train", repeats])
        commands.append(m.command)
        r = json.loads(m.stdout)
        lines.append(f"| {label}, best of {repeats} | {r['rows']} x {r['dim']} | {r['grid_seconds']:.2f} | "
                     f"{r['sweep_seconds']:.2f} | {r['grid_seconds'] / r['sweep_seconds']:.2f}x | "
                     f"{r['sweep2_seconds']:.2f} | {r['grid_seconds'] / r['sweep2_seconds']:.2f}x | {r['grid_C']:g} | "
                     f"{r['sweep_C']:g} | {r['sweep2_C']:g} |")
    return lines + ["", "```"] + commands + ["```", ""]
