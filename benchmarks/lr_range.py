"""Learning-rate range test from a fused head: would it choose the body's rate per dataset?

``python benchmarks/lr_range.py --head HEAD_DIR`` prints JSON: the rates tried, the
smoothed training loss after each, and the suggested rate.

The test (Smith's range test, as fastai's ``lr_find`` runs it) trains the fused model for
a few dozen batches with the body's rate rising geometrically from ``lr_min`` to
``lr_max`` (the head at its multiple, the default recipe otherwise), records the
smoothed training loss, and stops once the loss diverges. It suggests a tenth of the
rate at the lowest loss.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import click
import torch
from torch import nn

from features.devices import autocast, resolve_precision
from pipeline.affine import load_affine
from pipeline.build_model import BuildConfig, file_splits
from pipeline.finetune import (FinetuneConfig, _loaders, _logits, _set_phase, crop_scale_for, freeze_lowest, make_optimizer,
                               parameter_groups, source_short_side)
from pipeline.fusing import fuse_head
from pipeline.rebuild import rebuild_backbone

SMOOTHING = 0.9  # EMA of the batch losses, bias-corrected: a few dozen noisy batches of 16
DIVERGED = 4.0  # stop once the smoothed loss is this many times its lowest
MIN_DROP = 0.05  # the lowest smoothed loss must be this share below the first to count as a descent


@dataclass
class RangeTest:
    """What the range test saw and suggests.

    Attributes
    ----------
    lrs : list of float
        The body's rate at each batch.
    losses : list of float
        The smoothed training loss after each batch.
    suggested : float or None
        A tenth of the rate at the lowest smoothed loss; ``None`` when no rate lowered
        the loss by ``MIN_DROP`` (fine-tuning is then unlikely to pay).
    seconds : float
        Wall time of the test.
    """

    lrs: list[float]
    losses: list[float]
    suggested: float | None
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready: rates and losses rounded to 4 significant figures."""
        return {"lrs": [float(f"{v:.4g}") for v in self.lrs], "losses": [float(f"{v:.4g}") for v in self.losses],
                "suggested": self.suggested, "seconds": round(self.seconds, 1)}


def geometric_rates(lr_min: float, lr_max: float, steps: int) -> list[float]:
    """``steps`` rates from ``lr_min`` to ``lr_max``, evenly spaced on a log scale."""
    if steps < 2 or not 0 < lr_min < lr_max:
        raise ValueError("the range test needs steps >= 2 and 0 < lr_min < lr_max")
    ratio = math.log(lr_max / lr_min) / (steps - 1)
    return [lr_min * math.exp(ratio * i) for i in range(steps)]


