"""Section on torch.compile: its warm-up and speed-up per backbone and precision, and the full path with it."""

from __future__ import annotations

import json
import os
import shutil

import torch

from benchmarks.bench_extract import forward_only, full_path, hymenoptera_copies
from benchmarks.common import run_measured
from features.compiling import CPU_SPEEDUP, CPU_WARMUP_SECONDS
from features.devices import default_batch_size


def _fresh_cache(out_dir: str, name: str) -> dict:
    """An empty inductor cache, so the warm-up measured is a first run's."""
    path = os.path.join(out_dir, f"inductor-{name}")
    shutil.rmtree(path, ignore_errors=True)
    return {"TORCHINDUCTOR_CACHE_DIR": path}


def section_compile(out_dir: str, quick: bool) -> list[str]:
    """Forward-only eager vs compiled (cold cache), then extraction with --compile off / on (cold cache)."""
    configs = [("efficientnet_lite0", "DEFAULT")] + ([] if quick else [("resnet50", "none")])
    batch = default_batch_size(torch.device("cpu"))  # what extraction runs with on the CPU
    lines = [f"## 16. torch.compile: warm-up against images (forward pass as extraction prepares it, batch {batch})",
             "",
             "Forward-only: 128 preprocessed hymenoptera val images, eager and then through `torch.compile` "
             "(`benchmarks/compile_forward.py`), with an empty inductor cache, so the warm-up is a first run's. "
             "Break-even: the images after which the compiled model has repaid its warm-up.", "",
             "| backbone | precision | eager img/s | compiled img/s | speed-up | cold warm-up s | break-even images | "
             "feature cosine min |",
             "|---|---|---|---|---|---|---|---|"]
    commands = []
    for backbone, weights in configs:
        for precision in ("fp32", "bf16"):
            m = run_measured(["benchmarks/compile_forward.py", backbone, weights, precision, str(batch), "128"],
                             env=_fresh_cache(out_dir, f"{backbone}-{precision}"))
            commands.append(f"TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) {m.command}")
            r = json.loads(m.stdout)
            eager, compiled = r["eager_images_per_second"], r["compiled_images_per_second"]
            saved_per_image = 1 / eager - 1 / compiled
            even = f"{r['warmup_seconds'] / saved_per_image:,.0f}" if saved_per_image > 0 else "never"
            lines.append(f"| {backbone} | {precision} | {eager:.1f} | {compiled:.1f} | {compiled / eager:.2f}x | "
                         f"{r['warmup_seconds']:.1f} | {even} | {r['cosine_min']:.6f} |")
    data = hymenoptera_copies(out_dir, 2 if quick else 10)
    lines += ["", f"Full path on hymenoptera x{2 if quick else 10} (symlinked copies of every image), "
              "`run_extract.py` rate over its extraction loops: `--compile off`, and `--compile on` with an empty "
              "cache (its warm-up included). Against the forward pass as built (unfolded, eager: "
              "`benchmarks/forward_only.py`); the full path aims at 0.95 of it or more.", "",
              "| backbone | precision | forward as built img/s | --compile off img/s | --compile on img/s | "
              "off / built | on / built | on / off |",
              "|---|---|---|---|---|---|---|---|"]
    for backbone, weights, precision in [("efficientnet_lite0", "DEFAULT", "fp32"), ("efficientnet_lite0", "DEFAULT", "bf16")] + \
            ([] if quick else [("resnet50", "none", "bf16")]):
        fwd, built = forward_only(backbone, weights, precision, batch)
        rates = {}
        for mode in ("off", "on"):
            m, _, rates[mode] = full_path(out_dir, backbone, weights, precision, batch, data=data,
                                          name=f"compile-{mode}-{backbone}-{precision}.h5", extra=("--compile", mode),
                                          env=_fresh_cache(out_dir, f"full-{backbone}-{precision}"))
            commands.append(m.command if mode == "off" else f"TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) {m.command}")
        commands.append(fwd.command)
        lines.append(f"| {backbone} | {precision} | {built:.1f} | {rates['off']:.1f} | {rates['on']:.1f} | "
                     f"{rates['off'] / built:.2f} | {rates['on'] / built:.2f} | {rates['on'] / rates['off']:.2f}x |")
    lines += ["", f"`--compile auto` (the default) compiles on the CPU only when the forward passes left, timed on the "
              f"run's first batches, would save more than a {CPU_WARMUP_SECONDS:.0f} s warm-up at the precision's "
              f"smallest measured speed-up ({', '.join(f'{p} {s}x' for p, s in CPU_SPEEDUP.items())}): conservative "
              "figures against the table above. Hymenoptera and its x10 copy stay eager.",
              "", "```"] + commands + ["```", ""]
    return lines
