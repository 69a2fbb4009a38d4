"""Everyday faults with real processes and real files: a second writer, a full disk, signals, damaged files."""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from features import journal
from features.locking import output_lock
from features.store import PARTIAL_SUFFIX, FeatureFile
from tests.conftest import REPO, assert_resumed, make_imagefolder, one_line_error, run_cli
from tests.waiting import wait_for_committed

EXTRACT = [sys.executable, os.path.join(REPO, "run_extract.py")]
ENV = dict(os.environ, PYTHONPATH=REPO)


def _args(data: str, out: str) -> list[str]:
    return ["--data", data, "--out", out, "--backbone", "resnet18", "--weights", "none", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_imagefolder(str(tmp_path_factory.mktemp("d")), {"train": {"a": 20, "b": 20}, "val": {"a": 6, "b": 6}})


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> str:
    """An uninterrupted run: every fault below must end in exactly these rows (tests only read it)."""
    out = str(tmp_path_factory.mktemp("ref") / "whole.h5")
    r = run_cli("run_extract.py", *_args(dataset, out))
    assert r.returncode == 0, r.stderr
    return out


def assert_same_rows(path: str, reference: str) -> None:
    with FeatureFile(path) as a, FeatureFile(reference) as b:
        assert a.verify() == b.verify()
        for split in b.splits:
            x, y = a.read_split(split), b.read_split(split)
            for column in ("paths", "labels", "image_index", "view"):
                np.testing.assert_array_equal(getattr(x, column), getattr(y, column))
            np.testing.assert_allclose(x.features, y.features, rtol=1e-4, atol=1e-5)
            assert x.skipped == y.skipped


def test_second_writer_is_refused_and_the_first_finishes(dataset, reference, tmp_path):
    out = str(tmp_path / "f.h5")
    first = subprocess.Popen([*EXTRACT, *_args(dataset, out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    wait_for_committed(out + PARTIAL_SUFFIX, "train", 4, first)
    first.send_signal(signal.SIGSTOP)  # a writer that is still busy, however fast this machine is
    try:
        second = run_cli("run_extract.py", *_args(dataset, out))
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    one_line_error(second.stderr, f"being written by pid {first.pid} on ")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_same_rows(out, reference)
    assert not os.path.exists(out + ".lock"), "the lock file is removed on release"


def _refused_while_locked(target: str, *command: str) -> None:
    with output_lock(target):
        r = run_cli(*command)
    assert r.returncode == 2
    one_line_error(r.stderr, f"being written by pid {os.getpid()}")
    assert not os.path.exists(target)


def test_held_lock_refuses_heads_and_models_too(tmp_path, reference):
    head, model = str(tmp_path / "head"), str(tmp_path / "model")
    train_head = ("run_head.py", "--features", reference, "--out", head, "--C", "1")
    _refused_while_locked(head, *train_head)
    assert run_cli(*train_head).returncode == 0
    _refused_while_locked(model, "-m pipeline.fuse", "--head", head, "--out", model, "--no-onnx", "--quiet")


def _limited(limit: int):
    def preexec():  # SIGXFSZ ignored (Python does so too) so writes past the limit fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_full_disk_while_extracting_ends_cleanly_and_resumes(dataset, reference, tmp_path):
    out = str(tmp_path / "f.h5")
    cut = subprocess.run([*EXTRACT, *_args(dataset, out)], env=ENV, capture_output=True, text=True, timeout=300,
                         preexec_fn=_limited(60_000))
    assert cut.returncode == 4
    one_line_error(cut.stderr, f"cannot write {out}.partial", "File too large (EFBIG)", "rerun the same command")
    state = journal.scan(out + PARTIAL_SUFFIX)
    assert 0 < state.done_images("train") < 40 and state.torn_bytes == 0 and not os.path.exists(out)
    resumed = run_cli("run_extract.py", *_args(dataset, out))
    assert resumed.returncode == 0, resumed.stderr
    assert_resumed(resumed.stdout, str(tmp_path))
    assert_same_rows(out, reference)


def test_full_disk_while_converting_keeps_the_journal(dataset, reference, tmp_path):
    out = str(tmp_path / "f.h5")
    limit = os.path.getsize(reference) - 1  # the journal fits, the HDF5 file does not
    cut = subprocess.run([*EXTRACT, *_args(dataset, out)], env=ENV, capture_output=True, text=True, timeout=300,
                         preexec_fn=_limited(limit))
    assert cut.returncode == 4, cut.stderr
    one_line_error(cut.stderr, f"cannot write {out}.writing", "File too large")
    state = journal.scan(out + PARTIAL_SUFFIX)
    assert state.done_splits == {"train", "val"} and not os.path.exists(out)
    assert not os.path.exists(out + ".writing"), "the half-written HDF5 file is removed"
    resumed = run_cli("run_extract.py", *_args(dataset, out))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_rows(out, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_between_batches(dataset, reference, tmp_path, sig):
    out = str(tmp_path / "f.h5")
    proc = subprocess.Popen([*EXTRACT, *_args(dataset, out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_committed(out + PARTIAL_SUFFIX, "train", 8, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    one_line_error(err, "interrupted; rerun the same command to resume")
    state = journal.scan(out + PARTIAL_SUFFIX)
    assert state.torn_bytes == 0, "the stop came between two batches, not inside a write"
    assert 8 <= state.done_images("train") < 40
    resumed = run_cli("run_extract.py", *_args(dataset, out))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_rows(out, reference)


def _mapped(pid: int, library: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as fh:
            return library in fh.read()
    except OSError:
        return False


def test_ctrl_c_while_the_command_loads_torch_is_one_line(dataset, tmp_path):
    """torch loads inside the command (after option parsing), where click would print "Aborted!" and exit 1."""
    out = str(tmp_path / "f.h5")
    proc = subprocess.Popen([*EXTRACT, *_args(dataset, out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while not _mapped(proc.pid, "libtorch"):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-800:])
    one_line_error(err, "interrupted")
    assert not os.path.exists(out)


def test_ctrl_c_once_the_file_is_written_changes_nothing(dataset, reference, tmp_path):
    """A Ctrl-C between the final rename and the end of the process: during the interpreter's
    teardown it used to print a traceback, or kill the process by SIGINT."""
    for attempt in range(5):  # the run must be caught after its rename and before its exit
        out = str(tmp_path / f"f{attempt}.h5")
        proc = subprocess.Popen([*EXTRACT, *_args(dataset, out)], env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        while not os.path.exists(out) and proc.poll() is None:
            time.sleep(0.001)
        proc.send_signal(signal.SIGSTOP)
        caught = proc.poll() is None
        proc.send_signal(signal.SIGINT)  # pending until it runs again
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
        if caught:
            break
    assert caught, "every run ended before it could be stopped after its rename"
    assert "Traceback" not in err, err[-800:]
    # The rename comes before the closing summary: a Ctrl-C that lands there is an interruption,
    # reported in one line (inside the extraction it adds how to resume: a rerun finds the file complete).
    assert proc.returncode in (0, 130), (proc.returncode, err)
    if proc.returncode == 130:
        one_line_error(err, "interrupted")
    assert_same_rows(out, reference)


def test_ctrl_c_pending_as_the_command_ends_is_dropped(tmp_path):
    """The moment the race above can pick, made certain: a real SIGINT arrives while Python has not yet
    run its handler, just before the command's end ignores SIGINT; the command's own exit code stands."""
    script = tmp_path / "ends.py"
    script.write_text(
        "import os, signal, click\n"
        "from features import entry\n"
        "swap, sent = signal.signal, []\n"
        "def swap_with_one_pending(signum, handler):\n"
        "    if handler is signal.SIG_IGN and not sent:\n"
        "        sent.append(signal.SIGINT)\n"
        "        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\n"
        "        os.kill(os.getpid(), signal.SIGINT)  # held until unblocked, then handled inside the swap\n"
        "        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
        "    return swap(signum, handler)\n"
        "entry.signal.signal = swap_with_one_pending\n"
        "@click.command()\n"
        "def done():\n"
        "    click.echo('finished')\n"
        "entry.run_command(done, [])\n")
    r = subprocess.run([sys.executable, str(script)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "finished\n", "")


def test_torn_and_damaged_journals(dataset, reference, tmp_path):
    out = str(tmp_path / "f.h5")
    proc = subprocess.Popen([*EXTRACT, *_args(dataset, out)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_committed(out + PARTIAL_SUFFIX, "train", 8, proc)
    proc.kill()
    proc.wait()
    with open(out + PARTIAL_SUFFIX, "ab") as fh:
        fh.write(b"REC1 half a record")  # what a kill inside a write leaves
    r = run_cli("run_extract.py", *_args(dataset, out))
    assert r.returncode == 0 and "cut 18 bytes" in r.stdout, r.stdout + r.stderr
    assert_same_rows(out, reference)

    other = str(tmp_path / "g.h5")
    with open(other + PARTIAL_SUFFIX, "wb") as fh:
        fh.write(b"not a journal at all")
    r = run_cli("run_extract.py", *_args(dataset, other))
    assert r.returncode == 0, r.stderr
    aside = [n for n in os.listdir(tmp_path) if n.startswith("g.h5.partial.damaged-")]
    assert len(aside) == 1 and f"moved it to {os.path.join(str(tmp_path), aside[0])}" in r.stdout
    assert_same_rows(other, reference)


def _damaged_copies(reference: str, tmp_path) -> dict[str, str]:
    size = os.path.getsize(reference)
    with h5py.File(reference, "r") as h5:
        feature_offset = h5["train/features"].id.get_chunk_info(0).byte_offset
    copies = {}
    with open(reference, "rb") as fh:
        classes_offset = fh.read().index(b'["a", "b"]') + 2  # the JSON class list, an attribute
    for kind in ("truncated", "flipped-features", "flipped-attribute", "flipped-signature", "empty"):
        path = str(tmp_path / f"{kind}.h5")
        shutil.copy(reference, path)
        with open(path, "r+b") as fh:
            if kind == "truncated":
                fh.truncate(size // 2)
            elif kind == "empty":
                fh.truncate(0)
            else:
                at = {"flipped-features": feature_offset + 1000, "flipped-attribute": classes_offset,
                      "flipped-signature": 1}[kind]
                fh.seek(at)
                byte = fh.read(1)[0]
                fh.seek(at)
                fh.write(bytes([byte ^ 0x10]))
        copies[kind] = path
    return copies


def test_damaged_feature_files_are_refused_by_every_reader(reference, tmp_path):
    head = str(tmp_path / "head")
    assert run_cli("run_head.py", "--features", reference, "--out", head, "--C", "1").returncode == 0
    for kind, path in _damaged_copies(reference, tmp_path).items():
        commands = [("run_extract.py", "verify", path),
                    ("run_head.py", "--features", path, "--out", str(tmp_path / f"h-{kind}"), "--C", "1"),
                    ("run_head.py", "--features", path, "--out", str(tmp_path / f"s-{kind}"), "--C", "1",
                     "--max-memory", "1K"),
                    ("run_head.py", "predict", "--head", head, "--features", path, "--split", "train")]
        for script, *args in commands:
            r = run_cli(script, *args)
            assert r.returncode == 2, (kind, args, r.stdout, r.stderr)
            one_line_error(r.stderr, "damaged feature file", path)
        assert not os.path.exists(tmp_path / f"h-{kind}")
    ok = run_cli("run_extract.py", "verify", reference)
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {reference} (train 40 rows, val 12 rows)")


def test_model_and_head_folders_appear_whole(reference, tmp_path):
    head = str(tmp_path / "head")
    os.makedirs(head + ".partial")  # left by a run that died
    (tmp_path / "head.partial" / "junk").write_text("x")
    r = run_cli("run_head.py", "--features", reference, "--out", head, "--C", "1")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(head + ".partial")
    assert {"head.json", "head.npz", "report.json"} <= set(os.listdir(head)) and "junk" not in os.listdir(head)
    model = str(tmp_path / "model")
    os.makedirs(model + ".partial")
    (tmp_path / "model.partial" / "junk").write_text("x")
    with FeatureFile(reference) as f:
        data = f.data_root
    r = run_cli("-m pipeline.fuse", "--head", head, "--out", model, "--data", data)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(model + ".partial")
    assert {"model.json", "model.pt2"} <= set(os.listdir(model)) and "junk" not in os.listdir(model)
    image = os.path.join(data, "val", "a", "img_000.jpg")
    assert run_cli("-m pipeline.predict", "--model", model, image).returncode == 0
    with open(os.path.join(model, "model.pt2"), "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0\0\0\0")
    r = run_cli("-m pipeline.predict", "--model", model, image)
    assert r.returncode == 2
    one_line_error(r.stderr, "damaged model folder", "does not match the SHA-256")


def test_a_ctrl_c_that_an_import_swallows_still_stops_the_run():
    """A library import with a bare ``except:`` can swallow the KeyboardInterrupt of a Ctrl-C pressed while it
    loads (once seen as a run that finished with exit 0); the request is remembered and stops the first batch."""
    code = (
        "import os, signal, time\n"
        "from features.interrupt import Interrupted, remember_interrupts, stop_between_batches\n"
        "remember_interrupts()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except:\n"  # what a careless import does
        "    pass\n"
        "with stop_between_batches() as stop:\n"
        "    try:\n"
        "        stop.check()\n"
        "        print('went on')\n"
        "    except Interrupted as exc:\n"
        "        print(exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "stopped by SIGINT after the last committed batch"
