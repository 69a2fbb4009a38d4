"""Label files: a CSV or TSV table that maps images to classes (and optionally to splits).

A label file has a header row. One column names the image, one holds its class, and an
optional ``split`` column assigns it to a split::

    id,breed                      image,label,split
    000bec18,boston_bull          train/a.jpg,cat,train
    001513df,dingo                val/b.jpg,dog,val

The image column holds either a path relative to the dataset root or a bare id, which
is looked up in the usual places: ``ROOT/ID``, ``ROOT/train/ID``, ``ROOT/images/ID``,
``ROOT/train_images/ID``, each as written or with a usual image extension. Ids that
point outside the root are refused. Rows whose image is not found are kept as samples
marked missing, so extraction records them as skipped with their reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field

from features.samples import DatasetError, Sample

IMAGE_COLUMNS = ("id", "image", "image_id", "file", "file_name", "filename", "path")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "species", "breed")
SPLIT_COLUMN = "split"
IMAGE_FOLDERS = ("", "train", "images", "train_images")
ID_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".webp", ".bmp", ".tif", ".tiff", ".gif")
LABEL_FILE_EXTENSIONS = (".csv", ".tsv")


class LabelFileError(DatasetError):
    """A label file that cannot be used; ``str(exc)`` is a one-line reason."""


@dataclass(frozen=True)
class LabelRow:
    """One data row: its line number in the file, image reference, class and split (or ``None``)."""

    line: int
    image: str
    label: str
    split: str | None


@dataclass
class LabelTable:
    """A parsed label file.

    Attributes
    ----------
    path : str
        The file as given.
    sha256 : str
        Hex digest of the file's bytes (part of a feature file's identity).
    columns : list of str
        Every column name of the header.
    image_column, label_column : str
        The columns used.
    split_column : str or None
        The ``split`` column, when the file has one.
    rows : list of LabelRow
        Data rows, duplicates (same image, same label) removed.
    duplicates : int
        How many repeated rows were dropped.
    """

    path: str
    sha256: str
    columns: list[str]
    image_column: str
    label_column: str
    split_column: str | None
    rows: list[LabelRow] = field(default_factory=list)
    duplicates: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def id_form(self) -> str:
        """How the file names images: ``"stem"`` (bare id), ``"name"`` (file name) or ``"path"``."""
        image = self.rows[0].image if self.rows else ""
        if "/" in image or "\\" in image:
            return "path"
        return "name" if os.path.splitext(image)[1].lower() in {e.lower() for e in ID_EXTENSIONS} else "stem"

    def record(self) -> dict:
        """What a feature file records about the label file (its ``config["labels"]``)."""
        return {"file": self.name, "sha256": self.sha256, "image_column": self.image_column,
                "label_column": self.label_column, "split_column": self.split_column, "id_form": self.id_form()}


def _read_text(path: str) -> tuple[str, str]:
    """The file's text (UTF-8, a BOM dropped) and the sha256 of its bytes."""
    if not os.path.exists(path):
        raise LabelFileError(f"label file {path!r} does not exist")
    if os.path.isdir(path):
        raise LabelFileError(f"label file {path!r} is a folder")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise LabelFileError(f"label file {path!r} is not readable ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"label file {path!r} is not UTF-8 text (byte {exc.start})") from None
    return text, hashlib.sha256(data).hexdigest()


def sniff_delimiter(path: str, header_line: str) -> str:
    """Tab for ``.tsv`` files, else the most frequent of comma, tab and semicolon in the header line."""
    if path.lower().endswith(".tsv"):
        return "\t"
    counts = {d: header_line.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _find_column(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str,
                 exclude: set[str]) -> str | None:
    by_lower = {name.lower(): name for name in header if name not in exclude}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        raise LabelFileError(f"{path}: no {what} column {wanted!r} (columns found: {', '.join(header)})")
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    return None


def detect_columns(header: list[str], path: str, image_column: str | None = None,
                   label_column: str | None = None) -> tuple[str, str, str | None]:
    """Choose the image, label and split columns of a header.

    The image column is ``image_column`` or the first of :data:`IMAGE_COLUMNS` present
    (case-insensitive). The label column is ``label_column``, else the first of
    :data:`LABEL_COLUMNS`, else the only column left besides image and split.

    Raises
    ------
    LabelFileError
        A named column is absent, or none can be chosen (the message lists the columns).
    """
    found = ", ".join(header)
    image = _find_column(header, image_column, IMAGE_COLUMNS, "image", path, set())
    if image is None:
        raise LabelFileError(f"{path}: no image column (columns found: {found}); name it with --image-column")
    split = next((name for name in header if name.lower() == SPLIT_COLUMN and name != image), None)
    label = _find_column(header, label_column, LABEL_COLUMNS, "label", path, {image})
    if label is None:
        rest = [name for name in header if name not in (image, split)]
        if len(rest) != 1:
            raise LabelFileError(f"{path}: no label column (columns found: {found}); name it with --label-column")
        label = rest[0]
    if label == image:
        raise LabelFileError(f"{path}: the image and label columns are both {image!r}")
    if split == label:
        split = None
    return image, label, split


def read_label_file(path: str, image_column: str | None = None, label_column: str | None = None) -> LabelTable:
    """Parse a CSV/TSV label file (header row, UTF-8 with or without BOM, LF or CRLF).

    Raises
    ------
    LabelFileError
        Missing or unreadable file, no header or rows, no usable column, an empty image
        or label, an empty split, or one image given two different labels.
    """
    text, digest = _read_text(path)
    first_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(path, first_line))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise LabelFileError(f"{path}: not a readable CSV/TSV file ({exc})") from None
    header_at = next((i for i, r in enumerate(rows) if any(c.strip() for c in r)), None)
    if header_at is None:
        raise LabelFileError(f"label file {path!r} is empty")
    header = [c.strip() for c in rows[header_at]]
    image, label, split = detect_columns(header, path, image_column, label_column)
    col = {name: i for i, name in reversed(list(enumerate(header)))}
    table = LabelTable(path, digest, header, image, label, split)
    seen: dict[str, LabelRow] = {}
    empty_labels = []
    for number, raw in enumerate(rows[header_at + 1:], start=header_at + 2):
        if not any(c.strip() for c in raw):
            continue
        cells = [c.strip() for c in raw] + [""] * (len(header) - len(raw))
        row = LabelRow(number, cells[col[image]], cells[col[label]], cells[col[split]] if split else None)
        if not row.image:
            raise LabelFileError(f"{path} line {number}: empty {image!r}")
        if not row.label:
            empty_labels.append(row)
            continue
        if split and not row.split:
            raise LabelFileError(f"{path} line {number}: empty {split!r} for {row.image}")
        if row.image in seen:
            before = seen[row.image]
            if (before.label, before.split) != (row.label, row.split):
                raise LabelFileError(f"{path}: {row.image} is labelled {before.label!r} on line {before.line} and "
                                     f"{row.label!r} on line {number}; give each image one label")
            table.duplicates += 1
            continue
        seen[row.image] = row
        table.rows.append(row)
    if empty_labels:
        first = empty_labels[0]
        raise LabelFileError(f"{path}: {len(empty_labels)} rows have an empty {label!r} (first: line {first.line}, "
                             f"{first.image}); label them or remove them (a folder of unlabeled images goes in --unlabeled)")
    if not table.rows:
        raise LabelFileError(f"{path}: a header ({', '.join(header)}) but no rows")
    return table


def looks_like_label_file(path: str) -> LabelTable | None:
    """The parsed table when ``path`` reads as a label file with detectable columns, else ``None``."""
    try:
        return read_label_file(path)
    except LabelFileError:
        return None


# --------------------------------------------------------------------------- resolving images


class ImageLookup:
    """Finds the file a label row names, inside ``root`` only.

    The usual folders (:data:`IMAGE_FOLDERS`) are listed once, so a bare id costs a
    few dictionary lookups, not a series of ``stat`` calls.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._names: dict[str, set[str]] = {}
        self._stems: dict[str, dict[str, list[str]]] = {}
        for folder in IMAGE_FOLDERS:
            path = os.path.join(root, folder)
            if not os.path.isdir(path):
                continue
            try:
                names = {e.name for e in os.scandir(path) if not e.name.startswith(".") and e.is_file()}
            except PermissionError:
                raise LabelFileError(f"cannot read {path!r} (permission denied)") from None
            self._names[folder] = names
            stems: dict[str, list[str]] = {}
            for name in names:
                stem, ext = os.path.splitext(name)
                if ext in ID_EXTENSIONS:
                    stems.setdefault(stem, []).append(name)
            self._stems[folder] = stems

    def tried(self) -> str:
        """A short description of where bare ids are looked for."""
        folders = [f"{f}/" if f else "ROOT/" for f in IMAGE_FOLDERS if f in self._names]
        return f"{', '.join(folders) or 'nothing (no such folder)'} as written or with .jpg, .png, ..."

    def relative(self, value: str, where: str) -> str:
        """``value`` as a normalised path relative to the root.

        Raises
        ------
        LabelFileError
            The value points outside the root (``..``, an absolute path elsewhere).
        """
        value = value.replace("\\", "/")
        if os.path.isabs(value):
            rel = os.path.relpath(os.path.normpath(value), self.root)
        else:
            rel = os.path.normpath(value)
        if rel == ".." or rel.startswith("../") or os.path.isabs(rel) or rel == ".":
            raise LabelFileError(f"{where}: {value!r} points outside --data {self.root}; refused")
        return rel

    def find(self, rel: str) -> str | None:
        """The existing file for a root-relative reference, or ``None``."""
        if "/" not in rel:
            for folder in IMAGE_FOLDERS:
                if rel in self._names.get(folder, ()):
                    return os.path.join(folder, rel)
            for folder in IMAGE_FOLDERS:
                names = self._stems.get(folder, {}).get(rel)
                if names:
                    return os.path.join(folder, min(names, key=lambda n: ID_EXTENSIONS.index(os.path.splitext(n)[1])))
            return None
        if os.path.isfile(os.path.join(self.root, rel)):
            return rel
        for ext in ID_EXTENSIONS:
            if os.path.isfile(os.path.join(self.root, rel + ext)):
                return rel + ext
        return None


@dataclass
class ResolvedLabels:
    """Samples per split made from a label table, with what could not be found."""

    classes: list[str]
    splits: dict[str, list[Sample]]
    missing: list[tuple[LabelRow, str]]
    notes: list[str]


def resolve_labels(table: LabelTable, root: str) -> ResolvedLabels:
    """Turn label rows into samples: classes are the sorted label values.

    Rows without a ``split`` column all go to ``train``. A row whose image is not found
    becomes a sample marked missing (extraction records it as skipped with its reason).

    Raises
    ------
    LabelFileError
        An id pointing outside ``root``, two rows naming the same file with different
        labels, a split name that cannot be a group name, or no listed image found at all.
    """
    lookup = ImageLookup(root)
    classes = sorted({row.label for row in table.rows})
    label_of = {name: i for i, name in enumerate(classes)}
    by_path: dict[str, LabelRow] = {}
    splits: dict[str, list[Sample]] = {}
    missing = []
    for row in table.rows:
        where = f"{table.path} line {row.line}"
        rel = lookup.relative(row.image, where)
        found = lookup.find(rel)
        path = found or rel
        if path in by_path:
            before = by_path[path]
            if before.label != row.label:
                raise LabelFileError(f"{table.path}: {path} is labelled {before.label!r} (line {before.line}) and "
                                     f"{row.label!r} (line {row.line}); give each image one label")
            continue
        by_path[path] = row
        split = row.split or "train"
        if "/" in split or split in (".", ".."):
            raise LabelFileError(f"{where}: split {split!r} cannot be a split name")
        reason = None
        if found is None:
            reason = f"not found ({table.name} line {row.line}; looked in {lookup.tried()})"
            missing.append((row, reason))
        splits.setdefault(split, []).append(Sample(path, label_of[row.label], missing=reason))
    if len(missing) == len(table.rows):
        raise LabelFileError(f"none of the {len(table.rows)} images listed in {table.name} was found under {root} "
                             f"(first: {table.rows[0].image!r}; looked in {lookup.tried()}); point --data at the folder "
                             f"that holds them, or use a column of paths relative to it (--image-column)")
    notes = []
    if missing:
        notes.append(f"warning: {len(missing)} of {len(table.rows)} images listed in {table.name} were not found "
                     f"(first: {missing[0][0].image!r}); they are recorded as skipped")
    if table.duplicates:
        notes.append(f"note: {table.name} repeats {table.duplicates} rows with the same label; each image is used once")
    ordered = {name: sorted(splits[name], key=lambda s: s.path) for name in sorted(splits)}
    return ResolvedLabels(classes, ordered, missing, notes)


def label_file_candidates(root: str) -> list[str]:
    """The ``*.csv``/``*.tsv`` files directly in ``root``, sorted."""
    try:
        return sorted(os.path.join(root, e.name) for e in os.scandir(root)
                      if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(LABEL_FILE_EXTENSIONS))
    except OSError:
        return []


def usable_label_file(path: str, root: str) -> LabelTable | None:
    """``path`` parsed, when it reads as a label file and names at least one image present under ``root``.

    A Kaggle ``sample_submission.csv`` (an id and one column per class) has no label
    column, and its ids name test images, so it is not taken for a label file.
    """
    table = looks_like_label_file(path)
    if table is None:
        return None
    try:
        lookup = ImageLookup(root)
        hits = sum(lookup.find(lookup.relative(row.image, path)) is not None for row in table.rows[:200])
    except LabelFileError:
        return None
    return table if hits else None

