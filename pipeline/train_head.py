"""Stage two: train a head on a feature file, evaluate it on every other split, save HEAD_DIR."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import joblib
import numpy as np
from sklearn.base import BaseEstimator

from features.data import find_train_split
from features.exclude import ExcludeList, read_exclude
from features.hashing import sha256_file
from features.identity import FeatureIdentity
from features.store import FeatureFile, SplitData
from pipeline.affine import AffineHead, HeadMeta, save_affine, write_head_meta
from pipeline.artefacts import staged_folder
from pipeline.file_splits import unlabeled_splits
from pipeline.filenames import CONFUSION_PNG, HEAD_ARRAYS, HEAD_ESTIMATOR, HEAD_META, HEAD_REPORT
from pipeline.head_maths import HeadTrainingError, check_classes, check_finite
from pipeline.heads import affine_of, fit_head, make_estimator, sweep_jobs
from pipeline.metrics import classification_report, format_report, save_confusion_png
from pipeline.streaming import (MINIBATCH, STREAMING_C_GRID, PeakMemory, RowStream, chunk_rows_for, default_max_memory,
                                fit_streaming, human_bytes, load_torch, matrix_bytes)


@dataclass
class HeadConfig:
    """Options of ``run_head.py`` (fit)."""

    features_path: str
    out_dir: str
    clf: str = "logreg"
    C: str | float = "auto"
    cv: int = 5
    class_weight: str | None = None
    init: str = "none"
    epochs: int = 100
    seed: int = 0
    n_jobs: int | None = None  # None: see pipeline.heads.sweep_jobs
    kernel: str = "linear"
    max_memory: int | None = None  # bytes; None: half of physical memory
    passes: int = 10  # streaming mode only
    exclude: str | None = None  # file of dataset-relative paths whose training rows are left out


@dataclass
class HeadResult:
    """What :func:`train_head` produced: the report dict and notes for the user."""

    report: dict
    notes: list[str] = field(default_factory=list)


def imagenet_init(feature_file: FeatureFile, classes: list[str]) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, int]]:
    """Initial rows ``(W0, b0)`` for ``--init imagenet``: the backbone's own ImageNet rows for
    matching class names (zeros elsewhere), and the matches.

    Raises
    ------
    HeadTrainingError
        No class name matches an ImageNet category.
    """
    from pipeline.imagenet import imagenet_rows, match_imagenet
    from pipeline.rebuild import rebuild_backbone

    matched = match_imagenet(classes)
    if not matched:
        raise HeadTrainingError(f"--init imagenet: no class name matches an ImageNet category ({', '.join(classes)})")
    W1000, b1000 = imagenet_rows(rebuild_backbone(feature_file.identity()))
    W0 = np.zeros((len(classes), W1000.shape[1]))
    b0 = np.zeros(len(classes))
    for i, name in enumerate(classes):
        if name in matched:
            W0[i], b0[i] = W1000[matched[name]], b1000[matched[name]]
    return (W0, b0), matched


@dataclass
class _Fitted:
    """What either fitting mode hands to the report."""

    C: float
    selection: str
    cv_score: float | None
    cv_folds: int | None
    curve: list[tuple[float, float]] | None
    fit_seconds: float
    train_rows: int
    train_images: int
    has_views: bool
    splits: dict
    affine: tuple[np.ndarray, np.ndarray] | None
    estimator: BaseEstimator | None = None
    chunk_rows: int | None = None
    exclude: dict | None = None


@dataclass
class _Plan:
    """Which splits play which part, and how the training rows are read."""

    train_split: str
    evaluated: list[str]  # labeled splits other than the training split
    unlabeled: list[str]
    streaming: bool
    max_memory: int


def _check_options(cfg: HeadConfig) -> None:
    if cfg.init == "imagenet" and cfg.clf != "linear":
        raise ValueError("--init imagenet applies to --clf linear only")
    if cfg.clf == "svm" and cfg.kernel != "linear" and cfg.init != "none":
        raise ValueError("--init is not available for kernel SVMs")


def _plan(cfg: HeadConfig, ff: FeatureFile) -> _Plan:
    """Pick the training split, the splits to evaluate, and in-memory or streaming fitting."""
    unlabeled = unlabeled_splits(ff)
    train_split = find_train_split([s for s in ff.splits if s not in unlabeled])
    if train_split is None:
        raise HeadTrainingError(f"{cfg.features_path}: no labeled training split among {', '.join(ff.splits)}")
    max_memory = cfg.max_memory if cfg.max_memory is not None else default_max_memory()
    needed = matrix_bytes(ff.n_rows(train_split), ff.feature_dim)
    streaming = needed > max_memory
    if streaming and cfg.exclude:
        raise ValueError("--exclude needs the training rows in memory; raise --max-memory, or re-extract "
                         "with run_extract.py --exclude")
    if streaming and cfg.clf == "svm" and cfg.kernel != "linear":
        raise ValueError(f"a {cfg.kernel} kernel SVM needs the training rows in memory "
                         f"({human_bytes(needed)} > --max-memory); raise --max-memory or use --kernel linear")
    evaluated = [s for s in ff.splits if s != train_split and s not in unlabeled]
    return _Plan(train_split, evaluated, unlabeled, streaming, max_memory)


def train_head(cfg: HeadConfig) -> HeadResult:
    """Fit the head described by ``cfg`` and write ``cfg.out_dir``.

    The training rows are loaded into memory when they fit in ``cfg.max_memory``;
    otherwise they are streamed from the file in chunks (:mod:`pipeline.streaming`).
    The report's ``mode`` says which ran.

    Parameters
    ----------
    cfg : HeadConfig

    Returns
    -------
    HeadResult

    Raises
    ------
    features.store.FeatureFileError
        Incomplete or unknown feature file.
    HeadTrainingError
        Unusable training data (one class, a class without rows, NaN/inf values, ...).
    ValueError
        Inconsistent options (``--init imagenet`` with another classifier, ...).
    """
    _check_options(cfg)
    notes: list[str] = []
    started = time.perf_counter()
    peak = PeakMemory()
    with FeatureFile(cfg.features_path) as ff:
        plan = _plan(cfg, ff)
        for name in plan.unlabeled:
            notes.append(f"{name}: {ff.n_rows(name)} unlabeled rows, no metrics; predict them with "
                         f"run_head.py predict --split {name} --format submission")
        init, matched = None, {}
        if cfg.init == "imagenet":
            init, matched = imagenet_init(ff, ff.classes)
            notes.append(f"--init imagenet matched {len(matched)}/{len(ff.classes)} classes: "
                         + ", ".join(f"{k} -> ImageNet {v}" for k, v in matched.items()))
        if plan.streaming or cfg.clf == "linear":
            load_torch()  # before the measured stretch: importing torch is not the fit's memory
        peak.start()
        if plan.streaming:
            fitted = _fit_streaming(cfg, ff, plan, init)
        else:
            fitted = _fit_in_memory(cfg, ff, plan, init, notes)
        memory_growth = peak.growth()
        identity, data_root = ff.identity(), ff.data_root
    if not fitted.splits:
        notes.append(f"no labeled split besides {plan.train_split!r}: only the "
                     f"{'held-out' if plan.streaming else 'cross-validated'} estimate is reported")
    report = _report(cfg, plan, fitted, identity, memory_growth, time.perf_counter() - started, matched)
    notes += _write_head_folder(cfg, plan, fitted, identity, data_root, report)
    return HeadResult(report, notes)


def _report(cfg: HeadConfig, plan: _Plan, fitted: _Fitted, identity: FeatureIdentity, memory_growth: int | None,
            total_seconds: float, matched: dict[str, int]) -> dict:
    """The contents of ``report.json``."""
    fusable = not (cfg.clf == "svm" and cfg.kernel != "linear")
    return {
        "clf": cfg.clf if fusable else f"svm-{cfg.kernel}",
        "mode": "streaming" if plan.streaming else "in-memory",
        "max_memory_bytes": plan.max_memory,
        "peak_memory_growth_bytes": memory_growth,
        "chunk_rows": fitted.chunk_rows,
        "passes": cfg.passes if plan.streaming else None,
        "C": fitted.C,
        "C_selection": fitted.selection,
        "cv_score": fitted.cv_score,
        "cv_folds": fitted.cv_folds,
        "cv_curve": [{"C": c, "accuracy": s} for c, s in fitted.curve] if fitted.curve else None,
        "fit_seconds": round(fitted.fit_seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "train_split": plan.train_split,
        "train_rows": fitted.train_rows,
        "train_images": fitted.train_images,
        "augmented_views_used": fitted.has_views,
        "class_weight": cfg.class_weight,
        "init": cfg.init,
        "imagenet_matches": matched or None,
        "epochs": cfg.epochs if cfg.clf == "linear" and not plan.streaming else None,
        "seed": cfg.seed,
        "fusable": fusable,
        "features": os.path.abspath(cfg.features_path),
        "feature_identity": identity.to_dict(),
        "splits": fitted.splits,
        "exclude": fitted.exclude,
        "unlabeled_splits": plan.unlabeled,
    }


def _write_head_folder(cfg: HeadConfig, plan: _Plan, fitted: _Fitted, identity: FeatureIdentity, data_root: str,
                       report: dict) -> list[str]:
    """Write HEAD_DIR whole (staged, then renamed); returns notes naming the confusion matrices."""
    notes = []
    with staged_folder(cfg.out_dir) as work:
        estimator_sha256 = None
        if fitted.estimator is not None:
            joblib.dump(fitted.estimator, os.path.join(work, HEAD_ESTIMATOR))
            estimator_sha256 = sha256_file(os.path.join(work, HEAD_ESTIMATOR))
        extra = {"data_root": data_root, "C": fitted.C, "train_split": plan.train_split,
                 "features": os.path.abspath(cfg.features_path)}
        if fitted.exclude is not None:
            extra["exclude"] = fitted.exclude
        if report["fusable"]:
            save_affine(AffineHead(*fitted.affine, list(identity.classes), identity, cfg.clf, extra), work, estimator_sha256)
        else:
            write_head_meta(work, HeadMeta(report["clf"], list(identity.classes), identity, False, None,
                                           estimator_sha256, extra))
        with open(os.path.join(work, HEAD_REPORT), "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        for name, split_report in fitted.splits.items():
            png = save_confusion_png(split_report, list(identity.classes),
                                     os.path.join(work, CONFUSION_PNG.format(split=name)))
            if png:
                notes.append(f"confusion matrix: {os.path.join(cfg.out_dir, os.path.basename(png))}")
    return notes


def _training_rows(cfg: HeadConfig, ff: FeatureFile, split: str, notes: list[str]) -> tuple[SplitData, dict | None]:
    """The training split in memory, less the ``--exclude`` list's images; refuses unusable rows."""
    train = ff.read_split(split)
    excluded = None
    if cfg.exclude:
        train, excluded = _without(train, read_exclude(cfg.exclude))
        notes.append(f"--exclude: left out {excluded['excluded']} training images ({excluded['excluded_rows']} rows) "
                     f"of the {excluded['listed']} paths listed in {cfg.exclude}")
    check_finite(train.features, f"split {split!r}")
    if (train.labels < 0).any():
        raise HeadTrainingError(f"split {split!r} has {int((train.labels < 0).sum())} unlabeled rows (label -1)")
    check_classes(np.bincount(train.labels, minlength=len(ff.classes)), ff.classes, split)
    return train, excluded


