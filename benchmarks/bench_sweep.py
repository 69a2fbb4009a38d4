"""Section on the C sweep: ``choose_C`` against a plain ``GridSearchCV``, same folds, same grid, one process; and two
faster sweeps that change the fits or skip some, with the C each chooses."""

from __future__ import annotations

import json
import os

from benchmarks.bench_finetune import prepare_heads, shapes_head
from benchmarks.common import run_measured


def section_sweep(out_dir: str, quick: bool) -> list[str]:
    """Seconds of each way of sweeping C for a logreg head, and the C each chooses, on real feature files.

    Parameters
    ----------
    out_dir : str
        Work folder holding (or receiving) the feature files of section 11; the drawn shapes are made afresh.
    quick : bool
        One repeat instead of three, and fewer shapes (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    prepare_heads(out_dir)
    shapes, _, commands = shapes_head(out_dir, "sweep-shapes", quick)
    repeats = "1" if quick else "3"
    files = {"hymenoptera (Lite0)": os.path.join(out_dir, "ft-hymenoptera.h5"),
             "digits demo (Lite0, 10 classes)": os.path.join(out_dir, "ft-digits.h5"),
             "drawn shapes (Lite0, 6 classes)": shapes}
    exact = ["| features | rows x dim | GridSearchCV s | choose_C s | speed-up | 2 workers s | speed-up | "
             "C (GridSearchCV) | C (choose_C) | C (2 workers) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    changed = ["| features | choose_C s | warm path s | speed-up | coarse to fine s | speed-up | C (choose_C) | "
               "C (warm path) | C (coarse to fine) | C (converged) | val (choose_C) | val (warm path) | "
               "val (coarse to fine) | val (converged) |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, path in files.items():
        m = run_measured(["benchmarks/c_sweep.py", path, "train", repeats])
        commands.append(m.command)
        r = json.loads(m.stdout)
        exact.append(f"| {label}, best of {repeats} | {r['rows']} x {r['dim']} | {r['grid_seconds']:.2f} | "
                     f"{r['sweep_seconds']:.2f} | {r['grid_seconds'] / r['sweep_seconds']:.2f}x | "
                     f"{r['sweep2_seconds']:.2f} | {r['grid_seconds'] / r['sweep2_seconds']:.2f}x | {r['grid_C']:g} | "
                     f"{r['sweep_C']:g} | {r['sweep2_C']:g} |")
        changed.append(f"| {label} | {r['sweep_seconds']:.2f} | {r['warm_seconds']:.2f} | "
                       f"{r['sweep_seconds'] / r['warm_seconds']:.2f}x | {r['coarse_seconds']:.2f} | "
                       f"{r['sweep_seconds'] / r['coarse_seconds']:.2f}x | {r['sweep_C']:g} | {r['warm_C']:g} | "
                       f"{r['coarse_C']:g} | {r['converged_C']:g} | {r['sweep_val_accuracy']:.4f} | "
                       f"{r['warm_val_accuracy']:.4f} | {r['coarse_val_accuracy']:.4f} | "
                       f"{r['converged_val_accuracy']:.4f} |")
    intro = ["## 12. Choosing C: `choose_C` against GridSearchCV (logreg, 5 folds x 15 values)", "",
             "The same folds and grid every way, in one process, alternating; best of the stated repeats. "
             "`GridSearchCV`: scikit-learn's own sweep, as this one first ran (one job, BLAS threads as they come: "
             "two here). `choose_C`: every C still fitted afresh on every fold, the scaler fitted once per fold, "
             "BLAS on one thread; with one job and with two joblib workers (started once, so the second repeat "
             "reuses them).", ""]
    between = ["", "Two faster sweeps that change the fits or skip some, timed in the same runs "
               "(`benchmarks/c_sweep.py`; not what `run_head.py` does). Warm path: every C on every fold, each fit "
               "starting from the previous, smaller C's solution, as `LogisticRegressionCV` does. Coarse to fine: "
               "every other C, then the two neighbours of the best of those, each fitted afresh. Speed-ups are "
               "against `choose_C` with one job. Converged (not timed): every C fitted afresh to a gradient tolerance "
               "of 1e-10 (or until L-BFGS makes no more progress) instead of `LogisticRegression`'s default 1e-4. "
               "Val: accuracy on the val split of a head refitted on all training rows at the chosen C.", ""]
    return intro + exact + between + changed + ["", "```"] + commands + ["```", ""]
