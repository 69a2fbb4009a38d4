"""Per-image cost of phone photos against the originals: decode (+ transform) and the forward pass.

``python benchmarks/phone_split.py PHONE_ROOT ORIGINAL_ROOT N`` prints JSON: core-milliseconds
per image to decode and transform the first N images of each root (one thread), for the 12 MP
copies both with reduced-scale decoding and in full, and the Lite0 fp32 forward pass at batch
32 in wall milliseconds per image and in core-milliseconds (wall x torch threads).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import torch

from features.backbones import load_backbone
from features.devices import keep_freed_memory
from features.hooks import capture_features


def _files(root: str, n: int) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return found[:n]


def _decode_ms(paths: list[str], preprocessing) -> float:
    tf = preprocessing.eval_transform()
    start = time.perf_counter()
    for path in paths:
        tf(preprocessing.load(path))
    return 1000 * (time.perf_counter() - start) / len(paths)


def main(phone_root: str, original_root: str, n: int) -> dict:
    keep_freed_memory()
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    p = backbone.preprocessing
    full = dataclasses.replace(p, jpeg_draft=False)
    phone, original = _files(phone_root, n), _files(original_root, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # decoding runs on one core
    _decode_ms(phone[:2], p)  # warm-up
    result = {"images": len(phone), "phone_draft_ms": _decode_ms(phone, p), "phone_full_ms": _decode_ms(phone, full),
              "original_ms": _decode_ms(original, p)}
    torch.set_num_threads(threads)
    tf = p.eval_transform()
    x = torch.stack([tf(p.load(path)) for path in original[:64]]).contiguous(memory_format=torch.channels_last)
    model = backbone.model.to(memory_format=torch.channels_last)
    with torch.inference_mode(), capture_features(model, backbone.spec) as capture:
        model(x[:32])
        capture.pop()
        start = time.perf_counter()
        for i in range(0, len(x), 32):
            model(x[i:i + 32])
            capture.pop()
        forward = 1000 * (time.perf_counter() - start) / len(x)
    result.update(forward_ms=forward, threads=threads, forward_core_ms=forward * threads)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
