"""torch.compile in extraction: the rule of --compile auto, equal rows, chunks and padding, and a failed compile."""

import numpy as np
import pytest
import torch

from features.compiling import CPU_SPEEDUP, CPU_WARMUP_SECONDS, compile_pays
from features.extract import ExtractConfig, extract
from features.store import FeatureFile
from tests.conftest import make_imagefolder, run_cli

CPU = torch.device("cpu")


def test_auto_compiles_only_when_the_forward_time_left_repays_the_warm_up():
    for precision in ("fp32", "bf16"):
        break_even = CPU_WARMUP_SECONDS / (1 - 1 / CPU_SPEEDUP[precision])
        assert compile_pays("auto", CPU, precision, break_even * 0.9)[0] is False
        chosen, note = compile_pays("auto", CPU, precision, break_even * 1.1)
        assert chosen is True and note.startswith("compile: on (auto:")
    assert compile_pays("auto", torch.device("cuda"), "fp16", 1e6)[0] is False  # not measured there: stays eager
    assert compile_pays("on", CPU, "fp32", 0.0) == (True, "compile: on (asked for)")
    assert compile_pays("off", CPU, "fp32", 1e6) == (False, "")
    with pytest.raises(ValueError, match="auto, on or off"):
        compile_pays("sometimes", CPU, "fp32", 1.0)


def _rows(path):
    with FeatureFile(path) as f:
        return {split: f.read_split(split) for split in f.splits}


def _assert_same_rows(path, reference, counts):
    ours, theirs = _rows(path), _rows(reference)
    for split, rows in theirs.items():
        assert len(ours[split].features) == len(rows.features) == counts[split]
        np.testing.assert_allclose(ours[split].features, rows.features, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(ours[split].image_index, rows.image_index)


def _extract(root, out, compile_mode, batch_size):
    # On the CPU, where compile auto is measured: on a GPU machine auto would pick CUDA, where it stays off.
    return extract(ExtractConfig(data_root=root, out_path=out, backbone="tiny_cnn", weights="none",
                                 batch_size=batch_size, views=1, compile=compile_mode, device="cpu",
                                 precision="fp32", progress=False))


@pytest.fixture
def images(tmp_path):
    # 13 train images with 1 view each: batches hold several chunks, and the last one is short.
    return make_imagefolder(str(tmp_path / "d"), {"train": {"a": 7, "b": 6}, "val": {"a": 3, "b": 2}})


def test_compiled_extraction_gives_the_eager_rows_in_chunks_with_a_padded_last_one(images, tmp_path):
    eager = _extract(images, str(tmp_path / "off.h5"), "off", 4)
    compiled = _extract(images, str(tmp_path / "on.h5"), "on", 4)
    assert "compile: on (asked for)" in compiled.notes
    assert not any("torch.compile failed" in n for n in compiled.notes), compiled.notes  # it really ran compiled
    assert not any(n.startswith("compile") for n in eager.notes)
    _assert_same_rows(str(tmp_path / "on.h5"), str(tmp_path / "off.h5"), {"train": 26, "val": 5})


def test_auto_switches_to_the_compiled_model_mid_run_once_it_pays(images, tmp_path, monkeypatch):
    monkeypatch.setattr("features.compiling.CPU_WARMUP_SECONDS", 0.0)  # any forward time left now repays it
    _extract(images, str(tmp_path / "off.h5"), "off", 2)
    summary = _extract(images, str(tmp_path / "auto.h5"), "auto", 2)
    assert [n for n in summary.notes if n.startswith("compile")][0].startswith("compile: on (auto:"), summary.notes
    assert not any("torch.compile failed" in n for n in summary.notes), summary.notes
    _assert_same_rows(str(tmp_path / "auto.h5"), str(tmp_path / "off.h5"), {"train": 26, "val": 5})


def test_a_failed_compile_falls_back_to_eager_and_says_so(tmp_path):
    """A machine without a working C++ compiler: the run finishes eagerly, with a warning, exit 0."""
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    out = str(tmp_path / "f.h5")
    env = {"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    r = run_cli("run_extract.py", "--data", root, "--backbone", "tiny_cnn", "--weights", "none", "--compile", "on",
                "--out", out, "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert "warning: torch.compile failed" in r.stdout and "extracted eagerly instead" in r.stdout, r.stdout
    plain = str(tmp_path / "plain.h5")
    assert run_cli("run_extract.py", "--data", root, "--backbone", "tiny_cnn", "--weights", "none", "--compile", "off",
                   "--out", plain, "--quiet").returncode == 0
    for split, rows in _rows(plain).items():
        np.testing.assert_array_equal(_rows(out)[split].features, rows.features)
