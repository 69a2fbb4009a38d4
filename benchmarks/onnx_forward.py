"""Model-forward-only speed of a MODEL_DIR's two runtimes: ``model.pt2`` (torch) and ``model.onnx`` (onnxruntime).

``python benchmarks/onnx_forward.py MODEL_DIR IMAGE_DIR BATCH REPEATS`` prints JSON. The images are
decoded and preprocessed once, as predict does; each repeat then runs every image through the torch
program and through the onnxruntime session, in turn (so that load drifts hit both alike), at the same
batch size and thread count. Reported: images/s of the median repeat per runtime and the largest
difference between their logits.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import torch

from features.devices import keep_freed_memory
from features.preprocessing import Preprocessing
from pipeline.model_meta import read_model_meta, verified_export
from pipeline.predict import OnnxModel, expand_inputs


def _seconds(model, batches: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = [model(b) for b in batches]
    return time.perf_counter() - start, out


def main(model_dir: str, image_dir: str, batch: int, repeats: int) -> dict:
    keep_freed_memory()  # as predict does
    meta = read_model_meta(model_dir)
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    transform = preprocessing.eval_transform()
    paths = expand_inputs([image_dir])
    x = torch.stack([transform(preprocessing.load(p)) for p in paths])
    batches = [x[i:i + batch] for i in range(0, len(x), batch)]
    threads = torch.get_num_threads()
    runtimes = {"torch": torch.export.load(verified_export(model_dir, meta, "torch.export")).module(),
                "onnxruntime": OnnxModel(verified_export(model_dir, meta, "onnx"), threads)}
    for model in runtimes.values():
        _seconds(model, batches[:1])  # warm-up: first-call allocations and kernel selection
    times = {name: [] for name in runtimes}
    outputs = {}
    for _ in range(repeats):
        for name, model in runtimes.items():
            seconds, outputs[name] = _seconds(model, batches)
            times[name].append(seconds)
    diff = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(outputs["torch"], outputs["onnxruntime"]))
    return {"images": len(x), "batch": batch, "threads": threads, "repeats": repeats,
            "img_per_s": {name: len(x) / statistics.median(t) for name, t in times.items()},
            "seconds": times, "max_abs_diff_logits": diff}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
