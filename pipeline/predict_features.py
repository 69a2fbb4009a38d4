"""Apply a saved head to the rows of a feature file and write a CSV of predictions."""

from __future__ import annotations

import csv

import numpy as np

from features.store import FeatureFile
from pipeline.affine import check_identity, load_affine, load_estimator, read_head_meta
from pipeline.head_maths import check_finite
from pipeline.heads import class_scores
from pipeline.submission import SubmissionError, build_submission, read_template, write_submission


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _head_scores(head_dir: str, fusable: bool, features: np.ndarray) -> np.ndarray:
    """Class scores: the verified affine map, or the hash-checked estimator of a non-linear head."""
    if fusable:
        return load_affine(head_dir).logits(features)
    return class_scores(load_estimator(head_dir), features)


def head_scores(head_dir: str, features: np.ndarray) -> np.ndarray:
    """Class scores of ``features`` under the saved head in ``head_dir`` (linear or not)."""
    return _head_scores(head_dir, read_head_meta(head_dir).fusable, features)


def predict_split(head_dir: str, features_path: str, split: str, out_csv: str | None, fmt: str = "rows",
                  template: str | None = None) -> dict:
    """Predict every centre-crop row of ``split``.

    Parameters
    ----------
    fmt : str
        ``"rows"``: columns ``path, true, predicted, prob_<class>...`` (``true`` is empty
        in an unlabeled split). ``"submission"``: an id column plus one probability
        column per class (:mod:`pipeline.submission`), in ``template``'s column and row
        order when a template is given.
    template : str, optional
        A sample submission (``submission`` format only).

    Returns
    -------
    dict
        ``{"n": rows, "accuracy": float or None (unlabeled split), "csv": path or None,
        "notes": [str]}``.

    Raises
    ------
    HeadError
        The head was trained on features of another backbone, weights, preprocessing
        or class list; or the head folder is broken.
    SubmissionError
        A template that does not fit the head's classes, or two images with one id.
    """
    if template and fmt != "submission":
        raise SubmissionError("--template applies to --format submission")
    meta = read_head_meta(head_dir)
    with FeatureFile(features_path) as ff:
        check_identity(meta.feature_identity, ff.identity(), features_path)
        data = ff.read_split(split).clean()
        classes = ff.classes
        id_form = ff.config.get("id_form", "stem")
    check_finite(data.features, f"split {split!r}")
    scores = _head_scores(head_dir, meta.fusable, data.features)
    probs = softmax(scores)
    predicted = probs.argmax(axis=1)
    labeled = data.labels >= 0
    notes = []
    if labeled.any() and not labeled.all():
        notes.append(f"note: {int((~labeled).sum())} rows of {split} are unlabeled; accuracy is over the other "
                     f"{int(labeled.sum())}")
    accuracy = float((predicted[labeled] == data.labels[labeled]).mean()) if labeled.any() else None
    if out_csv and fmt == "submission":
        submission = build_submission([str(p) for p in data.paths], probs, classes,
                                      read_template(template) if template else None, id_form)
        write_submission(out_csv, submission)
        notes += submission.notes
    elif out_csv:
        with open(out_csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "true", "predicted"] + [f"prob_{c}" for c in classes])
            for path, true, pred, p in zip(data.paths, data.labels, predicted, probs):
                writer.writerow([path, classes[true] if true >= 0 else "", classes[pred]] + [f"{v:.6f}" for v in p])
    return {"n": int(len(predicted)), "accuracy": accuracy, "csv": out_csv, "notes": notes}