def smoothed(losses: Iterable[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average of ``losses`` (as fastai's ``lr_find`` smooths them)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def suggest_lr(lrs: list[float], losses: list[float], min_drop: float = MIN_DROP) -> float | None:
    """A tenth of the rate at the lowest smoothed loss, or ``None`` when nothing lowered it.

    Parameters
    ----------
    lrs, losses : list of float
        The rates tried and the smoothed loss after each.
    min_drop : float
        The lowest loss must be at least this share below the first one.

    Returns
    -------
    float or None
        The suggested rate: one decade below the point where the loss was lowest, where
        training is still well clear of divergence.
    """
    if len(lrs) != len(losses) or not losses:
        raise ValueError("one smoothed loss per rate is needed")
    best = min(range(len(losses)), key=losses.__getitem__)
    if losses[best] > (1 - min_drop) * losses[0]:
        return None
    return lrs[best] / 10


def _cycled(loader: Iterable) -> Iterable:
    """The loader's readable batches, over and over; ends at once if it has none."""
    while True:
        readable = False
        for batch in loader:
            if batch is not None:
                readable = True
                yield batch
        if not readable:
            return


def lr_range_test(model: nn.Module, loader: Iterable, make_optimiser: Callable[[float], torch.optim.Optimizer],
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device, precision: str,
                  lr_min: float = 1e-6, lr_max: float = 1e-2, steps: int = 30) -> RangeTest:
    """Train ``model`` for up to ``steps`` batches at geometrically rising rates, then restore it.

    Parameters
    ----------
    model : nn.Module
        In the train/eval modes and with the gradients the fine-tune will use.
    loader : iterable
        Training batches ``(x, y)`` (``None`` for a batch with no readable image); cycled
        when shorter than ``steps``.
    make_optimiser : callable
        ``rate -> optimiser`` whose parameter groups run at ``rate`` times their share
        (the head's multiple); called once with 1.0, the shares are read from it.
    loss_fn : callable
        ``(logits, labels) -> loss``.
    device : torch.device
    precision : str
        Autocast precision, as in training.
    lr_min, lr_max : float
        The body's first and last rate.
    steps : int
        Batches at most.

    Returns
    -------
    RangeTest
        The rates, the smoothed losses and the suggestion. ``model``'s weights and
        buffers and torch's random state are as they were before the call.
    """
    started = time.perf_counter()
    saved_weights = copy.deepcopy(model.state_dict())
    saved_rng = torch.get_rng_state()
    optimiser = make_optimiser(1.0)
    shares = [group["lr"] for group in optimiser.param_groups]
    rates = geometric_rates(lr_min, lr_max, steps)
    raw: list[float] = []
    tried: list[float] = []
    try:
        batches = _cycled(loader)
        for rate in rates:
            batch = next(batches, None)
            if batch is None:
                break
            for group, share in zip(optimiser.param_groups, shares):
                group["lr"] = rate * share
            x, y = batch[0].to(device), batch[1].to(device)
            optimiser.zero_grad(set_to_none=True)
            with autocast(device, precision):
                output = model(x)
            loss = loss_fn(_logits(output).float(), y)
            loss.backward()
            optimiser.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            raw.append(value)
            tried.append(rate)
            curve = smoothed(raw)
            if len(curve) > 5 and curve[-1] > DIVERGED * min(curve):
                break
    finally:
        model.load_state_dict(saved_weights)
        torch.set_rng_state(saved_rng)
        optimiser.zero_grad(set_to_none=True)
    curve = smoothed(raw)
    suggested = suggest_lr(tried, curve) if curve else None
    return RangeTest(lrs=tried, losses=curve, suggested=suggested, seconds=time.perf_counter() - started)


def range_test_from_head(head_dir: str, seed: int = 0) -> dict:
    """Fuse the head and run the range test with the default recipe's loader, modes and precision."""
    head = load_affine(head_dir)
    backbone = rebuild_backbone(head.feature_identity)
    splits = file_splits(BuildConfig(head_dir=head_dir, out_dir=""), head)
    fuse_head(backbone, head)
    cfg = FinetuneConfig(epochs=1, seed=seed, progress=False)
    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    model, slot = backbone.model, backbone.spec.classifier_slot
    model.requires_grad_(True)
    frozen = freeze_lowest(model, slot, cfg.freeze_stages)
    crop_scale = crop_scale_for(source_short_side(splits.root, splits.train), backbone.preprocessing.resize_size)
    train_loader, _ = _loaders(backbone, splits.root, splits.train, None, cfg, crop_scale,
                               torch.Generator().manual_seed(seed))
    _set_phase(model, slot, False, frozen, cfg.train_bn, cfg.dropout)
    torch.manual_seed(seed)
    test = lr_range_test(model, train_loader,
                         lambda rate: make_optimizer(parameter_groups(model, slot, rate, cfg.head_lr_mult), cfg),
                         nn.CrossEntropyLoss(), device, precision)
    return dict(test.to_dict(), precision=precision, train_images=len(splits.train), batch_size=cfg.batch_size)


@click.command()
@click.option("--head", "head_dir", required=True)
@click.option("--seed", default=0, type=int)
def main(head_dir: str, seed: int) -> None:
    """Print the range test of one head as JSON."""
    print(json.dumps(range_test_from_head(head_dir, seed)))


if __name__ == "__main__":
    main()
