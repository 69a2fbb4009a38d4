"""Section on the data audit: planted label flips, leaks and foreign images in hymenoptera, against cleanlab.

cleanlab (AGPL-3.0) is installed by this section only, into ``WORK/cleanlab_pkgs``, and
imported from there; it is never a dependency of the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.common import HYMENOPTERA, extraction_totals, run_measured
from benchmarks.plant import plant
from features.store import FeatureFile
from pipeline.dedup import hash_distance, unit_rows
from pipeline.label_issues import confident_learning
from pipeline.thumbnails import hash_images

CLEANLAB = ["cleanlab==2.9.0", "pandas", "tqdm", "termcolor", "python-dateutil", "pytz", "tzdata", "six"]


def _cleanlab(work: str):
    """``cleanlab.filter.find_label_issues``, installed into ``work/cleanlab_pkgs`` on first use (no deps
    beyond pandas' own small ones, so the environment's numpy and scikit-learn are the ones used)."""
    target = os.path.join(work, "cleanlab_pkgs")
    if not os.path.isdir(os.path.join(target, "cleanlab")):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, *CLEANLAB],
                       check=True)
    if target not in sys.path:
        sys.path.append(target)  # after the environment's own packages
    from cleanlab.filter import find_label_issues

    return find_label_issues


def _pr(flagged: np.ndarray, truth: np.ndarray) -> tuple[int, float, float]:
    tp = int((flagged & truth).sum())
    return int(flagged.sum()), tp / max(int(flagged.sum()), 1), tp / max(int(truth.sum()), 1)


def _precision_at_recall(scores: np.ndarray, truth: np.ndarray, recall: float) -> tuple[int, float]:
    """Precision of the shortest top-n list by ``scores`` (descending) that reaches ``recall``."""
    order = np.argsort(-scores, kind="stable")
    found = np.cumsum(truth[order])
    n = int(np.searchsorted(found, int(np.ceil(recall * truth.sum() - 1e-9))) + 1)
    return n, float(found[n - 1] / n)


def _duplicate_rules(data_root: str, features: str, leaks: set) -> list[str]:
    """Recall and false pairs of cosine-only, hash-only and combined rules over all pairs of images."""
    with FeatureFile(features) as ff:
        parts = [ff.read_split(s).clean() for s in ff.splits]
    paths = [p for part in parts for p in part.paths]
    unit = unit_rows(np.vstack([part.features for part in parts]).astype(np.float64))
    bits, mirrored, _ = hash_images([os.path.join(data_root, p) for p in paths])
    i, j = np.triu_indices(len(paths), 1)
    cos = np.einsum("ij,ij->i", unit[i], unit[j])
    ham = hash_distance(bits, mirrored, i, j)
    index = {p: k for k, p in enumerate(paths)}
    true = np.zeros(len(i), dtype=bool)
    for a, b in leaks:
        x, y = sorted((index[a], index[b]))
        true[(i == x) & (j == y)] = True
    rules = [("feature cosine >= 0.85", cos >= 0.85), ("feature cosine >= 0.90", cos >= 0.90),
             ("feature cosine >= 0.95", cos >= 0.95), ("hash distance <= 8", ham <= 8),
             ("hash distance <= 12", ham <= 12), ("hash distance <= 16", ham <= 16),
             ("cosine >= 0.80 and hash <= 12 (the audit's rule)", (cos >= 0.80) & (ham <= 12))]
    lines = ["| rule | planted pairs found | other pairs |", "|---|---|---|"]
    for name, hit in rules:
        lines.append(f"| {name} | {int((hit & true).sum())}/{int(true.sum())} | {int((hit & ~true).sum())} |")
    lowest = cos[true].min()
    lines += ["", f"Planted copies reach feature cosine {lowest:.3f} to {cos[true].max():.3f} with their originals; "
              f"{int(((cos >= lowest) & ~true).sum())} pairs of other images reach at least {lowest:.3f}. "
              f"Hash distances of the planted pairs (mirror allowed): {sorted(ham[true].tolist())}."]
    return lines


def section_audit(out_dir: str, quick: bool) -> list[str]:
    """Plant problems in a copy of hymenoptera, extract with Lite0, audit, and score each flag."""
    data = os.path.join(out_dir, "planted")
    truth = plant(HYMENOPTERA, data)
    features = os.path.join(out_dir, "planted-lite0.h5")
    audit_dir = os.path.join(out_dir, "planted-audit")
    ext = run_measured(["run_extract.py", "--data", data, "--out", features, "--overwrite", "--quiet",
                        "--report", features + ".json"])
    images, loop_seconds = extraction_totals(features + ".json")[:2]
    aud = run_measured(["run_head.py", "audit", "--features", features, "--out", audit_dir, "--overwrite"])
    with open(os.path.join(audit_dir, "audit.json"), encoding="utf-8") as fh:
        audit = json.load(fh)
    summary, rows = audit["summary"], audit["rows"]
    classes = summary["classes"]
    train = [r for r in rows if r["split"] == "train" and not r["unreadable"]]
    flipped = {d["path"]: d["true"] for d in truth["flipped"]}
    is_flip = np.array([r["path"] in flipped for r in train])
    ours = np.array([r["label_issue"] for r in train])
    n_ours, p_ours, r_ours = _pr(ours, is_flip)
    suggested_right = sum(1 for r in train if r["label_issue"] and flipped.get(r["path"]) == r["suggested_label"])

    labels = np.array([classes.index(r["label"]) for r in train])
    oof = np.array([[r[f"prob_{c}"] for c in classes] for r in train])
    oof = oof / oof.sum(axis=1, keepdims=True)
    plain = confident_learning(oof, labels).flag
    n_plain, p_plain, r_plain = _pr(plain, is_flip)
    find_label_issues = _cleanlab(out_dir)
    cl_mask = find_label_issues(labels, oof)
    n_cl, p_cl, r_cl = _pr(cl_mask, is_flip)
    cl_ranked = find_label_issues(labels, oof, return_indices_ranked_by="self_confidence")
    cl_scores = np.zeros(len(train))
    cl_scores[cl_ranked] = np.arange(len(cl_ranked), 0, -1)
    ours_scores = np.array([r["label_issue_score"] for r in train]) + ours  # flagged first, then by score
    n_eq, p_eq = _precision_at_recall(ours_scores, is_flip, r_cl)

    leaks = {(d["train"], d["val"]) for d in truth["leaks"]}
    by_path = {r["path"]: r for r in rows}
    found = [d for d in truth["leaks"] if by_path[d["train"]]["duplicate_group"]
             and by_path[d["train"]]["duplicate_group"] == by_path[d["val"]]["duplicate_group"] and by_path[d["train"]]["leak"]]
    pairs = {(p["a"], p["b"]) for p in summary["duplicate_pairs"]} | {(p["b"], p["a"]) for p in summary["duplicate_pairs"]}
    other_pairs = len(summary["duplicate_pairs"]) - sum(1 for a, b in leaks if (a, b) in pairs)
    mirrored_found = sum(1 for d in found if d["mirrored"])

    readable = [r for r in rows if not r["unreadable"]]
    by_outlier = sorted(readable, key=lambda r: -r["outlier_score"])
    foreign = set(truth["foreign"]) | {"train/ants/imageNotFound.gif"}
    ranks = {p: next(k for k, r in enumerate(by_outlier) if r["path"] == p) + 1 for p in sorted(foreign)}
    is_foreign = np.array([r["path"] in foreign for r in readable])
    n_out, p_out, r_out = _pr(np.array([r["outlier"] for r in readable]), is_foreign)

    sec = summary["seconds"]
    lines = ["## 7. Data audit on planted problems (hymenoptera copy, EfficientNet-Lite0, 2 cores)", "",
             f"`benchmarks/plant.py` copies hymenoptera and plants, with seed 0: {len(flipped)} label flips (10 % of "
             "train, each file copied into the other class instead of its own), 10 val images copied into train "
             "resized to 60-90 % and re-encoded at JPEG quality 60-85 (3 of them mirrored), and 5 scikit-learn digits "
             f"upscaled to 224 px added to `{truth['foreign'][0].split('/')[1]}`. The original `imageNotFound.gif` "
             f"counts as a foreign image too. {summary['images']} images in all.", "",
             "| flag | flagged | precision | recall | notes |", "|---|---|---|---|---|",
             f"| label issue (the audit: confident learning on OOF + neighbour votes) | {n_ours} | {p_ours:.3f} | {r_ours:.3f} | "
             f"suggested label right for {suggested_right} of {int((ours & is_flip).sum())} true flags |",
             f"| label issue, plain confident learning on the OOF probabilities | {n_plain} | {p_plain:.3f} | {r_plain:.3f} | "
             "no neighbour votes |",
             f"| label issue, cleanlab `find_label_issues` (anchor, same OOF probabilities) | {n_cl} | {p_cl:.3f} | {r_cl:.3f} | "
             f"the audit's ranking at cleanlab's recall: top {n_eq}, precision {p_eq:.3f} |",
             f"| duplicate / leak (pairs train copy - val original) | {len(summary['duplicate_pairs'])} pairs | "
             f"{(len(summary['duplicate_pairs']) - other_pairs) / max(len(summary['duplicate_pairs']), 1):.3f} | "
             f"{len(found) / len(leaks):.3f} | {mirrored_found}/3 mirrored copies found; {other_pairs} other pairs |",
             f"| outlier (5 digits + imageNotFound.gif) | {n_out} | {p_out:.3f} | {r_out:.3f} | ranks by outlier score: "
             + ", ".join(f"`{os.path.basename(p)}` {k}" for p, k in ranks.items()) + " |", "",
             f"Model: {summary['model']['clf']}, C={summary['model']['C']:.3g} by {summary['model']['cv_folds']}-fold CV; "
             f"train OOF accuracy {summary['splits']['train']['accuracy']:.4f}, val held-out accuracy "
             f"{summary['splits']['val']['accuracy']:.4f}.", "",
             "| step | seconds |", "|---|---|",
             f"| extraction (`run_extract.py` wall; its loops: {loop_seconds:.1f} s for {images} images) | {ext.seconds:.1f} |",
             f"| audit (`run_head.py audit` wall) | {aud.seconds:.1f} |",
             f"| of which out-of-fold + held-out probabilities (the C sweep) | {sec['probabilities']:.1f} |",
             f"| of which label issues, neighbours, outliers | {sec['labels_and_outliers']:.1f} |",
             f"| of which pixel hashes and duplicate groups | {sec['duplicates']:.1f} |",
             f"| of which thumbnails and report | {sec['report']:.1f} |",
             "", f"Audit / extraction wall time: {aud.seconds / ext.seconds:.2f}.", "",
             "### Which duplicate rule (all pairs of the planted copy's images)", ""]
    lines += _duplicate_rules(data, features, leaks)
    lines += ["", "```", ext.command, aud.command, "```", ""]
    return lines
