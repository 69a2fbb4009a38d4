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
from features.store import FeatureFile
from pipeline.affine import AffineHead, save_affine, write_head_meta
from pipeline.heads import HeadTrainingError, TorchLinearHead, affine_of, choose_C, make_estimator
from pipeline.metrics import classification_report, format_report, save_confusion_png


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
    n_jobs: int = -1
    kernel: str = "linear"


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


def train_head(cfg: HeadConfig) -> HeadResult:
    """Fit the head described by ``cfg`` and write ``cfg.out_dir``.

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
    notes: list[str] = []
    with FeatureFile(cfg.features_path) as ff:
        classes = ff.classes
        train_split = find_train_split(ff.splits)
        if train_split is None:
            raise HeadTrainingError(f"{cfg.features_path}: no training split among {', '.join(ff.splits)}")
        train = ff.read_split(train_split)
        check_finite(train.features, f"split {train_split!r}")
        present = np.unique(train.labels)
        if len(present) < 2:
            raise HeadTrainingError(f"split {train_split!r} has a single class ({classes[present[0]] if len(present) else 'none'}); a classifier needs two or more")
        absent = [classes[i] for i in range(len(classes)) if i not in set(present)]
        if absent:
            raise HeadTrainingError(f"classes without training rows: {', '.join(absent)}")
        init, matched = None, {}
        if cfg.init == "imagenet":
            init, matched = _imagenet_init(ff, classes)
            notes.append(f"--init imagenet matched {len(matched)}/{len(classes)} classes: "
                         + ", ".join(f"{k} -> ImageNet {v}" for k, v in matched.items()))
        eval_splits = {name: ff.read_split(name).clean() for name in ff.splits if name != train_split}
        identity = ff.identity()
        data_root = ff.data_root
        has_views = bool((train.view > 0).any())

    def estimator_for(C: float):
        return make_estimator(cfg.clf, C, cfg.class_weight, cfg.seed, cfg.kernel, cfg.epochs, init)

    clean = train.view == 0
    started = time.perf_counter()
    cv = None
    if cfg.C == "auto":
        cv = choose_C(estimator_for, train.features, train.labels, train.image_index, clean, cfg.cv, cfg.seed, cfg.n_jobs)
        notes += cv.warnings
        C = cv.C
    else:
        C = float(cfg.C)
    estimator = estimator_for(C)
    fit_started = time.perf_counter()
    estimator.fit(train.features, train.labels)  # every class has training rows (checked above)
    fit_seconds = time.perf_counter() - fit_started
    total_seconds = time.perf_counter() - started

    fusable = not (cfg.clf == "svm" and cfg.kernel != "linear")
    splits_report = {}
    for name, data in eval_splits.items():
        check_finite(data.features, f"split {name!r}")
        predicted = estimator.predict(data.features)
        splits_report[name] = classification_report(data.labels, predicted, classes)
    if not eval_splits:
        notes.append(f"no split besides {train_split!r}: only the cross-validated estimate is reported")

    report = {
        "clf": cfg.clf if fusable else f"svm-{cfg.kernel}",
        "C": C,
        "C_selection": "cross-validation on the training split" if cv else "fixed",
        "cv_score": cv.cv_score if cv else None,
        "cv_folds": cv.folds if cv else None,
        "cv_curve": [{"C": c, "accuracy": s} for c, s in cv.grid] if cv else None,
        "fit_seconds": round(fit_seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "train_split": train_split,
        "train_rows": int(len(train.labels)),
        "train_images": int(clean.sum()),
        "augmented_views_used": has_views,
        "class_weight": cfg.class_weight,
        "init": cfg.init,
        "imagenet_matches": matched or None,
        "epochs": cfg.epochs if cfg.clf == "linear" else None,
        "seed": cfg.seed,
        "fusable": fusable,
        "features": os.path.abspath(cfg.features_path),
        "feature_identity": {k: v for k, v in identity.items() if k != "weights_source"},
        "splits": splits_report,
    }
    os.makedirs(cfg.out_dir, exist_ok=True)
    _save_estimator(estimator, cfg.out_dir)
    extra = {"data_root": data_root, "C": C, "train_split": train_split}
    if fusable:
        W, b = affine_of(estimator, len(classes))
        save_affine(AffineHead(W, b, classes, identity, cfg.clf, extra), cfg.out_dir)
    else:
        write_head_meta(cfg.out_dir, report["clf"], classes, identity, extra, arrays_sha256=None)
    with open(os.path.join(cfg.out_dir, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    for name, split_report in splits_report.items():
        png = save_confusion_png(split_report, classes, os.path.join(cfg.out_dir, f"confusion_{name}.png"))
        if png:
            notes.append(f"confusion matrix: {png}")
    return HeadResult(report, notes)


def _save_estimator(estimator, out_dir: str) -> None:
    if isinstance(estimator, TorchLinearHead):
        torch.save({"linear": estimator.linear_.state_dict(), "scaler_mean": torch.as_tensor(estimator.scaler_.mean_),
                    "scaler_scale": torch.as_tensor(estimator.scaler_.scale_)}, os.path.join(out_dir, "linear.pt"))
    else:
        joblib.dump(estimator, os.path.join(out_dir, "estimator.joblib"))


def summary_lines(result: HeadResult, out_dir: str) -> list[str]:
    """The report as text for the terminal."""
    r = result.report
    cv = f", CV accuracy {r['cv_score']:.4f} over {r['cv_folds']} folds" if r["cv_score"] is not None else ""
    lines = [f"{r['clf']} head, C={r['C']:.3g} ({r['C_selection']}{cv}), fit {r['fit_seconds']:.2f} s "
             f"on {r['train_rows']} rows ({r['train_images']} images)"]
    lines += result.notes
    for name, split_report in r["splits"].items():
        lines += format_report(name, split_report)
    lines.append(f"saved {out_dir}/ (report.json, head.json{', head.npz' if r['fusable'] else ''})")
    return lines
