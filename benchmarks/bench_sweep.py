"""Section on the C sweep: the warm-started path against GridSearchCV, same folds, same grid, one process."""

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
             "digits demo (Lite0, 10 classes)": ("ft-digits.h5", "1" if quick else "2")}
    lines = ["## 12. Choosing C: warm-started path against GridSearchCV (logreg, 5 folds x 15 values, 1 job)", "",
             "The same folds and grid both ways, in one process, alternating; best of the stated repeats.", "",
             "| features | rows x dim | GridSearchCV s | warm path s | speed-up | C (grid) | C (path) |",
             "|---|---|---|---|---|---|---|"]
    commands = []
    for label, (name, repeats) in files.items():
        m = run_measured(["benchmarks/c_sweep.py", os.path.join(out_dir, name), "train", repeats])
        commands.append(m.command)
        r = json.loads(m.stdout)
        lines.append(f"| {label}, best of {repeats} | {r['rows']} x {r['dim']} | {r['grid_seconds']:.2f} | "
                     f"{r['warm_seconds']:.2f} | {r['grid_seconds'] / r['warm_seconds']:.2f}x | {r['grid_C']:g} | "
                     f"{r['warm_C']:g} |")
    return lines + ["", "```"] + commands + ["```", ""]
