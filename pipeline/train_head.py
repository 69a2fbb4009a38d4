"""Stage two: train a head on a feature file, evaluate it on every other split, save HEAD_DIR."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import joblib
import numpy as np
import torch

from features.data import find_train_split
from features.exclude import ExcludeList, read_exclude
from features.store import FeatureFile, SplitData
from pipeline.artefacts import staged_folder
from pipeline.file_splits import unlabeled_splits
from pipeline.affine import AffineHead, save_affine, write_head_meta
from pipeline.heads import HeadTrainingError, TorchLinearHead, affine_of, choose_C, make_estimator, sweep_jobs
from pipeline.metrics import classification_report, format_report, save_confusion_png
from pipeline.streaming import (MINIBATCH, STREAMING_C_GRID, PeakMemory, RowStream, chunk_rows_for, default_max_memory,
                                fit_streaming, human_bytes, matrix_bytes)


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


def check_finite(features: np.ndarray, what: str) -> None:
    """Refuse NaN/inf features, with their count."""
    bad = int((~np.isfinite(features)).sum())
    if bad:
        rows = int((~np.isfinite(features)).any(axis=1).sum())
        raise HeadTrainingError(f"{what} has {bad} NaN/inf values in {rows} rows; re-extract or drop them")


def _imagenet_init(feature_file: FeatureFile, classes: list[str]) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, int]]:
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
    estimator: object | None = None
    chunk_rows: int | None = None
    exclude: dict | None = None


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
    if cfg.init == "imagenet" and cfg.clf != "linear":
        raise ValueError("--init imagenet applies to --clf linear only")
    if cfg.clf == "svm" and cfg.kernel != "linear" and cfg.init != "none":
        raise ValueError("--init is not available for kernel SVMs")
    max_memory = cfg.max_memory if cfg.max_memory is not None else default_max_memory()
    notes: list[str] = []
    started = time.perf_counter()
    peak = PeakMemory()
    with FeatureFile(cfg.features_path) as ff:
        classes = ff.classes
        unlabeled = unlabeled_splits(ff)
        train_split = find_train_split([s for s in ff.splits if s not in unlabeled])
        if train_split is None:
            raise HeadTrainingError(f"{cfg.features_path}: no labeled training split among {', '.join(ff.splits)}")
        evaluated = [s for s in ff.splits if s != train_split and s not in unlabeled]
        for name in unlabeled:
            notes.append(f"{name}: {ff.n_rows(name)} unlabeled rows, no metrics; predict them with "
                         f"run_head.py predict --split {name} --format submission")
        streaming = matrix_bytes(ff.n_rows(train_split), ff.feature_dim) > max_memory
        exclude = read_exclude(cfg.exclude) if cfg.exclude else None
        if streaming and exclude is not None:
            raise ValueError("--exclude needs the training rows in memory; raise --max-memory, or re-extract "
                             "with run_extract.py --exclude")
        if streaming and cfg.clf == "svm" and cfg.kernel != "linear":
            raise ValueError(f"a {cfg.kernel} kernel SVM needs the training rows in memory "
                             f"({human_bytes(matrix_bytes(ff.n_rows(train_split), ff.feature_dim))} > --max-memory); "
                             "raise --max-memory or use --kernel linear")
        init, matched = None, {}
        if cfg.init == "imagenet":
            init, matched = _imagenet_init(ff, classes)
            notes.append(f"--init imagenet matched {len(matched)}/{len(classes)} classes: "
                         + ", ".join(f"{k} -> ImageNet {v}" for k, v in matched.items()))
        identity = ff.identity()
        data_root = ff.data_root
        peak.start()
        if streaming:
            fitted = _fit_streaming(cfg, ff, train_split, evaluated, classes, init, max_memory)
        else:
            fitted = _fit_in_memory(cfg, ff, train_split, evaluated, classes, init, notes, exclude)
        memory_growth = peak.growth()
    total_seconds = time.perf_counter() - started
    if not fitted.splits:
        notes.append(f"no labeled split besides {train_split!r}: only the "
                     f"{'held-out' if streaming else 'cross-validated'} estimate is reported")

    fusable = not (cfg.clf == "svm" and cfg.kernel != "linear")
    report = {
        "clf": cfg.clf if fusable else f"svm-{cfg.kernel}",
        "mode": "streaming" if streaming else "in-memory",
        "max_memory_bytes": max_memory,
        "peak_memory_growth_bytes": memory_growth,
        "chunk_rows": fitted.chunk_rows,
        "passes": cfg.passes if streaming else None,
        "C": fitted.C,
        "C_selection": fitted.selection,
        "cv_score": fitted.cv_score,
        "cv_folds": fitted.cv_folds,
        "cv_curve": [{"C": c, "accuracy": s} for c, s in fitted.curve] if fitted.curve else None,
        "fit_seconds": round(fitted.fit_seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "train_split": train_split,
        "train_rows": fitted.train_rows,
        "train_images": fitted.train_images,
        "augmented_views_used": fitted.has_views,
        "class_weight": cfg.class_weight,
        "init": cfg.init,
        "imagenet_matches": matched or None,
        "epochs": cfg.epochs if cfg.clf == "linear" and not streaming else None,
        "seed": cfg.seed,
        "fusable": fusable,
        "features": os.path.abspath(cfg.features_path),
        "feature_identity": {k: v for k, v in identity.items() if k != "weights_source"},
        "splits": fitted.splits,
        "exclude": fitted.exclude,
        "unlabeled_splits": unlabeled,
    }
    with staged_folder(cfg.out_dir) as work:
        if fitted.estimator is not None:
            _save_estimator(fitted.estimator, work)
        extra = {"data_root": data_root, "C": fitted.C, "train_split": train_split,
                 "features": os.path.abspath(cfg.features_path)}
        if fitted.exclude is not None:
            extra["exclude"] = fitted.exclude
        if fusable:
            save_affine(AffineHead(*fitted.affine, classes, identity, cfg.clf, extra), work)
        else:
            write_head_meta(work, report["clf"], classes, identity, extra, arrays_sha256=None)
        with open(os.path.join(work, "report.json"), "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        for name, split_report in fitted.splits.items():
            png = save_confusion_png(split_report, classes, os.path.join(work, f"confusion_{name}.png"))
            if png:
                notes.append(f"confusion matrix: {os.path.join(cfg.out_dir, os.path.basename(png))}")
    return HeadResult(report, notes)


def _fit_in_memory(cfg: HeadConfig, ff: FeatureFile, train_split: str, evaluated: list[str], classes: list[str], init,
                   notes: list[str], exclude: ExcludeList | None = None) -> _Fitted:
    """Load the training split (less the ``exclude`` list's images), choose C by K-fold CV, fit, and evaluate the
    ``evaluated`` (labeled) splits."""
    train = ff.read_split(train_split)
    excluded = None
    if exclude is not None:
        train, excluded = _without(train, exclude)
        notes.append(f"--exclude: left out {excluded['excluded']} training images ({excluded['excluded_rows']} rows) "
                     f"of the {excluded['listed']} paths listed in {cfg.exclude}")
    check_finite(train.features, f"split {train_split!r}")
    if (train.labels < 0).any():
        raise HeadTrainingError(f"split {train_split!r} has {int((train.labels < 0).sum())} unlabeled rows (label -1)")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise HeadTrainingError(f"split {train_split!r} has a single class ({classes[present[0]] if len(present) else 'none'}); a classifier needs two or more")
    absent = [classes[i] for i in range(len(classes)) if i not in set(present)]
    if absent:
        raise HeadTrainingError(f"classes without training rows: {', '.join(absent)}")

    def estimator_for(C: float):
        return make_estimator(cfg.clf, C, cfg.class_weight, cfg.seed, cfg.kernel, cfg.epochs, init)

    clean = train.view == 0
    cv = None
    if cfg.C == "auto":
        cv = choose_C(estimator_for, train.features, train.labels, train.image_index, clean, cfg.cv, cfg.seed,
                      sweep_jobs(cfg.n_jobs, *train.features.shape))
        notes += cv.warnings
    C = cv.C if cv else float(cfg.C)
    estimator = estimator_for(C)
    fit_started = time.perf_counter()
    estimator.fit(train.features, train.labels)  # every class has training rows (checked above)
    fit_seconds = time.perf_counter() - fit_started
    splits = {}
    for name in evaluated:
        data = ff.read_split(name).clean()
        check_finite(data.features, f"split {name!r}")
        splits[name] = classification_report(data.labels, estimator.predict(data.features), classes)
    linear = not (cfg.clf == "svm" and cfg.kernel != "linear")
    return _Fitted(C, "cross-validation on the training split" if cv else "fixed",
                   cv.cv_score if cv else None, cv.folds if cv else None, cv.grid if cv else None, fit_seconds,
                   int(len(train.labels)), int(clean.sum()), bool((train.view > 0).any()), splits,
                   affine_of(estimator, len(classes)) if linear else None, estimator, exclude=excluded)


def _without(data: SplitData, exclude: ExcludeList) -> tuple[SplitData, dict]:
    """The rows of ``data`` whose path is not in ``exclude`` (all views of an excluded image go)."""
    drop = np.array([os.path.normpath(p) in exclude.paths for p in data.paths], dtype=bool)
    kept = SplitData(data.features[~drop], data.labels[~drop], data.paths[~drop], data.image_index[~drop],
                     data.view[~drop], data.skipped)
    record = dict(exclude.record(int(len(np.unique(data.image_index[drop])))), excluded_rows=int(drop.sum()))
    return kept, record


def _fit_streaming(cfg: HeadConfig, ff: FeatureFile, train_split: str, evaluated: list[str], classes: list[str], init,
                   max_memory: int) -> _Fitted:
    """Fit from chunks of the training split and evaluate the other splits chunk by chunk."""
    ff.verify()  # chunked reads skip checksums: check the whole file once, in bounded memory
    chunk_rows = chunk_rows_for(max_memory, ff.feature_dim)
    fit_started = time.perf_counter()
    fit = fit_streaming(RowStream(ff, train_split, chunk_rows), cfg.clf, cfg.C, classes, cfg.passes, cfg.seed,
                        cfg.class_weight, init)
    fit_seconds = time.perf_counter() - fit_started
    head = AffineHead(fit.W, fit.b, classes, {}, cfg.clf, {})
    splits = {}
    for name in evaluated:
        labels, predicted = [], []
        for chunk in RowStream(ff, name, chunk_rows).chunks():
            for start in range(0, len(chunk.y), MINIBATCH):  # small float64 logits, not a chunk-sized copy
                block = slice(start, start + MINIBATCH)
                clean = chunk.view[block] == 0
                X = chunk.X[block][clean]
                check_finite(X, f"split {name!r}")
                labels.append(chunk.y[block][clean])
                predicted.append(head.logits(X).argmax(1))
            del chunk
        splits[name] = classification_report(np.concatenate(labels), np.concatenate(predicted), classes)
    held_out = f"held-out fifth of the training images (streaming, {len(STREAMING_C_GRID)} values)"
    return _Fitted(fit.C, held_out if fit.curve else "fixed", fit.holdout_score, None, fit.curve, fit_seconds,
                   fit.stats.rows, fit.stats.images, fit.stats.rows > fit.stats.images, splits, (fit.W, fit.b),
                   chunk_rows=chunk_rows)


def _save_estimator(estimator, out_dir: str) -> None:
    if isinstance(estimator, TorchLinearHead):
        torch.save({"linear": estimator.linear_.state_dict(), "scaler_mean": torch.as_tensor(estimator.scaler_.mean_),
                    "scaler_scale": torch.as_tensor(estimator.scaler_.scale_)}, os.path.join(out_dir, "linear.pt"))
    else:
        joblib.dump(estimator, os.path.join(out_dir, "estimator.joblib"))


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
    lines.append(f"saved {out_dir}/ (report.json, head.json{', head.npz' if r['fusable'] else ''})")
    return lines
