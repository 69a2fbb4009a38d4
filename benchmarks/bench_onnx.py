"""Section on ONNX: the cost of the ONNX export per fuse, and onnxruntime against the torch.export program."""

from __future__ import annotations

import json
import os
import statistics

from benchmarks.common import HYMENOPTERA, run_measured

def section_onnx(out_dir: str, quick: bool) -> list[str]:
    """Fuse efficientnet_lite0 + logreg with and without ONNX; predict speed of both runtimes on hymenoptera val.

    Parameters
    ----------
    out_dir : str
        Work folder (feature file, head, model folders).
    quick : bool
        One repeat instead of five (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    repeats = 1 if quick else 5
    val = os.path.join(HYMENOPTERA, "val")
    feats, head = os.path.join(out_dir, "onnx-lite0.h5"), os.path.join(out_dir, "onnx-logreg")
    model = os.path.join(out_dir, "onnx-model")
    commands = []
    for args in (["run_extract.py", "--data", HYMENOPTERA, "--out", feats, "--overwrite", "--quiet"],
                 ["run_head.py", "--features", feats, "--clf", "logreg", "--out", head]):
        commands.append(run_measured(args).command)
    fuse = {}
    for flag in ("--no-onnx", "--onnx"):  # the second leaves the folder that predict reads below
        m = run_measured(["-m", "pipeline.fuse", "--head", head, "--out", model, flag, "--quiet"])
        fuse[flag] = m
        commands.append(m.command)
    with open(os.path.join(model, "model.json"), encoding="utf-8") as fh:
        onnx_diff = f'{json.load(fh)["exports"]["onnx"]["max_abs_diff"]:.2e}'

    fwd = run_measured(["benchmarks/onnx_forward.py", model, val, "32", str(repeats)])
    commands.append(fwd.command)
    r = json.loads(fwd.stdout)
    walls = {"torch": [], "onnxruntime": []}
    for _ in range(repeats):
        for runtime in walls:  # in turn, so that a change in load hits both
            m = run_measured(["-m", "pipeline.predict", "--model", model, val, "--format", "jsonl", "--runtime", runtime])
            walls[runtime].append(m.seconds)
            if len(walls[runtime]) == 1:
                commands.append(m.command)
    n = r["images"]
    wall = {k: statistics.median(v) for k, v in walls.items()}
    forward = r["img_per_s"]
    lines = ["## 9. ONNX Runtime against the torch.export program (efficientnet_lite0 + logreg head, "
             f"hymenoptera val, batch {r['batch']})", "",
             f"One model folder, fused with `--onnx`: `model.pt2` run by torch (predict's default) and `model.onnx` "
             f"run by onnxruntime (`--runtime onnxruntime`), on the {n} val images, batch {r['batch']}, "
             f"{r['threads']} threads each (onnxruntime's intra-op threads set to torch's). Forward only: "
             "images decoded and preprocessed once, then every image through each runtime in turn, median of "
             f"{repeats} repeats. Whole command: `python -m pipeline.predict` from process start to exit "
             f"(imports, model loading, decoding), median of {repeats} runs each, in turn.", "",
             "| runtime | forward-only img/s | whole predict command s | whole command img/s |", "|---|---|---|---|"]
    for runtime, label in (("torch", "torch (`model.pt2`)"), ("onnxruntime", "onnxruntime (`model.onnx`)")):
        lines.append(f"| {label} | {forward[runtime]:.1f} | {wall[runtime]:.2f} | {n / wall[runtime]:.1f} |")
    lines += ["", f"Ratio onnxruntime / torch: **{forward['onnxruntime'] / forward['torch']:.2f}** forward only, "
              f"**{wall['torch'] / wall['onnxruntime']:.2f}** for the whole command (images/s). Largest difference "
              f"between the two runtimes' logits over the {n} images: {r['max_abs_diff_logits']:.2g}; ONNX against "
              f"the eager model on fuse's check batch: {onnx_diff}.", "",
              f"The ONNX export costs every fuse: `pipeline.fuse` (no fine-tuning) took "
              f"{fuse['--onnx'].seconds:.1f} s with `--onnx` against {fuse['--no-onnx'].seconds:.1f} s with "
              f"`--no-onnx` (+{fuse['--onnx'].seconds - fuse['--no-onnx'].seconds:.1f} s; one run each).", ""]
    if quick:
        lines += ["Quick run: one repeat of each measurement.", ""]
    lines += ["```"] + commands + ["```", ""]
    return lines
