"""The exported model's input size, chosen on validation images.

Networks trained on random resized crops see objects larger during training than in a
centre crop of the same side, so a somewhat larger input at test time can score better
(Touvron et al., "Fixing the train-test resolution discrepancy", 2019). Whether it does
depends on the images: on hymenoptera the fused Lite0 head gains at 288 px, on the
generated digits it collapses. So the size is measured on the val split, never assumed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from features.backbones import Backbone, feature_dim_at_size
from features.folding import fold_batchnorm
from pipeline.finetune import eval_loader, evaluate

# 224 -> 256 and 288: the range where the published gains for 224-px training lie.
SIZE_FACTORS = (8 / 7, 9 / 7)
SIZE_STEP = 32  # the networks' total stride: every stage sees an even map, as at 224


@dataclass
class SizeChoice:
    """The side kept, how it was chosen, and the val accuracy at each side scored."""

    size: int
    extraction_size: int
    accuracies: dict[int, float | None]
    rule: str = "auto"  # "auto": the best on val; "asked": --input-size N; "no val split": the extraction size
    seconds: float = 0.0  # spent scoring the sides

    def to_dict(self) -> dict:
        """What ``model.json`` records as ``input_size_choice``."""
        return {"size": self.size, "extraction_size": self.extraction_size, "rule": self.rule,
                "val_accuracy": {str(s): a for s, a in self.accuracies.items()}, "seconds": round(self.seconds, 1)}


def candidate_sizes(crop_size: int) -> list[int]:
    """The sides to score: the extraction size, then larger ones.

    Parameters
    ----------
    crop_size : int
        The side the features were extracted at.

    Returns
    -------
    list of int
        ``crop_size``, then the multiples of 32 nearest 8/7 and 9/7 of it (halves round
        up) that are larger, ascending, without repeats.
    """
    larger = {SIZE_STEP * math.floor(crop_size * f / SIZE_STEP + 0.5) for f in SIZE_FACTORS}
    return [crop_size] + sorted(s for s in larger if s > crop_size)


def model_at_size(backbone: Backbone, size: int) -> nn.Module:
    """``backbone.model`` (fused, perhaps fine-tuned) for square inputs of side ``size``.

    Parameters
    ----------
    backbone : Backbone
    size : int
        Input side in pixels.

    Returns
    -------
    nn.Module
        The same module where the network takes every size; for networks whose padding is
        fixed when built (TF "same" padding), the architecture built for ``size`` with the
        same classifier slot and the same weights, on the same device, in eval mode.

    Raises
    ------
    features.backbones.BackboneError
        The network cannot take inputs of that side.
    """
    spec = backbone.spec
    if spec.build_for_input is None:
        feature_dim_at_size(backbone.model, spec, size)
        return backbone.model
    model = spec.build_for_input(size)
    feature_dim_at_size(model, spec, size)
    model.set_submodule(spec.classifier_slot, copy.deepcopy(backbone.model.get_submodule(spec.classifier_slot)))
    model.load_state_dict(backbone.model.state_dict())
    model.requires_grad_(False)
    return model.to(next(backbone.model.parameters()).device).eval()


def at_size(backbone: Backbone, size: int) -> Backbone:
    """``backbone`` with its model and preprocessing for inputs of side ``size``.

    Parameters
    ----------
    backbone : Backbone
    size : int
        Input side in pixels.

    Returns
    -------
    Backbone
        ``backbone`` itself at its own size; otherwise a copy holding :func:`model_at_size`
        and the preprocessing at that crop size (the resize keeps its ratio to the crop).

    Raises
    ------
    features.backbones.BackboneError
        The network cannot take inputs of that side.
    """
    if size == backbone.preprocessing.crop_size:
        return backbone
    return dataclasses.replace(backbone, model=model_at_size(backbone, size),
                               preprocessing=backbone.preprocessing.at_crop_size(size))


def choose_input_size(backbone: Backbone, root: str, val_items: list[tuple[str, int]], device: torch.device,
                      workers: int = 0) -> SizeChoice:
    """Score the model on the val images at each of :func:`candidate_sizes` and keep the best.

    A larger side must score strictly better to be kept (a tie keeps the smaller, cheaper
    one), as the best-epoch rule keeps an earlier epoch on a tie.

    Parameters
    ----------
    backbone : Backbone
        Fused (and perhaps fine-tuned) model, with the preprocessing it was extracted with.
    root : str
        Image root the ``val_items`` paths are relative to.
    val_items : list of (str, int)
        The val split's ``(path, label)`` pairs, as the feature file records them.
    device : torch.device
    workers : int
        DataLoader decode workers.

    Returns
    -------
    SizeChoice
    """
    started = time.perf_counter()
    own = backbone.preprocessing.crop_size
    accuracies: dict[int, float | None] = {}
    for size in candidate_sizes(own):
        sized = at_size(backbone, size)
        # Scored as exported: BatchNorm folded, fp32 (no TF32 on CUDA); channels-last is a third faster here.
        model, folded = fold_batchnorm(sized.model.to(device), (backbone.spec.classifier_slot,))
        if not folded:  # the same module came back: convert a copy, never the caller's model
            model = copy.deepcopy(model)
        loader = eval_loader(root, val_items, sized.preprocessing, workers, batch_size=32)
        with _full_fp32():
            accuracies[size] = evaluate(model.to(memory_format=torch.channels_last), loader, device,
                                        channels_last=True)
    return SizeChoice(best_size(accuracies, own), own, accuracies, seconds=time.perf_counter() - started)


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """CUDA convolutions and matmuls without TF32 inside (the export is checked in fp32 on the CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def best_size(accuracies: dict[int, float | None], own: int) -> int:
    """The side with the highest accuracy; a tie, or an unscored side, keeps the smaller one.

    Parameters
    ----------
    accuracies : dict of int to float or None
        Val accuracy per side (None: no readable image).
    own : int
        The extraction size, kept unless a side scores strictly better.

    Returns
    -------
    int
    """
    best = own
    for size in sorted(accuracies):  # ascending: a later side must beat the best so far
        if accuracies[size] is not None and (accuracies.get(best) is None or accuracies[size] > accuracies[best]):
            best = size
    return best