def _fit_in_memory(cfg: HeadConfig, ff: FeatureFile, plan: _Plan, init, notes: list[str]) -> _Fitted:
    """Load the training split, choose C by K-fold CV, fit, and evaluate the other labeled splits."""
    train, excluded = _training_rows(cfg, ff, plan.train_split, notes)
    estimator = make_estimator(cfg.clf, 1.0 if cfg.C == "auto" else float(cfg.C), cfg.class_weight, cfg.seed,
                               cfg.kernel, cfg.epochs, init)
    clean = train.view == 0
    # every class has training rows (checked above)
    cv, fit_seconds = fit_head(estimator, train.features, train.labels, train.image_index, clean, cfg.C == "auto",
                               cfg.cv, cfg.seed, sweep_jobs(cfg.n_jobs, *train.features.shape))
    if cv is not None:
        notes += cv.warnings
    splits = {}
    for name in plan.evaluated:
        data = ff.read_split(name).clean()
        check_finite(data.features, f"split {name!r}")
        splits[name] = classification_report(data.labels, estimator.predict(data.features), ff.classes)
    linear = not (cfg.clf == "svm" and cfg.kernel != "linear")
    return _Fitted(C=cv.C if cv else float(cfg.C),
                   selection="cross-validation on the training split" if cv else "fixed",
                   cv_score=cv.cv_score if cv else None, cv_folds=cv.folds if cv else None,
                   curve=cv.grid if cv else None, fit_seconds=fit_seconds, train_rows=int(len(train.labels)),
                   train_images=int(clean.sum()), has_views=bool((train.view > 0).any()), splits=splits,
                   affine=affine_of(estimator, len(ff.classes)) if linear else None, estimator=estimator,
                   exclude=excluded)


