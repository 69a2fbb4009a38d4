"""Extraction over 2 CPU processes launched by torchrun (gloo): merge, equality, kill and resume."""

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from features.distributed import Shard, shard_from_env
from features.store import PARTIAL_SUFFIX, FeatureFile
from tests.conftest import REPO, make_imagefolder, run_cli
from features.journal import committed_images
from tests.waiting import wait_for_committed

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _torchrun(*args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([*TORCHRUN, os.path.join(REPO, "run_extract.py"), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _assert_same_rows(path_a: str, path_b: str) -> None:
    with FeatureFile(path_a) as a, FeatureFile(path_b) as b:
        assert a.identity() == b.identity() and a.config == b.config
        for split in a.splits:
            x, y = a.read_split(split), b.read_split(split)
            for column in ("paths", "labels", "image_index", "view"):
                np.testing.assert_array_equal(getattr(x, column), getattr(y, column))
            assert x.skipped == y.skipped
            # fp32 on both sides; only the batch composition differs.
            np.testing.assert_allclose(x.features, y.features, rtol=1e-4, atol=1e-5)


def test_blocks_cover_every_item_once():
    for n in range(0, 23):
        for world in range(1, 6):
            blocks = [Shard(r, world, 0).block(n) for r in range(world)]
            assert [i for a, b in blocks for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1


def test_shard_from_env():
    assert shard_from_env({}) is None and shard_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert shard_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Shard(3, 4, 1)
    with pytest.raises(ValueError, match="RANK"):
        shard_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="outside"):
        shard_from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_two_processes_match_one_process_row_for_row(tmp_path):
    data = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 11, "b": 10}, "val": {"a": 4, "b": 5}})
    (tmp_path / "d" / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (tmp_path / "d" / "val" / "a" / "empty.png").write_bytes(b"")
    args = ["--data", data, "--backbone", "tiny_cnn", "--weights", "none", "--views", "2", "--batch-size", "4",
            "--precision", "fp32"]
    one = run_cli("run_extract.py", *args, "--out", str(tmp_path / "one.h5"), "--quiet")
    assert one.returncode == 0, one.stderr
    two = _torchrun(*args, "--out", str(tmp_path / "two.h5"))
    out, err = two.communicate(timeout=300)
    assert two.returncode == 0, err
    assert "2 processes; shards merged" in out and "rank 1: shard complete" in out
    assert not glob.glob(str(tmp_path / "two.h5.*")), "shard files are removed after the merge"
    _assert_same_rows(str(tmp_path / "one.h5"), str(tmp_path / "two.h5"))
    with FeatureFile(str(tmp_path / "two.h5")) as f:
        assert [p for p, _ in f.read_split("train").skipped] == ["train/b/broken.jpg"]
        assert f.read_split("train").features.shape == (21 * 3, 32)  # 21 readable images, 3 rows each
    again = _torchrun(*args, "--out", str(tmp_path / "two.h5"))
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "nothing to do" in out


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """PID of the torchrun worker with ``RANK=rank`` (a child of the launcher)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def _committed_in_shard(out: str, rank: int) -> int:
    """Images a 2-process run's shard already holds: all 65 once whole, else what its journal committed."""
    shard = f"{out}.shard-{rank}-of-2"
    if os.path.exists(shard):
        return 65
    partial = shard + PARTIAL_SUFFIX
    return committed_images(partial, "train") + committed_images(partial, "val") if os.path.exists(partial) else 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process through /proc")
def test_killed_rank_resumes_per_shard(tmp_path):
    data = make_imagefolder(str(tmp_path / "d"), {"train": {"a": 50, "b": 50}, "val": {"a": 15, "b": 15}})
    out = str(tmp_path / "f.h5")
    args = ["--data", data, "--backbone", "resnet18", "--weights", "none", "--batch-size", "2",
            "--precision", "fp32", "--out", out]
    run = _torchrun(*args)
    shard1 = out + ".shard-1-of-2" + PARTIAL_SUFFIX
    wait_for_committed(shard1, "train", 4, run)  # two of rank 1's 25 batches
    victim = _rank_pid(run.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    run.communicate(timeout=120)
    assert run.returncode != 0, "the run finished before rank 1 could be killed"
    assert not os.path.exists(out), "no final file after a failed rank"
    assert 4 <= committed_images(shard1, "train") < 50
    done = _committed_in_shard(out, 0) + _committed_in_shard(out, 1)

    report = str(tmp_path / "report.json")
    resumed = _torchrun(*args, "--report", report)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "could not be resumed" not in stdout + stderr and not glob.glob(out + "*.damaged-*")
    with open(report, encoding="utf-8") as fh:  # the ranks' counts, summed: each shard went on from where it stopped
        assert sum(s["processed"] for s in json.load(fh)["splits"]) == 130 - done
    single = run_cli("run_extract.py", *args[:-1], str(tmp_path / "one.h5"), "--quiet")
    assert single.returncode == 0, single.stderr
    _assert_same_rows(str(tmp_path / "one.h5"), out)
