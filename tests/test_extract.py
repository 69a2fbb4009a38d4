"""Extraction end to end on generated data: store contract, views, bad files, resume, CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from features.extract import ExtractConfig, ExtractionError, ExtractSummary, SplitSummary, extract
from features.store import SCHEMA_VERSION, FeatureFile, FeatureFileError, PARTIAL_SUFFIX
from tests.conftest import REPO, assert_resumed, make_imagefolder, run_cli, write_image
from features.journal import committed_images
from tests.waiting import wait_for_committed


def _extract(data, out, **kw):
    return extract(ExtractConfig(data_root=data, out_path=out, backbone=kw.pop("backbone", "tiny_cnn"),
                                 weights=kw.pop("weights", "none"), progress=False, **kw))


def test_store_round_trip_and_metadata(small_dataset, tmp_path):
    out = str(tmp_path / "f.h5")
    summary = _extract(small_dataset, out, batch_size=4)
    assert summary.status == "written" and not os.path.exists(out + PARTIAL_SUFFIX)
    with FeatureFile(out) as f:
        assert f.classes == ["a", "b", "c"] and f.splits == ["train", "val"] and f.feature_dim == 32
        assert json.loads(f.attrs["preprocessing"])["crop_size"] == 32
        assert {"tlcache", "torch", "torchvision"} <= set(json.loads(f.attrs["versions"]))
        train, val = f.read_split("train"), f.read_split("val")
    assert train.features.shape == (18, 32) and train.features.dtype == np.float32
    assert val.features.shape == (9, 32) and np.isfinite(val.features).all()
    assert list(train.labels) == [0] * 6 + [1] * 6 + [2] * 6
    assert train.paths[0] == "train/a/img_000.jpg" and (train.view == 0).all()
    with h5py.File(out, "r") as h5:
        assert h5["train/features"].chunks[0] == 256 and h5.attrs["complete"]


def test_the_recorded_batch_is_reported_and_a_malformed_one_ignored(small_dataset, tmp_path):
    out = str(tmp_path / "f.h5")
    _extract(small_dataset, out, batch_size=5)
    assert _extract(small_dataset, out).batch_size == 5  # nothing to do: the file's batch, not the default
    with h5py.File(out, "a") as h5:  # informative only, outside the attributes' checksum
        h5.attrs["batch_size"] = "five"
    again = _extract(small_dataset, out, batch_size=3)
    assert again.status == "nothing to do" and again.batch_size == 3


def test_float16_storage(small_dataset, tmp_path):
    out = str(tmp_path / "f16.h5")
    _extract(small_dataset, out, dtype="float16")
    with h5py.File(out, "r") as h5:
        assert h5["val/features"].dtype == np.float16


def test_views_are_marked_and_deterministic(small_dataset, tmp_path):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    _extract(small_dataset, a, views=2, batch_size=5, precision="fp32")  # fp32: bf16 rounding can depend on the batch
    _extract(small_dataset, b, views=2, batch_size=3, precision="fp32")
    with FeatureFile(a) as fa, FeatureFile(b) as fb:
        ta, tb, va = fa.read_split("train"), fb.read_split("train"), fa.read_split("val")
        assert fa.config["views"] == 2 and fa.config["views_split"] == "train"
    assert ta.features.shape[0] == 18 * 3 and list(ta.view[:6]) == [0, 1, 2, 0, 1, 2]
    assert list(ta.image_index[:6]) == [0, 0, 0, 1, 1, 1]
    assert va.features.shape[0] == 9 and (va.view == 0).all()  # views only for the training split
    assert not np.allclose(ta.features[0], ta.features[1])  # an augmented view differs from the centre crop
    np.testing.assert_allclose(ta.features, tb.features, atol=1e-5)  # same crops, any batch size
    np.testing.assert_array_equal(ta.clean().image_index, np.arange(18))


def test_bad_files_are_skipped_with_reasons(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    (tmp_path / "d/train/a/empty.jpg").write_bytes(b"")
    (tmp_path / "d/train/a/notes.jpg").write_text("not an image")
    good = open(os.path.join(root, "train/b/img_000.jpg"), "rb").read()
    (tmp_path / "d/train/b/truncated.jpg").write_bytes(good[: len(good) // 3])
    write_image(str(tmp_path / "d/train/b/gray.png"), 5, mode="L")
    write_image(str(tmp_path / "d/val/b/anim.gif"), 6, mode="P", fmt="GIF")
    out = str(tmp_path / "f.h5")
    summary = _extract(root, out)
    reasons = {p: r for s in summary.splits for p, r in s.skipped}
    assert set(reasons) == {"train/a/empty.jpg", "train/a/notes.jpg", "train/b/truncated.jpg"}
    assert "empty file" in reasons["train/a/empty.jpg"] and "not a recognised" in reasons["train/a/notes.jpg"]
    with FeatureFile(out) as f:
        train = f.read_split("train")
        assert train.features.shape[0] == 7 and "train/b/gray.png" in set(train.paths)
        assert {p for p, _ in train.skipped} == set(reasons)
        assert "val/b/anim.gif" in set(f.read_split("val").paths)
    assert any("skipped train/a/empty.jpg: empty file" in line for line in summary.lines())


def test_every_decode_mode_gives_the_same_rows(tmp_path):
    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 7, "b": 6}, "val": {"a": 3, "b": 3}})
    (tmp_path / "d/train/a/notes.jpg").write_text("not an image")
    files = {}
    for decode in ("turn", "pool", "thread"):
        files[decode] = str(tmp_path / f"{decode}.h5")
        _extract(root, files[decode], views=2, batch_size=4, decode=decode)
    with FeatureFile(files["turn"]) as a:
        assert [path for path, _ in a.read_split("train").skipped] == ["train/a/notes.jpg"]
        for other in ("pool", "thread"):
            with FeatureFile(files[other]) as b:
                for split in a.splits:
                    x, y = a.read_split(split), b.read_split(split)
                    np.testing.assert_array_equal(x.features, y.features)  # views too: same seeds, same crops
                    np.testing.assert_array_equal(x.image_index, y.image_index)
                    assert x.skipped == y.skipped and list(x.paths) == list(y.paths)
    for decode in ("pool", "thread"):
        with pytest.raises(ValueError, match="applies without --workers"):
            _extract(root, str(tmp_path / "both.h5"), decode=decode, workers=1)
    with pytest.raises(ValueError, match="--batch-size >= 1"):
        _extract(root, str(tmp_path / "zero.h5"), batch_size=0)


def test_slow_decoding_shows_as_waiting_and_only_there(tmp_path, monkeypatch):
    import features.extract as extract_module

    root = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 2}})
    pause, read = 0.02, extract_module.ImageRows.__getitem__

    def slow_read(self, i):  # every image takes at least `pause` to read
        time.sleep(pause)
        return read(self, i)

    monkeypatch.setattr(extract_module.ImageRows, "__getitem__", slow_read)
    for decode, threads in (("turn", 1), ("pool", torch.get_num_threads())):
        summary = _extract(root, str(tmp_path / f"{decode}.h5"), batch_size=4, decode=decode)
        shown = "\n".join(summary.lines())
        for s in summary.splits:
            assert s.waiting_seconds >= pause * s.processed / threads  # the pauses land in the wait
            assert 0 < s.forward_seconds and s.waiting_seconds + s.forward_seconds <= s.seconds
            assert f"(waiting for decoded images {s.waiting_seconds:.1f} s, forward {s.forward_seconds:.1f} s)" in shown
    resumed = ExtractSummary("f.h5", "nothing to do", "tiny_cnn", "none", 32, "cpu", "fp32", 32, ["a", "b"],
                             splits=[SplitSummary("train", 8, 8, [], processed=0)])
    assert "waiting" not in "\n".join(resumed.lines())  # nothing processed: no parts to show


def test_a_batch_normalised_at_once_equals_each_image_normalised_alone(tmp_path):
    import torch
    from torchvision.transforms import v2

    from features.backbones import load_backbone

    prep = load_backbone("tiny_cnn", "none").preprocessing
    images = [prep.load(write_image(str(tmp_path / f"{i}.jpg"), i, size=(300 + 20 * i, 200))) for i in range(5)]
    one_by_one = v2.Compose([prep.eval_pixels(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)])
    batch = prep.normalise(torch.stack([prep.eval_pixels()(img) for img in images]))
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack([one_by_one(img) for img in images]))


def test_nothing_readable_is_an_error_and_leaves_no_file(tmp_path):
    (tmp_path / "d/a").mkdir(parents=True)
    (tmp_path / "d/a/x.jpg").write_bytes(b"")
    out = str(tmp_path / "f.h5")
    with pytest.raises(ExtractionError, match="no image"):
        _extract(str(tmp_path / "d"), out)
    assert not os.path.exists(out) and not os.path.exists(out + PARTIAL_SUFFIX)


def test_rerun_same_config_does_nothing_and_other_config_is_refused(small_dataset, tmp_path):
    out = str(tmp_path / "f.h5")
    _extract(small_dataset, out)
    before = os.path.getmtime(out)
    assert _extract(small_dataset, out).status == "nothing to do" and os.path.getmtime(out) == before
    with pytest.raises(FeatureFileError, match="--overwrite"):
        _extract(small_dataset, out, views=1)
    assert _extract(small_dataset, out, views=1, overwrite=True).status == "written"


def test_reader_refuses_incomplete_and_unknown_versions(small_dataset, tmp_path):
    out = str(tmp_path / "f.h5")
    _extract(small_dataset, out)
    with h5py.File(out, "r+") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(FeatureFileError, match="schema version"):
        FeatureFile(out)
    with h5py.File(out, "r+") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["complete"] = False
    with pytest.raises(FeatureFileError, match="incomplete"):
        FeatureFile(out)
    with h5py.File(str(tmp_path / "other.h5"), "w") as h5:
        h5["x"] = 1
    with pytest.raises(FeatureFileError, match="not a feature file"):
        FeatureFile(str(tmp_path / "other.h5"))


def _interrupt_then_resume(data, out, sig, extra, resume_batch=("--batch-size", "4")):
    """Interrupt a batch-4 run after two committed batches; resume it with ``resume_batch`` (empty: the default)."""
    args = [os.path.join(REPO, "run_extract.py"), "--data", data, "--out", out, "--quiet", *extra]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, *args, "--batch-size", "4"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    partial = out + PARTIAL_SUFFIX
    wait_for_committed(partial, "train", 8, proc)  # two batches of 160 images: most of the run is still ahead
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, "the run finished before it could be interrupted"
    assert os.path.exists(partial) and not os.path.exists(out)
    done = committed_images(partial, "train") + committed_images(partial, "val")
    assert 8 <= done < 160
    report = out + ".report.json"
    resumed = subprocess.run([sys.executable, *args, *resume_batch, "--report", report], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_resumed(resumed.stdout, os.path.dirname(out))
    with open(report, encoding="utf-8") as fh:
        record = json.load(fh)
    assert sum(s["processed"] for s in record["splits"]) == 160 - done  # only what was not committed
    return err, done, record


# Resumed with the same command; without --batch-size, which continues at the journal's batch (4),
# not the device default, so that the rows equal an uninterrupted batch-4 run's bit for bit; or with
# another explicit batch, which is used and said.
@pytest.mark.parametrize("sig, resume_batch, note", [
    (signal.SIGKILL, ("--batch-size", "4"), None),
    (signal.SIGINT, (), "continuing at batch 4, the batch this file was started with"),
    (signal.SIGKILL, ("--batch-size", "8"), "the rows written before were computed at batch 4, the rest at batch 8"),
])
def test_interrupted_run_resumes_to_the_same_rows(tmp_path, sig, resume_batch, note):
    data = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 60, "b": 60}, "val": {"a": 20, "b": 20}})
    extra = ["--backbone", "resnet18", "--weights", "none", "--views", "1"]
    err, done, record = _interrupt_then_resume(data, str(tmp_path / "cut.h5"), sig, extra, resume_batch)
    continued_at = 8 if "8" in resume_batch else 4
    assert record["batch_size"] == continued_at
    said = [n for n in record["notes"] if "continuing at batch" in n or "computed at batch" in n]
    assert len(said) == (1 if note else 0) and all(note in n for n in said), record["notes"]
    if sig == signal.SIGINT:
        assert "rerun the same command to resume" in err and "Traceback" not in err
    whole = run_cli("run_extract.py", "--data", data, "--out", str(tmp_path / "whole.h5"), "--quiet",
                    "--batch-size", "4", *extra)
    assert whole.returncode == 0, whole.stderr
    with FeatureFile(str(tmp_path / "cut.h5")) as cut, FeatureFile(str(tmp_path / "whole.h5")) as ref:
        assert cut.attrs["batch_size"] == ref.attrs["batch_size"] == 4  # the batch the file was started with
        for split in ("train", "val"):
            a, b = cut.read_split(split), ref.read_split(split)
            np.testing.assert_array_equal(a.paths, b.paths)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.view, b.view)
            np.testing.assert_array_equal(a.image_index, b.image_index)
            if continued_at == 4:
                np.testing.assert_array_equal(a.features, b.features)
            else:
                np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-5)
    rerun = run_cli("run_extract.py", "--data", data, "--out", str(tmp_path / "cut.h5"), *extra)  # default batch
    assert rerun.returncode == 0 and "nothing to do" in rerun.stdout and "batch 4" in rerun.stdout, rerun.stdout


def test_cli_one_line_errors(tmp_path, small_dataset):
    cases = [
        (["--data", str(tmp_path / "nope")], "does not exist"),
        (["--data", small_dataset, "--backbone", "resnet51"], "unknown backbone"),
        (["--data", small_dataset, "--out", str(tmp_path / "no_dir" / "f.h5")], "does not exist"),
        (["--data", small_dataset, "--out", "/proc/f.h5", "--backbone", "tiny_cnn", "--weights", "none"], "cannot create"),
        (["--data", small_dataset, "--backbone", "tiny_cnn", "--weights", str(tmp_path / "x.pth")], "does not exist"),
    ]
    for args, message in cases:
        r = run_cli("run_extract.py", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_offline_torchvision_weights_exit_2_with_remedies(tmp_path, small_dataset):
    r = run_cli("run_extract.py", "--data", small_dataset, "--backbone", "resnet50", "--out", str(tmp_path / "f.h5"),
                env={"TORCH_HOME": str(tmp_path / "torch_home")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--weights PATH" in r.stderr and "--weights none" in r.stderr and "internet" in r.stderr


def test_cli_resnet50_random_init_and_listing(tmp_path, small_dataset):
    out = str(tmp_path / "r50.h5")
    r = run_cli("run_extract.py", "--data", small_dataset, "--backbone", "resnet50", "--weights", "none",
                "--out", out, "--limit", "4")
    assert r.returncode == 0, r.stderr
    assert "2048-d" in r.stdout and "img/s" in r.stdout
    with FeatureFile(out) as f:
        assert f.read_split("train").features.shape == (4, 2048) and f.weights == "none"
    listing = run_cli("run_extract.py", "--list-backbones")
    assert listing.returncode == 0
    lite = next(line for line in listing.stdout.splitlines() if line.startswith("efficientnet_lite0 "))
    assert " yes " in lite and "_avg_pooling" in lite
    squeeze = next(line for line in listing.stdout.splitlines() if line.startswith("squeezenet1_0 "))
    assert "averaged over height and width" in squeeze
