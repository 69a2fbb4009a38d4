"""Predict classes of new images with an exported MODEL_DIR (no HDF5, no training state).

``python -m pipeline.predict --model MODEL_DIR IMAGE_OR_DIR... [--format table|jsonl|csv|submission] [--top-k K]
[--runtime torch|onnxruntime]``
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable

import click
import numpy as np
import torch

from features.cli_common import CONTEXT_SETTINGS, EXIT_NOTHING_READABLE, batch_size_option, exit_codes, fail
from features.devices import keep_freed_memory
from features.images import UnreadableImage
from features.prefetch import pooled_batches, single_torch_thread
from features.preprocessing import Preprocessing
from pipeline.model_meta import ModelDirError, has_export, read_model_meta, verified_export
from pipeline.submission import SubmissionError, build_submission, read_template, write_submission

RUNTIMES = ("torch", "onnxruntime")


class RuntimeUnavailable(Exception):
    """The runtime asked for is not installed; ``str(exc)`` is a one-line reason."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), best first


class OnnxModel:
    """``model.onnx`` in an onnxruntime session, called like the torch program: logits of a float32 batch.

    Parameters
    ----------
    path : str
        A verified ``model.onnx``.
    threads : int
        Intra-op threads; predict passes torch's count, so both runtimes use the same cores.
    """

    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: batch.contiguous().numpy()})[0])


def load_exported(model_dir: str, runtime: str = "torch") -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """The exported model as a callable (a batch of preprocessed images -> logits) and its ``model.json``.

    Parameters
    ----------
    model_dir : str
        A folder written by ``python -m pipeline.fuse``.
    runtime : {"torch", "onnxruntime"}
        ``torch`` loads ``model.pt2`` (the ``torch.export`` program); ``onnxruntime`` runs
        ``model.onnx`` and never loads ``model.pt2``.

    Returns
    -------
    model : callable
    meta : dict
        The checked ``model.json`` (see :func:`pipeline.model_meta.read_model_meta`).

    Raises
    ------
    ModelDirError
        An unusable folder, a missing export, or a file whose SHA-256 differs from ``model.json``.
    RuntimeUnavailable
        ``onnxruntime`` is asked for but not installed.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if runtime == "onnxruntime":
        try:
            importlib.import_module("onnxruntime")  # here, so that the torch runtime never needs it
        except ImportError as exc:
            raise RuntimeUnavailable(f"--runtime onnxruntime needs the onnxruntime package (pip install onnxruntime): "
                                     f"{exc}") from None
    meta = read_model_meta(model_dir)
    if runtime == "onnxruntime" and not has_export(meta, "onnx"):
        reason = meta["exports"].get("onnx", {}).get("skipped", "not exported")
        raise ModelDirError(f"{model_dir} has no model.onnx ({reason}); fuse again with the onnx extra installed, "
                            "or use --runtime torch")
    path = verified_export(model_dir, meta, "torch.export" if runtime == "torch" else "onnx")
    try:  # only once the SHA-256 matched: a changed file is never deserialised
        if runtime == "torch":
            return torch.export.load(path).module(), meta
        return OnnxModel(path, torch.get_num_threads()), meta
    except Exception as exc:  # noqa: BLE001 - torch and onnxruntime raise many types for a broken file
        raise ModelDirError(f"damaged model folder: {path} cannot be loaded ({type(exc).__name__})") from None


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


class _DecodedFiles:
    """``files[i]``: ``(path, normalised CHW tensor, None)``, or ``(path, None, reason)`` for an unreadable file."""

    def __init__(self, paths: list[str], preprocessing: Preprocessing) -> None:
        self.paths = paths
        self.preprocessing = preprocessing
        self.transform = preprocessing.eval_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None]:
        path = self.paths[i]
        try:
            return path, self.transform(self.preprocessing.load(path)), None
        except UnreadableImage as exc:
            return path, None, str(exc)
        except OSError as exc:
            return path, None, exc.strerror or str(exc)


def predict_images(model_dir: str, paths: list[str], top_k: int = 1, batch_size: int = 16, runtime: str = "torch"):
    """Classify image files.

    Each batch of files is decoded by one thread per core while the model waits, then
    classified while the threads wait (as extraction's default ``--decode pool``), so the
    two never contend for the cores.

    Parameters
    ----------
    model_dir : str
    paths : list of str
        Image files.
    top_k : int
        Classes kept per image, best first.
    batch_size : int
        Files decoded and classified at a time.
    runtime : {"torch", "onnxruntime"}
        See :func:`load_exported`.

    Returns
    -------
    predictions : list of Prediction
        In the order of ``paths``, unreadable files left out.
    skipped : list of (path, reason)
    """
    keep_freed_memory()
    model, sidecar = load_exported(model_dir, runtime)
    files = _DecodedFiles(paths, Preprocessing.from_dict(sidecar["preprocessing"]))
    classes = sidecar["classes"]
    predictions, skipped = [], []
    with contextlib.closing(pooled_batches(files, batch_size, torch.get_num_threads(), single_torch_thread)) as batches:
        for batch in batches:
            skipped += [(path, reason) for path, pixels, reason in batch if pixels is None]
            readable = [(path, pixels) for path, pixels, _ in batch if pixels is not None]
            if not readable:
                continue
            with torch.inference_mode():
                probs = torch.softmax(model(torch.stack([pixels for _, pixels in readable])), dim=1)
            values, indices = probs.topk(min(top_k, len(classes)), dim=1)
            for (path, _), v, i in zip(readable, values.tolist(), indices.tolist()):
                predictions.append(Prediction(path, [(classes[c], p) for c, p in zip(i, v)]))
    return predictions, skipped


def _submission(predictions: list[Prediction], model_dir: str, template: str | None, out: str | None) -> list[str]:
    """Write every class's probability per image as a submission (to ``out`` or stdout); returns notes."""
    classes = read_model_meta(model_dir)["classes"]
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


def _print_predictions(predictions: list[Prediction], fmt: str, top_k: int) -> None:
    """Write the predictions to stdout as a table, JSON lines or CSV."""
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


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--model", "model_dir", required=True, help="MODEL_DIR written by pipeline.fuse.")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv", "submission"]), default="table",
              show_default=True, help="submission: an id (file name without extension) plus one probability column "
                                      "per class.")
@click.option("--top-k", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--template", default=None,
              help="submission only: a sample submission whose id column, class columns and row order are kept.")
@click.option("--out", default=None, help="submission only: write the CSV here instead of to stdout.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="torch", show_default=True,
              help="torch: run model.pt2 (the torch.export program); onnxruntime: run model.onnx "
                   "(needs onnxruntime and a model fused with the onnx extra).")
@batch_size_option(16)
def main(model_dir, inputs, fmt, top_k, template, out, runtime, batch_size) -> None:
    """Print class and probability for each image (folders are searched recursively)."""
    if (template or out) and fmt != "submission":
        fail("--template and --out apply to --format submission")
    try:
        with exit_codes((ModelDirError, RuntimeUnavailable, SubmissionError, ValueError), "interrupted"):
            predictions, skipped = predict_images(model_dir, expand_inputs(list(inputs)),
                                                  10**9 if fmt == "submission" else top_k, batch_size, runtime)
            notes = _submission(predictions, model_dir, template, out) if fmt == "submission" and predictions else []
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    _print_predictions(predictions, fmt, top_k)
    for note in notes:
        click.echo(note, err=True)
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not predictions:
        fail("no image could be read", EXIT_NOTHING_READABLE)


if __name__ == "__main__":
    from features.entry import run_command

    run_command(main)
