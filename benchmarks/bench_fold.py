"""Section on BatchNorm folding: the forward pass of each backbone family, folded against as built."""

from __future__ import annotations

import json

from benchmarks.bench_extract import FORWARD_PASSES, forward_only

# One member of each family with BatchNorm (and ConvNeXt, which has none), smallest first.
FAMILIES = [("efficientnet_lite0", "DEFAULT"), ("mobilenet_v3_large", "none"), ("efficientnet_b0", "none"),
            ("regnet_y_400mf", "none"), ("resnet50", "none"), ("densenet121", "none"), ("convnext_tiny", "none")]


def section_fold(out_dir: str, quick: bool) -> list[str]:
    """Forward-only img/s per family with and without folding, measured in turn in one run.

    Parameters
    ----------
    out_dir : str
        Unused (the measurement writes nothing); kept for the common section signature.
    quick : bool
        Three families and 32 images instead of 128 (a smoke run, not for quoting).

    Returns
    -------
    list of str
        The section's Markdown lines.
    """
    families = FAMILIES[:3] if quick else FAMILIES
    images = 32 if quick else 128
    lines = ["## 10. BatchNorm folded into convolutions (forward pass only, fp32, batch 32)", "",
             "Extraction, and the exports of a fused model, fold every conv -> BatchNorm pair that a `torch.fx` "
             "trace proves adjacent (`features/folding.py`); fine-tuning keeps real BatchNorm. Each row runs the "
             f"same {images} preprocessed hymenoptera images through the network as built and folded, in turn, "
             f"the fastest of {FORWARD_PASSES} passes each.", "",
             "| backbone | BatchNorm layers folded | img/s as built | img/s folded | speed-up |", "|---|---|---|---|---|"]
    commands = []
    for name, weights in families:
        rates = {}
        for fold in (0, 1):
            m, _ = forward_only(name, weights, "fp32", 32, fold, images, FORWARD_PASSES)
            commands.append(m.command)
            rates[fold] = json.loads(m.stdout)  # also says how many BatchNorm layers were folded
        lines.append(f"| {name} | {rates[1]['batchnorm_folded']} | {rates[0]['images_per_second']:.1f} | "
                     f"{rates[1]['images_per_second']:.1f} | "
                     f"{rates[1]['images_per_second'] / rates[0]['images_per_second']:.2f}x |")
    return lines + ["", "```"] + commands + ["```", ""]
