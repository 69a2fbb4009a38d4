"""Shared fixtures: generated image folders, the real hymenoptera data, subprocess helpers."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYMENOPTERA = os.path.abspath(os.path.join(REPO, "..", "shared", "data", "hymenoptera_data"))


def write_image(path: str, seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB", fmt: str | None = None) -> str:
    """Write a random-noise image with a class-dependent tint (so classes are separable)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").convert(mode).save(path, format=fmt)
    return path


def make_imagefolder(root: str, layout: dict[str, dict[str, int]], seed: int = 0) -> str:
    """``layout`` maps split ("" for none) -> class -> number of JPEGs to write."""
    n = 0
    for split, classes in layout.items():
        for label, (cls, count) in enumerate(sorted(classes.items())):
            for i in range(count):
                rng = np.random.default_rng(seed + n)
                arr = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                arr[..., label % 3] = 255 - label * 60  # tint per class
                path = os.path.join(root, split, cls, f"img_{i:03d}.jpg")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(arr).save(path, quality=90)
                n += 1
    return root


@pytest.fixture
def small_dataset(tmp_path) -> str:
    """train: 3 classes x 6 images, val: 3 classes x 3 images (JPEG)."""
    return make_imagefolder(str(tmp_path / "data"), {"train": {"a": 6, "b": 6, "c": 6}, "val": {"a": 3, "b": 3, "c": 3}})


@pytest.fixture
def tiny_pipeline(tmp_path) -> tuple[str, str, str]:
    """Generated images -> tiny_cnn features -> logreg head: ``(data root, feature file, head folder)``."""
    from features.extract import ExtractConfig, extract
    from pipeline.train_head import HeadConfig, train_head

    data = make_imagefolder(str(tmp_path / "data"), {"train": {"ants": 12, "bees": 12}, "val": {"ants": 6, "bees": 6}})
    feats = str(tmp_path / "f.h5")
    # fp32 on every CPU: the exported model (fp32) must reproduce the head's accuracy exactly.
    extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", precision="fp32",
                          progress=False))
    head = str(tmp_path / "head")
    train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    return data, feats, head


@pytest.fixture(scope="session")
def hymenoptera() -> str:
    if not os.path.isdir(HYMENOPTERA):
        pytest.skip(f"real dataset not found at {HYMENOPTERA} (it sits beside the checkout in CI)")
    return HYMENOPTERA


def one_line_error(stderr: str, *needles: str) -> None:
    """``stderr`` is exactly one ``error: ...`` line holding every needle, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr


def assert_resumed(stdout: str, folder: str) -> None:
    """The rerun continued the interrupted journal: its status says so, and nothing was set aside as damaged
    (a journal that cannot be reused is moved aside with a note and the run starts afresh, to the same rows)."""
    assert any(line.startswith("resumed and written: ") for line in stdout.splitlines()), stdout
    assert "could not be resumed" not in stdout, stdout
    assert not glob.glob(os.path.join(folder, "*.damaged-*"))


def run_cli(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a top-level script (``run_extract.py``...) or ``-m module`` as a real subprocess."""
    target = ["-m", script[3:]] if script.startswith("-m ") else [os.path.join(REPO, script)]
    cmd = [sys.executable, *target, *args]
    full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def hymenoptera_lite0(hymenoptera, tmp_path_factory) -> str:
    """Real Lite0 features of the real hymenoptera data, extracted once per test session."""
    from features.extract import ExtractConfig, extract

    out = str(tmp_path_factory.mktemp("hym") / "hymenoptera-lite0.h5")
    # fp32 whatever the CPU: the accuracy floors and exact reproductions below hold on every machine.
    extract(ExtractConfig(data_root=hymenoptera, out_path=out, precision="fp32", progress=False))
    return out


