"""``model.json``, the description of a MODEL_DIR: its format, and the one reader that checks it.

Every consumer of a MODEL_DIR reads ``model.json`` through :func:`read_model_meta` and opens an
exported file through :func:`verified_export`, so a folder from another version, a hand-edited
description or a changed program is refused in one place, before anything is loaded.
"""

from __future__ import annotations

import json
import os
import re

from features.hashing import sha256_file
from features.preprocessing import Preprocessing
from pipeline.artefacts import STAGING_SUFFIX
from pipeline.filenames import MODEL_META

MODEL_FORMAT = "tlcache.model"
MODEL_FORMAT_VERSION = 1  # the version written; bump it (and keep reading the old ones) when the structure changes
READABLE_VERSIONS = (1,)

# Key -> accepted types of version 1. ``bool`` is refused where a number is expected (JSON true is not 1).
REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "format_version": (int,),
    "classes": (list,),
    "input_size": (int,),
    "preprocessing": (dict,),
    "backbone": (str,),
    "weights": (str,),
    "feature_layer": (str,),
    "classifier_slot": (str,),
    "head": (dict,),
    "fused_check_max_abs_diff": (int, float),
    "finetune": (dict, type(None)),
    "exports": (dict,),
}
# Formats every version-1 folder holds; others (``onnx``) are optional.
REQUIRED_EXPORTS = ("torchscript", "torch.export")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelDirError(Exception):
    """An unusable MODEL_DIR; ``str(exc)`` is a one-line reason."""


def _type_ok(value, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def read_model_meta(model_dir: str) -> dict:
    """Read ``MODEL_DIR/model.json`` and check it is a complete description this version can use.

    Checks the format name, the version (one of :data:`READABLE_VERSIONS`), every required
    key and its type, the classes, the preprocessing record, and that each exported file is
    listed with a plain file name and a SHA-256. Does not read the exported files
    (see :func:`verified_export`).

    Parameters
    ----------
    model_dir : str
        A folder written by ``python -m pipeline.fuse``.

    Returns
    -------
    dict
        The parsed ``model.json``.

    Raises
    ------
    ModelDirError
        Not a model folder, unreadable or incomplete ``model.json``, another format, or an
        unsupported (e.g. newer) version; the message is one line naming the problem.
    """
    path = os.path.join(model_dir, MODEL_META)
    if not os.path.isfile(path):
        staging = " (an unfinished build exists: rerun pipeline.fuse)" if os.path.isdir(model_dir + STAGING_SUFFIX) else ""
        raise ModelDirError(f"{model_dir}: not a model folder (no {MODEL_META} from pipeline.fuse){staging}")
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"damaged model folder: {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelDirError(f"{path} is not a tlcache model description (format {found!r}, expected {MODEL_FORMAT!r})")
    version = meta.get("format_version")
    if not _type_ok(version, (int,)) or version not in READABLE_VERSIONS:
        newer = " (written by a newer tlcache: update tlcache)" if _type_ok(version, (int,)) and version > max(READABLE_VERSIONS) else ""
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise ModelDirError(f"{path}: unsupported model format_version {version!r}; this tlcache reads version "
                            f"{readable}{newer}")
    for key, types in REQUIRED_KEYS.items():
        if key not in meta:
            raise ModelDirError(f"damaged model folder: {path} has no {key!r}")
        if not _type_ok(meta[key], types):
            raise ModelDirError(f"damaged model folder: {path}: {key!r} is {type(meta[key]).__name__}, "
                                f"expected {_type_names(types)}")
    _check_classes(path, meta["classes"])
    if meta["input_size"] <= 0:
        raise ModelDirError(f"damaged model folder: {path}: 'input_size' is {meta['input_size']}")
    try:
        crop_size = Preprocessing.from_dict(meta["preprocessing"]).crop_size
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelDirError(f"damaged model folder: {path}: 'preprocessing' is unusable "
                            f"({type(exc).__name__}: {exc})") from None
    if crop_size != meta["input_size"]:  # prediction crops by the preprocessing record: the two must agree
        raise ModelDirError(f"damaged model folder: {path}: 'input_size' is {meta['input_size']} but the "
                            f"preprocessing crops {crop_size} px")
    _check_exports(path, meta["exports"])
    return meta


def _check_classes(path: str, classes: list) -> None:
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ModelDirError(f"damaged model folder: {path}: 'classes' must be a non-empty list of names")
    if len(set(classes)) != len(classes):
        raise ModelDirError(f"damaged model folder: {path}: 'classes' names a class twice")


def _check_exports(path: str, exports: dict) -> None:
    for fmt in REQUIRED_EXPORTS:
        if fmt not in exports:
            raise ModelDirError(f"damaged model folder: {path}: 'exports' has no {fmt!r}")
    for fmt, info in exports.items():
        where = f"damaged model folder: {path}: export {fmt!r}"
        if not isinstance(info, dict) or ("file" in info) == ("skipped" in info):
            raise ModelDirError(f"{where} must name either a file or why it was skipped")
        if "skipped" in info:
            if fmt in REQUIRED_EXPORTS or not isinstance(info["skipped"], str):
                raise ModelDirError(f"{where} is marked skipped")
            continue
        name = info["file"]
        # A bare name inside the folder: model.json must not point a loader elsewhere.
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name.startswith("."):
            raise ModelDirError(f"{where} has file {name!r}, expected a file name inside the folder")
        if not isinstance(info.get("sha256"), str) or not _SHA256.fullmatch(info["sha256"]):
            raise ModelDirError(f"{where} has no SHA-256 of {name}")


def has_export(meta: dict, fmt: str) -> bool:
    """True when ``model.json`` lists a file for ``fmt`` (``torch.export``, ``onnx``...)."""
    return "file" in meta["exports"].get(fmt, {})


def verified_export(model_dir: str, meta: dict, fmt: str) -> str:
    """The path of the exported ``fmt`` file, once its SHA-256 matches the one in ``model.json``.

    Parameters
    ----------
    model_dir : str
    meta : dict
        From :func:`read_model_meta` for the same folder.
    fmt : str
        A key of ``meta["exports"]`` that names a file (see :func:`has_export`).

    Raises
    ------
    ModelDirError
        The format was not exported, its file is missing, or its content changed.
    """
    info = meta["exports"].get(fmt, {})
    if "file" not in info:
        reason = f" ({info['skipped']})" if "skipped" in info else ""
        raise ModelDirError(f"{model_dir}: no {fmt} export in this model folder{reason}")
    path = os.path.join(model_dir, info["file"])
    if not os.path.isfile(path):
        raise ModelDirError(f"damaged model folder: {path} is missing")
    if sha256_file(path) != info["sha256"]:
        raise ModelDirError(f"damaged model folder: {path} does not match the SHA-256 in {MODEL_META}")
    return path
