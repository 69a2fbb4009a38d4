"""The forward pass eager against ``torch.compile``: warm-up, rate, and how far the features move.

``python benchmarks/compile_forward.py BACKBONE WEIGHTS PRECISION BATCH IMAGES`` prints JSON. The
network is prepared as extraction runs it, on preprocessed hymenoptera val images. The warm-up is
the first compiled batch's time less an eager batch's; run it with a fresh ``TORCHINDUCTOR_CACHE_DIR``
for a cold warm-up, as a user's first run has.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from benchmarks.forward_only import prepared
from features.devices import autocast
from features.hooks import capture_features


def _rate(model, spec, x: torch.Tensor, batch: int, precision: str) -> tuple[float, float, torch.Tensor]:
    """(first batch's seconds, img/s over the rest, features of every image)."""
    device = torch.device("cpu")
    with torch.inference_mode(), capture_features(model, spec) as capture, autocast(device, precision):
        start = time.perf_counter()
        model(x[:batch])
        first = time.perf_counter() - start
        out = [capture.pop().float()]
        start = time.perf_counter()
        for i in range(batch, len(x), batch):
            model(x[i:i + batch])
            out.append(capture.pop().float())
        return first, (len(x) - batch) / (time.perf_counter() - start), torch.cat(out)


def main(backbone_name: str, weights: str, precision: str, batch: int, n_images: int) -> dict:
    backbone, model, x, _ = prepared(backbone_name, weights, True, n_images, precision)
    x = x[: len(x) // batch * batch]  # whole batches: one shape for the compiled model
    _rate(model, backbone.spec, x[:batch], batch, precision)  # eager warm-up (oneDNN primitives)
    eager_first, eager_rate, eager = _rate(model, backbone.spec, x, batch, precision)
    compiled_first, compiled_rate, compiled = _rate(torch.compile(model, dynamic=False), backbone.spec, x, batch,
                                                    precision)
    cos = torch.nn.functional.cosine_similarity(eager, compiled, dim=1)
    return {"eager_images_per_second": eager_rate, "compiled_images_per_second": compiled_rate,
            "warmup_seconds": compiled_first - eager_first, "cosine_min": float(cos.min()),
            "images": len(x)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
