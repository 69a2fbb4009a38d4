"""Predict classes of new images with an exported MODEL_DIR (no HDF5, no training state).

``python -m pipeline.predict --model MODEL_DIR IMAGE_OR_DIR... [--format table|jsonl|csv|submission] [--top-k K]``
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass

import click
import numpy as np
import torch

from features.devices import keep_freed_memory
from features.images import UnreadableImage
from features.preprocessing import Preprocessing
from features.hashing import sha256_file
from pipeline.artefacts import STAGING_SUFFIX
from pipeline.export import EXPORTED_PROGRAM, SIDECAR
from pipeline.submission import SubmissionError, build_submission, read_template, write_submission


class ModelDirError(Exception):
    """An unusable MODEL_DIR; ``str(exc)`` is a one-line reason."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), best first


def load_exported(model_dir: str) -> tuple[torch.nn.Module, dict]:
    """The exported program (as a callable module) and its sidecar."""
    sidecar_path = os.path.join(model_dir, SIDECAR)
    program_path = os.path.join(model_dir, EXPORTED_PROGRAM)
    if not os.path.exists(sidecar_path) or not os.path.exists(program_path):
        staging = " (an unfinished build exists: rerun pipeline.fuse)" if os.path.isdir(model_dir + STAGING_SUFFIX) else ""
        raise ModelDirError(f"{model_dir}: not a model folder (needs {SIDECAR} and {EXPORTED_PROGRAM} from pipeline.fuse){staging}")
    try:
        with open(sidecar_path, encoding="utf-8") as fh:
            sidecar = json.load(fh)
        expected = sidecar["exports"]["torch.export"].get("sha256")
        classes, preprocessing = sidecar["classes"], sidecar["preprocessing"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelDirError(f"damaged model folder: {sidecar_path} is unreadable ({type(exc).__name__}: {exc})") from None
    if sidecar.get("format") != "tlcache.model" or not isinstance(classes, list) or not isinstance(preprocessing, dict):
        raise ModelDirError(f"damaged model folder: {sidecar_path} is not a tlcache model description")
    if expected is not None and sha256_file(program_path) != expected:
        raise ModelDirError(f"damaged model folder: {program_path} does not match the SHA-256 in {SIDECAR}")
    try:
        return torch.export.load(program_path).module(), sidecar
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a broken archive
        raise ModelDirError(f"damaged model folder: {program_path} cannot be loaded ({type(exc).__name__})") from None


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders expanded to their non-hidden files (recursively, sorted)."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
        else:
            files.append(item)
    return files


def predict_images(model_dir: str, paths: list[str], top_k: int = 1, batch_size: int = 32):
    """Classify image files.

    Returns
    -------
    predictions : list of Prediction
    skipped : list of (path, reason)
    """
    keep_freed_memory()
    model, sidecar = load_exported(model_dir)
    preprocessing = Preprocessing.from_dict(sidecar["preprocessing"])
    transform = preprocessing.eval_transform()
    classes = sidecar["classes"]
    predictions, skipped, pending = [], [], []

    def flush():
        if not pending:
            return
        with torch.inference_mode():
            probs = torch.softmax(model(torch.stack([t for _, t in pending])), dim=1)
        values, indices = probs.topk(min(top_k, len(classes)), dim=1)
        for (path, _), v, i in zip(pending, values.tolist(), indices.tolist()):
            predictions.append(Prediction(path, [(classes[c], p) for c, p in zip(i, v)]))
        pending.clear()

    for path in paths:
        try:
            pending.append((path, transform(preprocessing.load(path))))
        except UnreadableImage as exc:
            skipped.append((path, str(exc)))
        except OSError as exc:
            skipped.append((path, exc.strerror or str(exc)))
        if len(pending) == batch_size:
            flush()
    flush()
    return predictions, skipped


def _submission(predictions: list[Prediction], model_dir: str, template: str | None, out: str | None) -> list[str]:
    """Write every class's probability per image as a submission (to ``out`` or stdout); returns notes."""
    with open(os.path.join(model_dir, SIDECAR), encoding="utf-8") as fh:
        classes = json.load(fh)["classes"]
    probs = [[dict(p.top)[c] for c in classes] for p in predictions]
    submission = build_submission([p.path for p in predictions], np.array(probs, dtype=np.float64),
                                  classes, read_template(template) if template else None)
    if out:
        write_submission(out, submission)
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(submission.header)
        writer.writerows(submission.rows)
    return submission.notes


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_dir", required=True, help="MODEL_DIR written by pipeline.fuse.")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv", "submission"]), default="table",
              show_default=True, help="submission: an id (file name without extension) plus one probability column "
                                      "per class.")
@click.option("--top-k", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--template", default=None,
              help="submission only: a sample submission whose id column, class columns and row order are kept.")
@click.option("--out", default=None, help="submission only: write the CSV here instead of to stdout.")
def main(model_dir, inputs, fmt, top_k, template, out) -> None:
    """Print class and probability for each image (folders are searched recursively)."""
    if (template or out) and fmt != "submission":
        click.echo("error: --template and --out apply to --format submission", err=True)
        sys.exit(2)
    try:
        predictions, skipped = predict_images(model_dir, expand_inputs(list(inputs)),
                                              10**9 if fmt == "submission" else top_k)
        notes = _submission(predictions, model_dir, template, out) if fmt == "submission" and predictions else []
    except (ModelDirError, SubmissionError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    if fmt == "jsonl":
        for p in predictions:
            click.echo(json.dumps({"path": p.path, "class": p.top[0][0], "prob": round(p.top[0][1], 6),
                                   "top": [{"class": c, "prob": round(v, 6)} for c, v in p.top]}))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "class", "prob"] + [f"{k}{i}" for i in range(2, top_k + 1) for k in ("class", "prob")])
        for p in predictions:
            writer.writerow([p.path] + [x for c, v in p.top for x in (c, f"{v:.6f}")])
    elif fmt == "table":
        for p in predictions:
            click.echo(f"{p.path}\t" + "  ".join(f"{c} {v:.3f}" for c, v in p.top))
    for note in notes:
        click.echo(note, err=True)
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not predictions:
        click.echo("error: no image could be read", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
