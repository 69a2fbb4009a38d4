"""The data audit: label errors, near-duplicates and leaks, outliers and unreadable files.

Everything is computed from a feature file (and the images it was made from, for the
pixel hash and thumbnails):

- out-of-fold probabilities on the training split, from the folds of the C sweep that
  ``run_head.py`` runs (:func:`pipeline.heads.choose_C`), and held-out probabilities on
  every other split from the head fitted on all training rows (or from ``--head``);
- label issues by confident learning (:mod:`pipeline.label_issues`);
- near-duplicate groups within and across splits (:mod:`pipeline.dedup`); a group that
  holds training and non-training images is a leak;
- an outlier score: distance to the k-th nearest training image, calibrated on the
  training split (modified z-score of those distances);
- the unreadable files the feature file recorded.

:func:`run_audit` writes ``audit.csv``, ``audit.json``, ``exclude.txt`` and
``index.html`` (:mod:`pipeline.audit_report`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.neighbors import NearestNeighbors

from features.data import find_train_split
from features.store import FeatureFile, SplitData
from pipeline.affine import check_identity, read_head_meta, read_head_report
from pipeline.audit_report import write_outputs
from pipeline.dedup import duplicate_pairs, groups_from_pairs, unit_rows
from pipeline.filenames import AUDIT_CSV, AUDIT_EXCLUDE, AUDIT_JSON, AUDIT_PAGE, AUDIT_THUMBS
from pipeline.head_maths import HeadTrainingError, check_finite
from pipeline.heads import C_parameter, choose_C, class_scores, make_estimator, single_blas_thread, sweep_jobs
from pipeline.label_issues import confident_learning, neighbour_votes
from pipeline.metrics import classification_report
from pipeline.predict_features import head_scores, softmax
from pipeline.thumbnails import hash_images

OUTPUTS = (AUDIT_CSV, AUDIT_JSON, AUDIT_EXCLUDE, AUDIT_PAGE, AUDIT_THUMBS)
OUTLIER_Z = 3.5  # modified z-score above which an image is an outlier (Iglewicz and Hoaglin's cut-off)


class AuditError(Exception):
    """Input the audit cannot use; ``str(exc)`` is a one-line reason."""


@dataclass
class AuditConfig:
    """Options of ``run_head.py audit``."""

    features_path: str
    out_dir: str
    head_dir: str | None = None
    data_root: str | None = None  # images' root; default: the one recorded in the feature file
    overwrite: bool = False
    clf: str = "logreg"  # without --head
    cv: int = 5
    seed: int = 0
    neighbours: int = 15
    top: int = 48  # images per report section
    n_jobs: int | None = None


@dataclass
class AuditResult:
    """Rows (one per image, unreadable files included), the summary, and notes for the user."""

    rows: list[dict]
    summary: dict
    notes: list[str] = field(default_factory=list)


def _prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an existing folder unless ``overwrite``; then remove only the audit's own outputs."""
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise AuditError(f"{out_dir} exists and is not a folder")
        if not overwrite:
            raise AuditError(f"{out_dir} exists; pass --overwrite to replace the audit in it")
        for name in OUTPUTS:
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise AuditError(f"cannot create {out_dir}: {exc.strerror or exc}") from None


@dataclass
class _Model:
    """How probabilities are made: the classifier, its C, and where they came from."""

    clf: str
    kernel: str
    C: float | str
    class_weight: str | None
    seed: int
    init: str
    epochs: int
    head_dir: str | None


def _model_from_head(head_dir: str, ff: FeatureFile, train_split: str, cfg: AuditConfig) -> _Model:
    """The head's own classifier and C; refuse a head made from other features."""
    meta = read_head_meta(head_dir)
    check_identity(meta.feature_identity, ff.identity(), cfg.features_path)
    extra = meta.extra
    if extra.get("train_split", train_split) != train_split:
        raise AuditError(f"{head_dir} was trained on split {extra['train_split']!r}, not {train_split!r}")
    report = read_head_report(head_dir)
    clf, _, kernel = meta.clf.partition("-")
    return _Model(clf, kernel or "linear", float(extra["C"]), report.get("class_weight"), int(report.get("seed", cfg.seed)),
                  report.get("init", "none"), int(report.get("epochs") or 100), head_dir)