def _without(data: SplitData, exclude: ExcludeList) -> tuple[SplitData, dict]:
    """The rows of ``data`` whose path is not in ``exclude`` (all views of an excluded image go)."""
    drop = np.array([os.path.normpath(p) in exclude.paths for p in data.paths], dtype=bool)
    kept = SplitData(data.features[~drop], data.labels[~drop], data.paths[~drop], data.image_index[~drop],
                     data.view[~drop], data.skipped)
    record = dict(exclude.record(int(len(np.unique(data.image_index[drop])))), excluded_rows=int(drop.sum()))
    return kept, record


def _fit_streaming(cfg: HeadConfig, ff: FeatureFile, plan: _Plan, init) -> _Fitted:
    """Fit from chunks of the training split and evaluate the other labeled splits chunk by chunk."""
    ff.verify()  # chunked reads skip checksums: check the whole file once, in bounded memory
    chunk_rows = chunk_rows_for(plan.max_memory, ff.feature_dim)
    fit_started = time.perf_counter()
    fit = fit_streaming(RowStream(ff, plan.train_split, chunk_rows), cfg.clf, cfg.C, ff.classes, cfg.passes, cfg.seed,
                        cfg.class_weight, init)
    fit_seconds = time.perf_counter() - fit_started
    splits = {name: _evaluate_streamed(ff, name, chunk_rows, fit.W, fit.b) for name in plan.evaluated}
    held_out = f"held-out fifth of the training images (streaming, {len(STREAMING_C_GRID)} values)"
    return _Fitted(C=fit.C, selection=held_out if fit.curve else "fixed", cv_score=fit.holdout_score, cv_folds=None,
                   curve=fit.curve, fit_seconds=fit_seconds, train_rows=fit.stats.rows, train_images=fit.stats.images,
                   has_views=fit.stats.rows > fit.stats.images, splits=splits, affine=(fit.W, fit.b),
                   chunk_rows=chunk_rows)


