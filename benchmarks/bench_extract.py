"""Sections on stage one: extraction efficiency, memory vs dataset size, bf16 vs fp32."""

from __future__ import annotations

import json
import os

import numpy as np

from benchmarks.common import HYMENOPTERA, extraction_rate, head_val_accuracy, run_measured
from features.store import FeatureFile

def full_path(out_dir: str, backbone: str, weights: str, precision: str, batch: int, data: str = HYMENOPTERA,
              name: str | None = None, extra: tuple[str, ...] = ()):
    out = os.path.join(out_dir, name or f"{backbone}-{precision}-b{batch}.h5")
    m = run_measured(["run_extract.py", "--data", data, "--backbone", backbone, "--weights", weights,
                      "--precision", precision, "--batch-size", str(batch), "--out", out, "--overwrite", "--quiet",
                      "--report", out + ".json", *extra])
    images, seconds = extraction_rate(out + ".json")
    return m, out, images / seconds


def forward_only(backbone: str, weights: str, precision: str, batch: int):
    m = run_measured(["benchmarks/forward_only.py", backbone, weights, precision, str(batch)])
    return m, json.loads(m.stdout)["images_per_second"]


def section_extraction(out_dir: str, quick: bool) -> tuple[list[str], dict, dict]:
    """Forward-only vs full path, per backbone and precision; batch sweep; peak RSS."""
    configs = [("efficientnet_lite0", "DEFAULT")] + ([] if quick else [("resnet50", "none")])
    precisions = ["fp32", "bf16"]
    lines = ["## 1. Extraction efficiency (hymenoptera, 398 images, batch 32)", "",
             "Forward-only: the model on preloaded, preprocessed tensors (128 val images). Full path: "
             "`run_extract.py` (decode, resize, forward, HDF5 write), rate over its extraction loops "
             "(start-up and model loading excluded; the whole command's wall time is shown too).", "",
             "| backbone | precision | forward-only img/s | full path img/s | full / forward | command wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    files, rates, commands = {}, {}, []
    for backbone, weights in configs:
        for precision in precisions:
            fwd, fwd_rate = forward_only(backbone, weights, precision, 32)
            full, path, full_rate = full_path(out_dir, backbone, weights, precision, 32)
            files[(backbone, precision)] = path
            rates[(backbone, precision, "forward")], rates[(backbone, precision, "full")] = fwd_rate, full_rate
            commands += [fwd.command, full.command]
            lines.append(f"| {backbone} ({weights}) | {precision} | {fwd_rate:.1f} | {full_rate:.1f} | "
                         f"{full_rate / fwd_rate:.2f} | {full.seconds:.1f} | {full.peak_rss_mb:.0f} |")
    lines += ["", "Batch-size sweep, efficientnet_lite0 fp32, full path:", "",
              "| batch | full path img/s | peak RSS MB |", "|---|---|---|"]
    for batch in ([] if quick else [8, 16, 64]):
        m, _, rate = full_path(out_dir, "efficientnet_lite0", "DEFAULT", "fp32", batch)
        commands.append(m.command)
        lines.append(f"| {batch} | {rate:.1f} | {m.peak_rss_mb:.0f} |")
    split_lines, split_commands = _time_split()
    lines += split_lines + ["", "Commands:", "", "```"] + commands + split_commands + ["```", ""]
    return lines, files, rates


def _time_split() -> tuple[list[str], list[str]]:
    """Per-stage time of one extraction loop, with glibc's default allocator settings and with extraction's."""
    lines = ["", "Where the time goes (efficientnet_lite0 fp32, batch 32, all 398 images; the stages of the "
             "extraction loop timed in turn, HDF5 writes left out):", "",
             "| allocator | decode ms/img | transform ms/img | forward ms/img | img/s | minor page faults |",
             "|---|---|---|---|---|---|"]
    commands, measured = [], {}
    for allocator, label in (("default", "glibc defaults"), ("keep", "freed memory kept (what extraction does)")):
        m = run_measured(["benchmarks/time_split.py", "efficientnet_lite0", "DEFAULT", "fp32", "32", allocator])
        r = measured[allocator] = json.loads(m.stdout)
        commands.append(m.command)
        lines.append(f"| {label} | {r['decode_ms']:.2f} | {r['transform_ms']:.2f} | {r['forward_ms']:.2f} | "
                     f"{r['images_per_second']:.1f} | {r['minor_faults']:,} |")
    k = measured["keep"]
    host = k["decode_ms"] + k["transform_ms"]
    # The forward pass keeps both cores busy; decoding runs on one. Overlapping them cannot remove
    # work, so on 2 cores the best possible full/forward ratio is F / (F + D/2); in turn it is F / (F + D).
    overlapped = k["forward_ms"] / (k["forward_ms"] + host / 2)
    serial = k["forward_ms"] / (k["forward_ms"] + host)
    lines += ["", f"With glibc's default settings every batch's activation buffers were returned to the kernel and "
              f"page-faulted back in ({measured['default']['minor_faults']:,} faults against {k['minor_faults']:,}); "
              f"extraction now keeps freed memory for reuse (`features.devices.keep_freed_memory`), which is the "
              f"{k['images_per_second'] / measured['default']['images_per_second']:.2f}x above. What remains is "
              f"decoding and resizing: {host:.2f} ms per image on one core against a {k['forward_ms']:.2f} ms forward "
              f"pass that already uses both cores. Decoding while the model runs only moves that work onto cores the "
              f"forward pass needs (a DataLoader worker was measured slower on 2 cores), so on this machine the "
              f"full/forward ratio is bounded by {overlapped:.2f} with perfect overlap and {serial:.2f} in turn; "
              "a GPU, or more cores than the forward pass uses, removes that bound."]
    return lines, commands


def _copies(out_dir: str, factor: int) -> str:
    """A dataset ``factor`` times hymenoptera's train split, as symlinks (the files are real images)."""
    root = os.path.join(out_dir, f"hymenoptera_x{factor}")
    if os.path.isdir(root):
        return root
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            src = os.path.join(HYMENOPTERA, split, cls)
            dst = os.path.join(root, split, cls)
            os.makedirs(dst)
            for k in range(factor):
                for name in sorted(os.listdir(src)):
                    os.symlink(os.path.join(src, name), os.path.join(dst, f"c{k}_{name}"))
    return root


def section_memory(out_dir: str, quick: bool) -> list[str]:
    """Peak RSS of extraction at 1x and 10x (or 3x quick) the dataset."""
    factor = 2 if quick else 10
    lines = ["## 4. Memory vs dataset size (efficientnet_lite0, bf16 for speed, batch 32)", "",
             "| dataset | images | peak RSS MB | command wall s |", "|---|---|---|---|"]
    commands = []
    for label, data in (("hymenoptera", HYMENOPTERA), (f"hymenoptera x{factor}", _copies(out_dir, factor))):
        m, path, _ = full_path(out_dir, "efficientnet_lite0", "DEFAULT", "bf16", 32, data=data,
                               name=f"memory-{os.path.basename(data)}.h5")
        images, _ = extraction_rate(path + ".json")
        commands.append(m.command)
        lines.append(f"| {label} | {images} | {m.peak_rss_mb:.0f} | {m.seconds:.1f} |")
    lines += ["", "Rows are streamed to HDF5 per batch, so memory does not grow with the number of images.", "",
              "```"] + commands + ["```", ""]
    return lines


def _cosines(a_path: str, b_path: str) -> np.ndarray:
    with FeatureFile(a_path) as a, FeatureFile(b_path) as b:
        xa, xb = a.read_split("val").features, b.read_split("val").features
    return (xa * xb).sum(1) / (np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1) + 1e-12)