def _probabilities(model: _Model, ff: FeatureFile, train: SplitData, others: dict[str, SplitData],
                   cfg: AuditConfig) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Out-of-fold probabilities of the training images and held-out ones of the other splits."""
    init = None
    if model.init == "imagenet":
        from pipeline.train_head import imagenet_init

        init, _ = imagenet_init(ff, ff.classes)

    estimator = make_estimator(model.clf, 1.0, model.class_weight, model.seed, model.kernel, model.epochs, init)
    clean = train.view == 0
    grid = None if model.C == "auto" else np.array([model.C])
    kwargs = {} if grid is None else {"grid": grid}
    cv = choose_C(estimator, train.features, train.labels, train.image_index, clean, cfg.cv, model.seed,
                  sweep_jobs(cfg.n_jobs, *train.features.shape), keep_scores=True, **kwargs)
    oof = softmax(cv.oof_scores[clean])
    if model.head_dir is not None:
        held_out = {name: softmax(head_scores(model.head_dir, split.features)) for name, split in others.items()}
    else:
        with single_blas_thread():
            estimator.set_params(**{C_parameter(estimator): cv.C}).fit(train.features, train.labels)
        held_out = {name: softmax(class_scores(estimator, split.features)) for name, split in others.items()}
    info = {"clf": model.clf if model.kernel == "linear" else f"{model.clf}-{model.kernel}", "C": cv.C,
            "C_selection": "fixed by --head" if grid is not None else "cross-validation on the training split",
            "cv_folds": cv.folds, "cv_score": cv.cv_score, "head": os.path.abspath(model.head_dir) if model.head_dir else None}
    return oof, held_out, info


def _kth_neighbour(unit_train: np.ndarray, unit_query: np.ndarray, k: int, self_rows: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances to, and indices of, the ``k`` nearest training images (excluding the image itself)."""
    nn = NearestNeighbors(n_neighbors=k + int(self_rows), metric="cosine").fit(unit_train)
    distances, indices = nn.kneighbors(unit_query)
    if self_rows:  # drop the image itself (or, among exact copies, one of them)
        own = indices == np.arange(len(unit_query))[:, None]
        own[~own.any(axis=1), -1] = True
        keep = ~own
        distances = distances[keep].reshape(len(unit_query), k)
        indices = indices[keep].reshape(len(unit_query), k)
    return distances, indices


