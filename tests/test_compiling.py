"""torch.compile in extraction: the rule of --compile auto, equal rows, padding, and a failed compile."""

import numpy as np
import pytest
import torch

from features.compiling import CPU_SPEEDUP, CPU_WARMUP_SECONDS, compile_pays
from features.extract import ExtractConfig, extract
from features.store import FeatureFile
from tests.conftest import make_imagefolder, run_cli

CPU = torch.device("cpu")


def test_auto_compiles_only_when_the_forward_time_left_repays_the_warm_up():
    break_even = CPU_WARMUP_SECONDS / (1 - 1 / CPU_SPEEDUP)
    assert compile_pays("auto", CPU, break_even * 0.9)[0] is False
    chosen, note = compile_pays("auto", CPU, break_even * 1.1)
    assert chosen is True and note.startswith("compile: on (auto:")
    assert compile_pays("auto", torch.device("cuda"), 1e6)[0] is False  # not measured there: stays eager
    assert compile_pays("on", CPU, 0.0) == (True, "compile: on (asked for)")
    assert compile_pays("off", CPU, 1e6) == (False, "")
    with pytest.raises(ValueError, match="auto, on or off"):
        compile_pays("sometimes", CPU, 1.0)


def _rows(path):
    with FeatureFile(path) as f:
        return {split: f.read_split(split) for split in f.splits}


def test_compiled_extraction_gives_the_eager_rows_with_a_short_last_batch(tmp_path):
    # 7 + 6 train images in batches of 4 with 1 view: the last batch is short and padded.
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 7, "b": 6}, "val": {"a": 3, "b": 2}})
    files, summaries = {}, {}
    for mode in ("off", "on"):
        files[mode] = str(tmp_path / f"{mode}.h5")
        summaries[mode] = extract(ExtractConfig(data_root=root, out_path=files[mode], backbone="tiny_cnn",
                                                weights="none", batch_size=4, views=1, compile=mode, precision="fp32",
                                                progress=False))
    assert "compile: on (asked for)" in summaries["on"].notes
    assert not any(n.startswith("compile") for n in summaries["off"].notes)
    eager, compiled = _rows(files["off"]), _rows(files["on"])
    for split in eager:
        assert len(compiled[split].features) == len(eager[split].features) == {"train": 26, "val": 5}[split]
        np.testing.assert_allclose(compiled[split].features, eager[split].features, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(compiled[split].image_index, eager[split].image_index)


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