def section_precision(out_dir: str, files: dict, rates: dict) -> list[str]:
    """bf16 vs fp32: speed ratio, feature cosine, and the same head's val accuracy (Lite0)."""
    lines = ["## 5. Precision: bf16 autocast vs fp32 on this CPU", "",
             "| backbone | forward-only bf16/fp32 | full path bf16/fp32 | val cosine min / mean | logreg val acc fp32 | logreg val acc bf16 |",
             "|---|---|---|---|---|---|"]
    commands = []
    for backbone in sorted({b for b, _ in files}):
        cos = _cosines(files[(backbone, "fp32")], files[(backbone, "bf16")])
        accs = []
        if backbone == "efficientnet_lite0":
            for precision in ("fp32", "bf16"):
                head = os.path.join(out_dir, f"head-{backbone}-{precision}")
                m = run_measured(["run_head.py", "--features", files[(backbone, precision)], "--clf", "logreg", "--out", head])
                commands.append(m.command)
                accs.append(f"{head_val_accuracy(head)[0]:.4f}")
        else:
            accs = ["n/a (random weights)"] * 2
        fwd = rates[(backbone, "bf16", "forward")] / rates[(backbone, "fp32", "forward")]
        full = rates[(backbone, "bf16", "full")] / rates[(backbone, "fp32", "full")]
        lines.append(f"| {backbone} | {fwd:.2f}x | {full:.2f}x | {cos.min():.5f} / {cos.mean():.5f} | {accs[0]} | {accs[1]} |")
    lines += ["", "```"] + commands + ["```", ""]
    return lines
