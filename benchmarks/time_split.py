"""Where one extraction process spends its time: decode, transform, forward, timed in turn.

``python benchmarks/time_split.py BACKBONE WEIGHTS PRECISION BATCH keep|default`` runs the
same loop as ``run_extract.py`` over hymenoptera (HDF5 writes left out) and prints JSON:
milliseconds per image of each stage, the images/s of the whole loop, and the minor page
faults it cost. ``keep`` applies :func:`features.devices.keep_freed_memory` first, as
extraction does; ``default`` leaves glibc's allocator settings alone.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch

from benchmarks.common import HYMENOPTERA
from features.backbones import load_backbone
from features.data import discover
from features.devices import autocast, keep_freed_memory
from features.hooks import capture_features
from features.images import UnreadableImage


def main(backbone_name: str, weights: str, precision: str, batch: int, allocator: str) -> dict:
    if allocator == "keep":
        keep_freed_memory()
    backbone = load_backbone(backbone_name, weights)
    layout = discover(HYMENOPTERA)
    paths = [os.path.join(layout.root, s.path) for split in layout.splits.values() for s in split]
    prep = backbone.preprocessing
    pixels = prep.eval_pixels()
    model = backbone.model.to(memory_format=torch.channels_last)
    device = torch.device("cpu")
    spent = {"decode": 0.0, "transform": 0.0, "forward": 0.0}
    n = 0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode(), capture_features(model, backbone.spec) as capture, autocast(device, precision):
        start = time.perf_counter()
        for i in range(0, len(paths), batch):
            t0 = time.perf_counter()
            images = []
            for path in paths[i:i + batch]:
                try:
                    images.append(prep.load(path))
                except UnreadableImage:
                    pass
            t1 = time.perf_counter()
            x = prep.normalise(torch.stack([pixels(img) for img in images])).contiguous(memory_format=torch.channels_last)
            t2 = time.perf_counter()
            model(x)
            capture.pop().float().numpy()
            t3 = time.perf_counter()
            spent["decode"] += t1 - t0
            spent["transform"] += t2 - t1
            spent["forward"] += t3 - t2
            n += len(images)
        seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {**{f"{k}_ms": 1000 * v / n for k, v in spent.items()}, "images_per_second": n / seconds,
            "minor_faults": faults, "images": n}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