def _evaluate_streamed(ff: FeatureFile, split: str, chunk_rows: int, W: np.ndarray, b: np.ndarray) -> dict:
    """The classification report of ``(W, b)`` on a split's centre crops, read chunk by chunk."""
    labels, predicted = [], []
    for chunk in RowStream(ff, split, chunk_rows).chunks():
        for start in range(0, len(chunk.y), MINIBATCH):  # small float64 logits, not a chunk-sized copy
            block = slice(start, start + MINIBATCH)
            clean = chunk.view[block] == 0
            X = chunk.X[block][clean]
            check_finite(X, f"split {split!r}")
            labels.append(chunk.y[block][clean])
            predicted.append((X.astype(np.float64) @ W.T + b).argmax(1))
        del chunk
    return classification_report(np.concatenate(labels), np.concatenate(predicted), ff.classes)


def summary_lines(result: HeadResult, out_dir: str) -> list[str]:
    """The report as text for the terminal."""
    r = result.report
    if r["cv_score"] is None:
        score = ""
    elif r["cv_folds"]:
        score = f", CV accuracy {r['cv_score']:.4f} over {r['cv_folds']} folds"
    else:
        score = f", held-out accuracy {r['cv_score']:.4f}"
    if r["mode"] == "streaming":
        mode = (f"streaming: {r['train_rows']} rows exceed --max-memory {human_bytes(r['max_memory_bytes'])}; "
                f"{r['passes']} passes in chunks of {r['chunk_rows']} rows")
    else:
        mode = "in memory"
    lines = [f"{r['clf']} head, C={r['C']:.3g} ({r['C_selection']}{score}), fit {r['fit_seconds']:.2f} s "
             f"on {r['train_rows']} rows ({r['train_images']} images), {mode}"]
    lines += result.notes
    for name, split_report in r["splits"].items():
        lines += format_report(name, split_report)
    lines.append(f"saved {out_dir}/ ({HEAD_REPORT}, {HEAD_META}{', ' + HEAD_ARRAYS if r['fusable'] else ''}, "
                 f"{HEAD_ESTIMATOR})")
    return lines