def _modified_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``0.6745 (x - median) / MAD`` of the reference (Iglewicz and Hoaglin)."""
    median = np.median(reference)
    mad = np.median(np.abs(reference - median))
    return 0.6745 * (values - median) / max(mad, 1e-12)


def run_audit(cfg: AuditConfig) -> AuditResult:
    """Audit the feature file of ``cfg`` and write ``cfg.out_dir``.

    Raises
    ------
    AuditError
        Existing output folder without ``overwrite``, no training split, a single class,
        a head trained on another split.
    pipeline.affine.HeadError
        ``--head`` is not a head, or was trained on features made another way.
    features.store.FeatureFileError
        Missing, incomplete or unknown feature file.
    """
    timings = {}
    started = time.perf_counter()
    with FeatureFile(cfg.features_path) as ff:
        classes, splits = ff.classes, ff.splits
        train_split = find_train_split(splits)
        if train_split is None:
            raise AuditError(f"{cfg.features_path}: no training split among {', '.join(splits)}")
        if len(classes) < 2:
            raise AuditError(f"{cfg.features_path}: one class ({', '.join(classes)}); an audit needs two or more")
        model = (_model_from_head(cfg.head_dir, ff, train_split, cfg) if cfg.head_dir else
                 _Model(cfg.clf, "linear", "auto", None, cfg.seed, "none", 100, None))
        _prepare_out_dir(cfg.out_dir, cfg.overwrite)
        data = {name: ff.read_split(name) for name in splits}
        data_root = cfg.data_root or ff.data_root
        train_all = data[train_split]
        check_finite(train_all.features, f"split {train_split!r}")
        present = np.unique(train_all.labels)
        if len(present) < 2:
            raise AuditError(f"split {train_split!r} has a single class; an audit needs two or more")
        others = {name: d.clean() for name, d in data.items() if name != train_split}
        for name, d in others.items():
            check_finite(d.features, f"split {name!r}")
        try:
            oof, held_out, model_info = _probabilities(model, ff, train_all, others, cfg)
        except HeadTrainingError as exc:
            raise AuditError(str(exc)) from None
    timings["probabilities"] = time.perf_counter() - started

    t = time.perf_counter()
    order = [train_split] + list(others)
    parts = {train_split: train_all.clean(), **others}
    probs = {train_split: oof, **held_out}
    unit = {name: unit_rows(parts[name].features.astype(np.float64)) for name in order}
    k = max(1, min(cfg.neighbours, len(parts[train_split].labels) - 1))
    issues, z, percentile, kth = _labels_and_outliers(order, train_split, parts, probs, unit, k, len(classes))
    timings["labels_and_outliers"] = time.perf_counter() - t

    t = time.perf_counter()
    paths = [os.path.join(data_root, p) for name in order for p in parts[name].paths]
    bits, mirrored, hash_errors = hash_images(paths)
    hashed = np.array([e is None for e in hash_errors])
    pi, pj, pcos, pham = duplicate_pairs(np.vstack([unit[name] for name in order]), bits, mirrored, hashed)
    group = groups_from_pairs(len(paths), pi, pj)
    timings["duplicates"] = time.perf_counter() - t

    rows = _rows(cfg, classes, order, train_split, parts, probs, issues, z, percentile, kth, group, hash_errors, data)
    summary = _summary(cfg, classes, order, train_split, parts, probs, issues, rows, model_info, k, pi, pj, pcos, pham)
    t = time.perf_counter()
    write_outputs(cfg.out_dir, rows, summary, classes, data_root, cfg.top)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    summary["seconds"] = {key: round(v, 3) for key, v in timings.items()}
    with open(os.path.join(cfg.out_dir, AUDIT_JSON), "w", encoding="utf-8") as fh:
        json.dump({"summary": summary, "rows": rows}, fh, indent=1)
    notes = []
    if not hashed.all():
        notes.append(f"note: {int((~hashed).sum())} images could not be decoded for the pixel hash "
                     f"(e.g. {hash_errors[int(np.flatnonzero(~hashed)[0])]}); their duplicates use feature cosine alone")
    return AuditResult(rows, summary, notes)


def _labels_and_outliers(order: list[str], train_split: str, parts: dict[str, SplitData], probs: dict[str, np.ndarray],
                         unit: dict[str, np.ndarray], k: int, n_classes: int):
    """Per split: label issues (head and neighbour probabilities averaged) with the neighbours' votes, and the
    outlier statistics of the distance to the k-th nearest training image (modified z, percentile, distance)."""
    train_labels = parts[train_split].labels
    neighbours, distances = {}, {}
    for name in order:
        distances[name], neighbours[name] = _kth_neighbour(unit[train_split], unit[name], k, name == train_split)
    kth = {name: distances[name][:, -1] for name in order}
    z = {name: _modified_z(kth[name], kth[train_split]) for name in order}
    percentile = {name: np.searchsorted(np.sort(kth[train_split]), kth[name], side="right") / len(kth[train_split])
                  for name in order}
    issues = {}
    for name in order:
        votes = neighbour_votes(train_labels[neighbours[name]], n_classes)
        issues[name] = (confident_learning((probs[name] + votes) / 2, parts[name].labels), votes)
    return issues, z, percentile, kth


def _rows(cfg, classes, order, train_split, parts, probs, issues, z, percentile, kth, group, hash_errors, data) -> list[dict]:
    rows = []
    offset = 0
    split_of_group: dict[int, set[str]] = {}
    for name in order:
        for g in group[offset:offset + len(parts[name].labels)]:
            if g >= 0:
                split_of_group.setdefault(int(g), set()).add(name)
        offset += len(parts[name].labels)
    offset = 0
    for name in order:
        part, p = parts[name], probs[name]
        found, votes = issues[name]
        for r in range(len(part.labels)):
            label = int(part.labels[r])
            g = int(group[offset + r])
            leak = g >= 0 and train_split in split_of_group[g] and len(split_of_group[g]) > 1
            row = {
                "path": str(part.paths[r]), "split": name, "label": classes[label],
                "predicted": classes[int(p[r].argmax())],
                **{f"prob_{c}": round(float(p[r, j]), 6) for j, c in enumerate(classes)},
                "loss": round(float(-np.log(max(p[r, label], 1e-12))), 6),
                "self_confidence": round(float(p[r, label]), 6),
                "neighbour_agreement": round(float(votes[r, label]), 6),
                "label_issue_score": round(float(found.score[r]), 6),
                "label_issue": bool(found.flag[r]),
                "suggested_label": classes[int(found.suggested[r])] if found.flag[r] else "",
                "outlier_score": round(float(z[name][r]), 4),
                "outlier_percentile": round(float(percentile[name][r]), 4),
                "kth_neighbour_distance": round(float(kth[name][r]), 6),
                "outlier": bool(z[name][r] > OUTLIER_Z),
                "duplicate_group": f"dup-{g + 1:04d}" if g >= 0 else "",
                "leak": bool(leak),
                "unreadable": False, "reason": hash_errors[offset + r] or "",
            }
            rows.append(row)
        offset += len(part.labels)
    for name in order:
        for path, reason in data[name].skipped:
            rows.append({"path": path, "split": name, "label": "", "predicted": "", "unreadable": True,
                         "reason": reason, "label_issue": False, "outlier": False, "leak": False, "duplicate_group": ""})
    _mark_excluded(rows, train_split)
    return rows


def _mark_excluded(rows: list[dict], train_split: str) -> None:
    """Decide which flagged images ``exclude.txt`` lists.

    Label issues, outliers and unreadable files are listed. Of each duplicate group one
    image is kept: a non-training one if the group leaks (so the training copies go and
    the evaluation split stays whole), else the first path.
    """
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        row["excluded"] = bool(row["label_issue"] or row["outlier"] or row["unreadable"])
        if row["duplicate_group"]:
            by_group.setdefault(row["duplicate_group"], []).append(row)
    for members in by_group.values():
        held = [m for m in members if m["split"] != train_split]
        keep = min(held or members, key=lambda m: (m["split"], m["path"]))
        for m in members:
            if m is not keep:
                m["excluded"] = True


def _summary(cfg, classes, order, train_split, parts, probs, issues, rows, model_info, k, pi, pj, pcos, pham) -> dict:
    splits = {}
    for name in order:
        report = classification_report(parts[name].labels, probs[name].argmax(axis=1), classes)
        found, _ = issues[name]
        report.update({
            "probabilities": "out-of-fold" if name == train_split else "held-out",
            "label_issues": int(found.flag.sum()),
            "thresholds": {c: round(float(t), 6) for c, t in zip(classes, found.thresholds)},
            "confident_joint": found.joint.tolist(),
        })
        splits[name] = report
    count = lambda key: sum(1 for r in rows if r.get(key))  # noqa: E731
    paths = [r["path"] for r in rows if not r["unreadable"]]
    splits_of = [r["split"] for r in rows if not r["unreadable"]]
    return {
        "features": os.path.abspath(cfg.features_path),
        "train_split": train_split,
        "classes": classes,
        "model": model_info,
        "neighbours": k,
        "images": len(rows),
        "unreadable": count("unreadable"),
        "label_issues": count("label_issue"),
        "outliers": count("outlier"),
        "duplicate_groups": len({r["duplicate_group"] for r in rows if r["duplicate_group"]}),
        "leak_groups": len({r["duplicate_group"] for r in rows if r["leak"]}),
        "excluded": count("excluded"),
        "splits": splits,
        "rules": {"label_issue": "confident learning on the mean of out-of-fold (held-out) probabilities and "
                                 f"the label shares of the {k} nearest training images",
                  "duplicate": "feature cosine >= 0.80 and DCT-hash Hamming distance <= 12 of 64 bits "
                               "(mirror allowed); cosine >= 0.95 where an image could not be hashed",
                  "outlier": f"modified z-score of the distance to the {k}-th nearest training image > {OUTLIER_Z}"},
        "duplicate_pairs": [{"a": paths[a], "a_split": splits_of[a], "b": paths[b], "b_split": splits_of[b],
                             "cosine": round(float(c), 4), "hamming": int(h)}
                            for a, b, c, h in zip(pi, pj, pcos, pham)],
    }


def audit_lines(result: AuditResult, out_dir: str) -> list[str]:
    """The audit's outcome as text for the terminal."""
    s = result.summary
    m = s["model"]
    lines = [f"audit of {s['images']} images: {m['clf']} C={m['C']:.3g} ({m['C_selection']}), "
             f"{s['neighbours']} neighbours, {s['seconds']['total']:.1f} s"]
    for name, r in s["splits"].items():
        lines.append(f"  {name:>10}: accuracy {r['accuracy']:.4f} ({r['probabilities']}), balanced {r['balanced_accuracy']:.4f}, "
                     f"{r['label_issues']} suspected label errors")
    lines.append(f"  {s['duplicate_groups']} duplicate groups ({s['leak_groups']} leak across splits), {s['outliers']} outliers, "
                 f"{s['unreadable']} unreadable files; {s['excluded']} paths in exclude.txt")
    lines += result.notes
    lines.append(f"saved {out_dir}/ (index.html, audit.csv, audit.json, exclude.txt)")
    return lines
