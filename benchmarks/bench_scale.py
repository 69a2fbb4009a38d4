"""Section on scaling out: 1 vs 2 extraction processes (torchrun), streaming vs in-memory stage two."""

from __future__ import annotations

import json
import os

import numpy as np

from benchmarks.common import HYMENOPTERA, extraction_totals, run_measured
from features.store import FeatureFile
from pipeline.affine import load_affine

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _processes(out_dir: str, quick: bool) -> tuple[list[str], list[str]]:
    lines = ["### Extraction: 1 process vs 2 processes (torchrun, gloo) on this 2-core machine", "",
             "| processes | threads per process | img/s (extraction loops) | command wall s | "
             "peak RSS MB (largest process) |", "|---|---|---|---|---|"]
    commands, files = [], {}
    common = ["run_extract.py", "--data", HYMENOPTERA, "--precision", "fp32", "--overwrite", "--quiet"]
    common += ["--limit", "100"] if quick else []
    for n, args in ((1, common), (2, TORCHRUN + common)):
        files[n] = os.path.join(out_dir, f"procs-{n}.h5")
        m = run_measured([*args, "--out", files[n], "--report", files[n] + ".json"])
        totals = extraction_totals(files[n] + ".json")
        commands.append(m.command)
        lines.append(f"| {n} | {2 // n} | {totals.images / totals.seconds:.1f} | {m.seconds:.1f} | {m.peak_rss_mb:.0f} |")
    with FeatureFile(files[1]) as a, FeatureFile(files[2]) as b:
        diff = max(float(np.abs(a.read_split(s).features - b.read_split(s).features).max()) for s in a.splits)
        same = all((a.read_split(s).paths == b.read_split(s).paths).all() for s in a.splits)
    lines += ["", f"Same rows in the same order: {'yes' if same else 'NO'}; largest feature difference {diff:.2e}. "
              "Two processes on two cores add no compute: each rank runs its forward pass on one core instead of "
              "both. What they can gain here is overlap: one rank decodes while the other runs its forward pass, "
              "which a single process does in turn (section 1). Real speed-ups come from more GPUs, cores or nodes "
              "than one process can use."]
    return lines, commands


def _streaming(out_dir: str, rows: int, dim: int, limit: str, heads: list[str]) -> tuple[list[str], list[str]]:
    path = os.path.join(out_dir, f"generated-{rows}x{dim}.h5")
    make = run_measured(["benchmarks/make_features.py", path, str(rows), str(dim)])
    matrix_mb = rows * dim * 4 / 2**20
    lines = ["", f"### Stage two: {rows:,} x {dim} training rows ({matrix_mb:.0f} MB as float32), "
             f"in memory vs streamed under `--max-memory {limit}`", "",
             "Generated 10-class features, C=0.01 fixed (streaming: 10 passes). Peak growth is the rise of the "
             "process's resident memory during the fit, as the report records it.", "",
             "| head | mode | fit s | command wall s | peak RSS MB | peak growth in fit MB | val accuracy | "
             "agreement with in-memory logreg |", "|---|---|---|---|---|---|---|---|"]
    commands = [make.command]
    with FeatureFile(path) as ff:
        val = ff.read_split("val")
    reference = None  # the in-memory logreg head's predictions (heads[0] is logreg)
    for clf in heads:
        for mode, budget in (("in-memory", "8G"), ("streaming", limit)):
            if clf != "logreg" and mode == "in-memory":
                continue  # in memory at this size: minutes for LinearSVC, ~1 min for L-BFGS (section 3's trend)
            head = os.path.join(out_dir, f"stream-{clf}-{mode}")
            m = run_measured(["run_head.py", "--features", path, "--clf", clf, "--C", "0.01", "--max-memory", budget,
                              "--out", head])
            commands.append(m.command)
            report = json.load(open(os.path.join(head, "report.json"), encoding="utf-8"))
            assert report["mode"] == mode, report["mode"]
            predicted = load_affine(head).logits(val.features).argmax(1)
            reference = predicted if reference is None else reference
            agree = "-" if predicted is reference else f"{(predicted == reference).mean():.4f}"
            lines.append(f"| {clf} | {mode} | {report['fit_seconds']:.1f} | {m.seconds:.1f} | {m.peak_rss_mb:.0f} | "
                         f"{report['peak_memory_growth_bytes'] / 2**20:.0f} | {report['splits']['val']['accuracy']:.4f} | "
                         f"{agree} |")
    return lines, commands


def section_scale_out(out_dir: str, quick: bool) -> list[str]:
    """1 vs 2 processes for extraction; in-memory vs streaming heads on rows larger than the limit."""
    lines = ["## 6. Scaling out", ""]
    procs, commands = _processes(out_dir, quick)
    rows, dim, limit = (20_000, 1280, "64M") if quick else (100_000, 1280, "256M")
    stream, stream_commands = _streaming(out_dir, rows, dim, limit, ["logreg", "svm"] if quick else ["logreg", "linear", "svm"])
    lines += procs + stream + ["", "```"] + commands + stream_commands + ["```", ""]
    return lines