def write_feature_file(path: str, splits: dict, classes: list[str], backbone: str = "tiny_cnn",
                       views: dict | None = None) -> str:
    """Write a real, complete feature file from arrays: ``splits[name] = (X, y)``.

    ``views[name] = k`` marks every ``k+1`` consecutive rows as views of one image.
    """
    from features.identity import FeatureIdentity
    from features.preprocessing import Preprocessing
    from features.store import file_attrs
    from features.writer import open_writer

    dim = next(iter(splits.values()))[0].shape[1]
    identity = FeatureIdentity(backbone=backbone, weights="none", feature_layer="output of avgpool", feature_dim=dim,
                               preprocessing=Preprocessing(36, 32, "bilinear", (0.5,) * 3, (0.5,) * 3),
                               classes=tuple(classes), weights_source="random initialisation")
    attrs = file_attrs(identity, list(splits), "/nonexistent", {"views": 0}, {}, created="2026-01-01T00:00:00+00:00")
    per_image = {name: (views or {}).get(name, 0) + 1 for name in splits}
    sizes = {name: len(y) // per_image[name] for name, (X, y) in splits.items()}
    writer = open_writer(path, attrs, sizes, dim, "float32", overwrite=True).writer
    for name, (X, y) in splits.items():
        k = per_image[name]
        image_index = np.repeat(np.arange(len(y) // k), k)
        writer.commit(name, X.astype(np.float32), y.astype(np.int64), [f"{name}/{i}.png" for i in image_index],
                      image_index, np.tile(np.arange(k, dtype=np.int16), len(y) // k), [], sizes[name])
        writer.finish_split(name)
    writer.finalize()
    return path


def blobs(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 1.0):
    """Gaussian clusters with well separated, per-feature scaled means (a known answer)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0, 3, size=(n_classes, dim))
    scales = np.random.default_rng(99).uniform(0.1, 20, size=dim)  # unscaled features, as real ones
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = (centres[y] + rng.normal(0, spread, size=(len(y), dim))) * scales + 5
    return X, y


@pytest.fixture(scope="session")
def hymenoptera_lite0_views(hymenoptera, tmp_path_factory) -> str:
    """As ``hymenoptera_lite0`` plus 4 augmented views per training image."""
    from features.extract import ExtractConfig, extract

    out = str(tmp_path_factory.mktemp("hymv") / "hymenoptera-lite0-views4.h5")
    extract(ExtractConfig(data_root=hymenoptera, out_path=out, views=4, precision="fp32", progress=False))
    return out


def make_kaggle(root: str, train: dict[str, int], test: dict[str, int], seed: int = 0,
                label_column: str = "breed") -> dict[str, str]:
    """A Kaggle-style dataset of real JPEGs: flat ``train/<id>.jpg`` + ``labels.csv`` (``id,<label_column>``),
    a flat unlabeled ``test/<id>.jpg`` and ``sample_submission.csv`` (``id`` + one column per class).

    Images are tinted per class like :func:`make_imagefolder`'s. Ids are opaque hex strings, so the
    class cannot be read from a file name. Returns the held-back truth of the test images, by id.
    """
    import csv
    import hashlib

    classes = sorted(set(train) | set(test))
    truth, rows, n = {}, [], 0
    for part, counts in (("train", train), ("test", test)):
        for cls, count in sorted(counts.items()):
            label = classes.index(cls)
            for _ in range(count):
                image_id = hashlib.sha1(f"{seed}-{n}".encode()).hexdigest()[:10]
                rng = np.random.default_rng(seed + n)
                arr = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                arr[..., label % 3] = 255 - label * 60
                path = os.path.join(root, part, f"{image_id}.jpg")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(arr).save(path, quality=90)
                if part == "train":
                    rows.append((image_id, cls))
                else:
                    truth[image_id] = cls
                n += 1
    with open(os.path.join(root, "labels.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", label_column])
        writer.writerows(sorted(rows))
    with open(os.path.join(root, "sample_submission.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id"] + classes)
        for image_id in sorted(truth):
            writer.writerow([image_id] + [f"{1 / len(classes):.4f}"] * len(classes))
    return truth


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[str, str, str]:
    """Generated JPEGs -> tiny_cnn features -> logreg head -> MODEL_DIR, through the real fuse command
    (with model.onnx when the onnx extra is installed; its output is in ``fuse.log`` beside MODEL_DIR).

    Returns ``(data_root, head_dir, model_dir)``; copy MODEL_DIR before changing it.
    """
    from features.extract import ExtractConfig, extract
    from pipeline.train_head import HeadConfig, train_head

    root = tmp_path_factory.mktemp("tiny_model")
    data = make_imagefolder(str(root / "data"), {"train": {"ants": 12, "bees": 12}, "val": {"ants": 6, "bees": 6}})
    feats = str(root / "f.h5")
    # fp32 on every CPU: the exported model (fp32) must reproduce the head's accuracy exactly.
    extract(ExtractConfig(data_root=data, out_path=feats, backbone="tiny_cnn", weights="none", precision="fp32",
                          progress=False))
    head = str(root / "head")
    train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    model_dir = str(root / "model")
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", model_dir, "--quiet")
    assert r.returncode == 0, r.stderr
    (root / "fuse.log").write_text(r.stdout)
    return data, head, model_dir
