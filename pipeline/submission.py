"""Submission files: an id column plus one probability column per class, ready to upload.

With a template (Kaggle's ``sample_submission.csv``) the file has the template's id
column name, class columns and row order; without one, ``id`` and the classes in the
head's order, rows in the order given.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field

import numpy as np

from features.labels import sniff_delimiter

ID_FORMS = ("stem", "name", "path")


class SubmissionError(Exception):
    """A submission cannot be written as asked; ``str(exc)`` is a one-line reason."""


def image_id(path: str, form: str = "stem") -> str:
    """The id of an image: its file name without extension (``stem``), with it (``name``), or the path as given."""
    if form == "path":
        return path.replace("\\", "/")
    name = os.path.basename(path)
    return name if form == "name" else os.path.splitext(name)[0]


@dataclass
class Template:
    """A sample submission: its id column, class columns and ids, in file order."""

    path: str
    id_column: str
    class_columns: list[str]
    ids: list[str]


def read_template(path: str) -> Template:
    """Read a sample submission (CSV/TSV with a header, UTF-8 with or without BOM).

    Raises
    ------
    SubmissionError
        Missing or unreadable file, no header, fewer than two columns, no rows.
    """
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise SubmissionError(f"template {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"template {path!r} is not readable ({exc})") from None
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(path, text.split("\n", 1)[0]))
            if any(c.strip() for c in r)]
    if not rows or len(rows[0]) < 2:
        raise SubmissionError(f"template {path!r} needs a header with an id column and one column per class")
    if len(rows) < 2:
        raise SubmissionError(f"template {path!r} has a header but no rows")
    header = [c.strip() for c in rows[0]]
    return Template(path, header[0], header[1:], [r[0].strip() for r in rows[1:]])


@dataclass
class Submission:
    """The table to write and what the user should know about it."""

    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _ids(paths: list[str], form: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    for i, path in enumerate(paths):
        key = image_id(path, form)
        if key in ids:
            raise SubmissionError(f"{paths[ids[key]]} and {path} have the same id {key!r}; rename one")
        ids[key] = i
    return ids


def build_submission(paths: list[str], probs: np.ndarray, classes: list[str], template: Template | None = None,
                     id_form: str = "stem") -> Submission:
    """Match predictions to ids and order the columns.

    Parameters
    ----------
    paths : list of str
        The images predicted (root-relative or as given), one per row of ``probs``.
    probs : ndarray (n, n_classes)
        Class probabilities in the order of ``classes``.
    template : Template, optional
        When given, its columns must be exactly the classes; each of its ids is
        matched to an image by the id form that matches most of them.
    id_form : str
        Without a template: how ids are made from paths (see :func:`image_id`).

    Raises
    ------
    SubmissionError
        Two images with one id, or template columns that are not the head's classes.
    """
    def fmt(row: np.ndarray) -> list[str]:
        return [f"{v:.6f}" for v in row]

    if template is None:
        ids = _ids(paths, id_form)
        return Submission(["id"] + list(classes), [[key] + fmt(probs[i]) for key, i in ids.items()])
    unknown = [c for c in template.class_columns if c not in classes]
    absent = [c for c in classes if c not in template.class_columns]
    if unknown or absent:
        raise SubmissionError(f"{template.path}: its columns are not the head's classes"
                              f"{' (not classes: ' + ', '.join(unknown[:5]) + ')' if unknown else ''}"
                              f"{' (classes without a column: ' + ', '.join(absent[:5]) + ')' if absent else ''}")
    order = [classes.index(c) for c in template.class_columns]
    wanted = set(template.ids)
    form = max(ID_FORMS, key=lambda f: len(wanted & {image_id(p, f) for p in paths}))
    ids = _ids(paths, form)
    notes = []
    missing = [key for key in template.ids if key not in ids]
    uniform = np.full(len(classes), 1.0 / len(classes))
    rows = [[key] + fmt((probs[ids[key]] if key in ids else uniform)[order]) for key in template.ids]
    if missing:
        notes.append(f"warning: {len(missing)} of {len(template.ids)} template ids have no prediction (first: "
                     f"{missing[0]!r}); written with uniform probabilities 1/{len(classes)}")
    extra = len(set(ids) - wanted)
    if extra:
        notes.append(f"warning: {extra} predicted images are not in the template; left out")
    return Submission([template.id_column] + template.class_columns, rows, notes)


def write_submission(path: str, submission: Submission) -> str:
    """Write the table as CSV (UTF-8, LF line ends). Returns ``path``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(submission.header)
        writer.writerows(submission.rows)
    return path
