"""Refit the head on features at the exported model's input size.

A head fitted on 224-px features and fed the features of 288-px inputs sees features a
little off the ones it was fitted on: the apparent object size changed. Touvron et al.
("Fixing the train-test resolution discrepancy", 2019) fine-tune the classifier at the
test resolution for that reason. Here the head is refitted the way ``run_head.py`` fitted
it (same classifier, same C rule), on the training images' features at the new side
through the kept network; :mod:`pipeline.input_size` scores it on val beside the head as
fused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from features.backbones import Backbone
from features.folding import fold_batchnorm
from features.hooks import capture_features
from pipeline.affine import AffineHead
from pipeline.filenames import HEAD_REPORT
from pipeline.finetune import eval_loader
from pipeline.head_maths import HeadTrainingError, check_classes, check_finite
from pipeline.heads import affine_of, fit_head, make_estimator, sweep_jobs


@dataclass
class HeadRecipe:
    """How ``run_head.py`` fitted a head, as its report records it."""

    clf: str
    C: float
    cross_validated: bool
    folds: int
    class_weight: str | None
    seed: int
    epochs: int


@dataclass
class Refit:
    """A head refitted at another input side."""

    head: AffineHead  # ``W`` and ``b`` for raw features at that side
    C: float
    train_images: int
    notes: list[str] = field(default_factory=list)  # the C sweep's warnings


def head_recipe(report: dict, clf: str) -> tuple[HeadRecipe | None, str]:
    """The head's fitting recipe, or ``None`` and why it cannot be repeated on other features.

    Parameters
    ----------
    report : dict
        The head folder's ``report.json`` (:func:`pipeline.affine.read_head_report`; ``{}``
        when it has none).
    clf : str
        The head's classifier as its metadata names it (``logreg``, ``svm``, ``linear``).

    Returns
    -------
    recipe : HeadRecipe or None
    why_not : str
        Empty when a recipe is returned.
    """
    if not report:
        return None, f"{HEAD_REPORT} is missing from the head folder, so how it was fitted is unknown"
    try:
        mode, C = report.get("mode"), float(report["C"])
    except (ValueError, TypeError, KeyError):
        return None, f"{HEAD_REPORT} in the head folder cannot be read as run_head.py writes it"
    if mode == "streaming":
        return None, "the head was fitted by streaming; refit it with run_head.py on features extracted at this size"
    if mode != "in-memory":
        return None, f"{HEAD_REPORT} does not say how the head was fitted"
    if report.get("init", "none") != "none":
        return None, f"the head was initialised from --init {report['init']}, which is fixed at the extraction size"
    if report.get("exclude"):
        return None, "the head left out rows listed by --exclude"
    if report.get("augmented_views_used"):
        return None, "the head was fitted on augmented views, and the refit sees centre crops only"
    cross_validated = str(report.get("C_selection", "")).startswith("cross-validation")
    return HeadRecipe(clf=clf, C=C, cross_validated=cross_validated, folds=int(report.get("cv_folds") or 5),
                      class_weight=report.get("class_weight"), seed=int(report.get("seed", 0)),
                      epochs=int(report.get("epochs") or 100)), ""


def inference_model(backbone: Backbone, device: torch.device) -> nn.Module:
    """A copy of ``backbone.model`` as it is exported: BatchNorm folded, eval mode, channels-last, on ``device``.

    The feature module and the classifier slot stay submodules, so the feature hook
    works on it. ``backbone.model`` itself is not changed (it must be in eval mode).
    """
    spec = backbone.spec
    model, folded = fold_batchnorm(backbone.model, (spec.feature_module, spec.classifier_slot))
    if not folded:  # the same module came back: convert a copy, never the caller's model
        model = copy.deepcopy(model)
    return model.to(device).to(memory_format=torch.channels_last).eval()


def features_and_logits(model: nn.Module, backbone: Backbone, root: str, items: list[tuple[str, int]],
                        device: torch.device, workers: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled features, the model's logits and the labels of the readable images of ``items``.

    Parameters
    ----------
    model : nn.Module
        :func:`inference_model` of ``backbone``.
    backbone : Backbone
        Gives the feature module and the preprocessing (centre crops at its side).
    root : str
        Image root the paths of ``items`` are relative to.
    items : list of (str, int)
        ``(path, label)`` pairs.
    device : torch.device
    workers : int
        DataLoader decode workers.

    Returns
    -------
    features : ndarray, shape (n, dim)
    logits : ndarray, shape (n, classes)
    labels : ndarray, shape (n,)
    """
    features, logits, labels = [], [], []
    with torch.inference_mode(), capture_features(model, backbone.spec) as capture:
        for batch in eval_loader(root, items, backbone.preprocessing, workers, batch_size=32):
            if batch is None:
                continue
            x, y = batch
            logits.append(model(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu())
            features.append(capture.pop().float().cpu())
            labels.append(y)
    if not labels:
        return np.zeros((0, backbone.feature_dim)), np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    return torch.cat(features).numpy(), torch.cat(logits).numpy(), torch.cat(labels).numpy()


def refit_head(model: nn.Module, backbone: Backbone, head: AffineHead, recipe: HeadRecipe, root: str,
               train: list[tuple[str, int]], device: torch.device, workers: int = 0) -> Refit:
    """Refit the head on the training images' features at ``backbone``'s side.

    Parameters
    ----------
    model : nn.Module
        :func:`inference_model` of ``backbone``: the fused (perhaps fine-tuned) network at
        the side to refit at.
    backbone : Backbone
    head : AffineHead
        The head that was fused (its classes and identity carry over).
    recipe : HeadRecipe
        How the head was fitted (:func:`head_recipe`).
    root : str
        Image root of ``train``.
    train : list of (str, int)
        The feature file's training images.
    device : torch.device
    workers : int
        DataLoader decode workers.

    Returns
    -------
    Refit

    Raises
    ------
    pipeline.head_maths.HeadTrainingError
        The readable training images cannot be fitted the way the recipe says (a class
        without a readable image, too few images for the folds, non-finite features).
    """
    X, _, y = features_and_logits(model, backbone, root, train, device, workers)
    size = backbone.preprocessing.crop_size
    estimator = make_estimator(recipe.clf, recipe.C, recipe.class_weight, recipe.seed, epochs=recipe.epochs)
    try:
        check_finite(X, f"the training features at {size} px")
        check_classes(np.bincount(y, minlength=len(head.classes)), head.classes, "train")
        cv, _ = fit_head(estimator, X, y, np.arange(len(y)), np.ones(len(y), dtype=bool), recipe.cross_validated,
                         recipe.folds, recipe.seed, sweep_jobs(None, *X.shape))
    except HeadTrainingError as exc:
        raise HeadTrainingError(f"cannot refit the head at {size} px: {exc}") from None
    W, b = affine_of(estimator, len(head.classes))
    C = cv.C if cv is not None else recipe.C
    return Refit(AffineHead(W, b, head.classes, head.feature_identity, head.clf, dict(head.extra, C=C)), C, len(y),
                 cv.warnings if cv is not None else [])
