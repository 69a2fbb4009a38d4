"""The exported model's input size, chosen on validation images.

Networks trained on random resized crops see objects larger during training than in a
centre crop of the same side, so a somewhat larger input at test time can score better
(Touvron et al., "Fixing the train-test resolution discrepancy", 2019). Whether it does
depends on the images: on hymenoptera the fused Lite0 head gains at 288 px, on the
generated digits it collapses. So the size is measured on the val split, never assumed.

Fed a larger input, a head fitted at the extraction size sees features a little off the
ones it was fitted on; the same paper refits the classifier at the test size. So at each
larger side the head is also refitted (:mod:`pipeline.refit`) and scored beside the head
as fused: on the digits, which collapse at 288 px as fused, the refitted head scores
better there than at 224.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from features.backbones import Backbone, feature_dim_at_size
from pipeline.affine import AffineHead
from pipeline.head_maths import HeadTrainingError
from pipeline.refit import HeadRecipe, Refit, features_and_logits, inference_model, refit_head

# 224 -> 256 and 288: the range where the published gains for 224-px training lie.
SIZE_FACTORS = (8 / 7, 9 / 7)
SIZE_STEP = 32  # the networks' total stride: every stage sees an even map, as at 224


@dataclass
class HeadRefit:
    """What refitting the head at another side needs (:mod:`pipeline.refit`)."""

    head: AffineHead
    recipe: HeadRecipe
    train: list[tuple[str, int]]  # the feature file's training images


@dataclass
class SizeChoice:
    """The side kept, how it was chosen, the val accuracy at each side scored, and the head to export."""

    size: int
    extraction_size: int
    accuracies: dict[int, float | None]  # the head as fused, fed each side
    rule: str = "auto"  # "auto": the best on val; "asked": --input-size N; "no val split": the extraction size
    seconds: float = 0.0  # spent scoring the sides (and refitting)
    refit_accuracies: dict[int, float | None] = field(default_factory=dict)  # the head refitted at each larger side
    refits: dict[int, Refit] = field(default_factory=dict)
    refit_kept: bool = False  # the head refitted at ``size`` replaces the fused one
    notes: list[str] = field(default_factory=list)  # what the refits had to say

    @property
    def refit(self) -> Refit | None:
        """The refitted head to export at ``size``, if it was kept."""
        return self.refits[self.size] if self.refit_kept else None

    def to_dict(self) -> dict:
        """What ``model.json`` records as ``input_size_choice``."""
        refit = self.refit
        return {"size": self.size, "extraction_size": self.extraction_size, "rule": self.rule,
                "val_accuracy": {str(s): a for s, a in self.accuracies.items()},
                "val_accuracy_refit": {str(s): a for s, a in self.refit_accuracies.items()},
                "refit_C": {str(s): r.C for s, r in self.refits.items()},
                "head": "refitted" if refit else "as fused",
                "refit_train_images": refit.train_images if refit else None,
                "seconds": round(self.seconds, 1)}


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
                      workers: int = 0, refit: HeadRefit | None = None, asked: int | None = None) -> SizeChoice:
    """Score the model on the val images at each of :func:`candidate_sizes` and keep the best.

    At each side other than the extraction's, the head is also refitted there
    (``refit``) and scored on the same val features; a side counts with the better of
    the two heads (the refitted one on a tie). A larger side must score strictly better
    to be kept (a tie keeps the smaller, cheaper one), as the best-epoch rule keeps an
    earlier epoch on a tie.

    Parameters
    ----------
    backbone : Backbone
        Fused (and perhaps fine-tuned) model, with the preprocessing it was extracted with.
    root : str
        Image root the ``val_items`` paths are relative to.
    val_items : list of (str, int)
        The val split's ``(path, label)`` pairs, as the feature file records them; may be
        empty when a side is ``asked`` for.
    device : torch.device
    workers : int
        DataLoader decode workers.
    refit : HeadRefit or None
        Refit the head at the other sides; ``None``: score the head as fused only.
    asked : int or None
        Score this side only and keep it (``--input-size N``); ``None``: choose.

    Returns
    -------
    SizeChoice
    """
    started = time.perf_counter()
    own = backbone.preprocessing.crop_size
    sizes = [asked] if asked else candidate_sizes(own)
    choice = SizeChoice(own, own, {}, "asked" if asked else "auto")
    for size in sizes:
        sized = at_size(backbone, size)
        model = inference_model(sized, device)  # scored as exported: BatchNorm folded, fp32 (no TF32 on CUDA)
        with _full_fp32():
            if val_items:
                X_val, logits, y_val = features_and_logits(model, sized, root, val_items, device, workers)
                choice.accuracies[size] = float(np.mean(logits.argmax(1) == y_val)) if len(y_val) else None
            if refit is not None and size != own:
                try:
                    refitted = refit_head(model, sized, refit.head, refit.recipe, root, refit.train, device, workers)
                except HeadTrainingError as exc:  # this side is scored with the fused head alone
                    choice.notes.append(f"warning: {exc}; the head as fused is scored there")
                    continue
                choice.refits[size] = refitted
                choice.notes += [f"refit at {size} px: {note}" for note in refitted.notes]
                if val_items:
                    choice.refit_accuracies[size] = (float(np.mean(refitted.head.logits(X_val).argmax(1) == y_val))
                                                     if len(y_val) else None)
    choice.size, choice.refit_kept = size_and_head(choice.accuracies, choice.refit_accuracies, set(choice.refits),
                                                   own, asked)
    choice.seconds = time.perf_counter() - started
    return choice


def size_and_head(fed: dict[int, float | None], refit: dict[int, float | None], refitted: set[int], own: int,
                  asked: int | None = None) -> tuple[int, bool]:
    """The side to export, and whether the head refitted there replaces the one fused.

    Parameters
    ----------
    fed : dict of int to float or None
        Val accuracy per side of the head as fused (None: no readable image).
    refit : dict of int to float or None
        Val accuracy per side of the head refitted there.
    refitted : set of int
        The sides where a refitted head exists (scored or not).
    own : int
        The extraction size.
    asked : int or None
        A side fixed by the user; ``None``: the best, with :func:`best_size`, each side
        counting with the better of its two heads.

    Returns
    -------
    size : int
    keep_refit : bool
        The refitted head scored at least as well as the fused one at ``size``, or
        there was nothing to compare it with.
    """
    better = {s: max((a for a in (acc, refit.get(s)) if a is not None), default=None) for s, acc in fed.items()}
    size = asked or best_size(better, own)
    if size not in refitted:
        return size, False
    if fed.get(size) is None:
        return size, True
    return size, refit.get(size) is not None and refit[size] >= fed[size]


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
