"""Fault injection with real processes and real files: every fault must end resumed-identical or refused cleanly.

``python benchmarks/faults.py --faults 200 --out RELIABILITY.md`` (``make faults``) runs the
full campaign; ``tests/test_fault_injection.py`` runs a small sample of every kind.

Kinds of fault:

- ``kill -9`` of an extraction at a random moment (between or inside batches), and while
  the finished journal is converted to HDF5;
- SIGINT / SIGTERM at a random moment;
- a full disk at a random size, made with ``RLIMIT_FSIZE`` (writes past it fail with EFBIG);
- two extractions started at once on the same output;
- a truncated or bit-flipped copy of a complete file given to a reader (verify, head
  training, prediction on features).

After each writer fault the test reruns the same command without the fault. Outcomes:
``resumed identical`` (the file equals an uninterrupted run row for row),
``refused cleanly`` (exit 2 with a one-line ``error:``), ``read identical`` (a reader
found the damage harmless: checksums and rows match; for ``predict``, which reads one
split, its predictions equal the original file's), or a failure: a traceback, a corrupt
file marked complete, or rows or predictions that differ.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from features import journal  # noqa: E402
from features.store import PARTIAL_SUFFIX, FeatureFile, FeatureFileError  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=REPO)
WRITER_KINDS = ("kill9", "kill9-converting", "sigint", "sigterm", "full-disk", "concurrent")
READER_KINDS = ("truncated", "bit-flip")
READERS = ("verify", "head", "predict")


@dataclass
class Outcome:
    kind: str
    result: str  # "resumed identical", "refused cleanly", "read identical", "finished before the fault", or "FAILED: ..."
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.result.startswith("FAILED")


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def extract_args(data: str, out: str) -> list[str]:
    return _python(os.path.join(REPO, "run_extract.py"), "--data", data, "--out", out, "--backbone", "resnet18",
                   "--weights", "none", "--batch-size", "4", "--quiet")


def make_dataset(root: str) -> str:
    """40 generated JPEGs in two classes and two splits, plus one broken file (a recorded skip)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 16), ("val", 4)):
        for label, cls in enumerate(("a", "b")):
            folder = os.path.join(root, split, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                arr[..., label] = 255
                Image.fromarray(arr).save(os.path.join(folder, f"img_{i:03d}.jpg"), quality=90)
    with open(os.path.join(root, "train", "b", "broken.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def same_rows(path: str, reference: str) -> str:
    """Empty if ``path`` is a complete, verified file equal to ``reference`` row for row; else what differs."""
    try:
        with FeatureFile(path) as a, FeatureFile(reference) as b:
            a.verify()
            for split in b.splits:
                x, y = a.read_split(split), b.read_split(split)
                for column in ("paths", "labels", "image_index", "view"):
                    if not np.array_equal(getattr(x, column), getattr(y, column)):
                        return f"{split}/{column} differs"
                if not np.allclose(x.features, y.features, rtol=1e-4, atol=1e-5) or x.skipped != y.skipped:
                    return f"{split} features or skipped list differ"
    except FeatureFileError as exc:
        return f"not a usable file: {exc}"
    return ""


def _clean_error(stderr: str) -> bool:
    lines = stderr.strip().splitlines()
    return "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: ")


def _after_writer_fault(kind: str, cmd: list[str], out: str, reference: str, finished: bool, stderr: str) -> Outcome:
    """Check what the faulted run left, rerun the same command if it did not finish, and compare."""
    if "Traceback" in stderr:
        return Outcome(kind, "FAILED: traceback", stderr[-500:])
    if os.path.exists(out):  # whatever is at the final path must be the whole, verified result
        why = same_rows(out, reference)
        if why:
            return Outcome(kind, "FAILED: a file at the final path is not the whole result", why)
    if finished:
        return Outcome(kind, "finished before the fault")
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    if rerun.returncode != 0:
        return Outcome(kind, "FAILED: the rerun did not finish", rerun.stderr[-500:])
    why = same_rows(out, reference)
    return Outcome(kind, "FAILED: resumed file differs: " + why if why else "resumed identical")


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def writer_fault(kind: str, data: str, work: str, reference: str, run_seconds: float, rng: random.Random) -> Outcome:
    """Inject one fault of ``kind`` into an extraction into a fresh output under ``work``, then resume."""
    out = os.path.join(work, f"{kind}-{rng.randrange(10**9)}.h5")
    cmd = extract_args(data, out)
    if kind == "full-disk":
        limit = rng.randrange(1_000, int(os.path.getsize(reference) * 1.3))

        def preexec():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        first = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, preexec_fn=preexec)
        if first.returncode not in (0, 4) or (first.returncode == 4 and not _clean_error(first.stderr)):
            return Outcome(kind, f"FAILED: exit {first.returncode}", first.stderr[-500:])
        outcome = _after_writer_fault(kind, cmd, out, reference, first.returncode == 0, first.stderr)
        outcome.detail = f"limit {limit} bytes"
        return outcome
    if kind == "concurrent":
        procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        locked = [err for code, _, err in results if code == 2]
        if codes != [0, 2] or not all(_clean_error(e) and "being written by pid" in e for e in locked):
            if codes != [0, 0]:  # both may succeed if the second started after the first had finished
                return Outcome(kind, f"FAILED: exits {codes}", "".join(e for _, _, e in results)[-500:])
        why = same_rows(out, reference)
        return Outcome(kind, "FAILED: " + why if why else "refused cleanly" if codes == [0, 2] else "finished before the fault")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = out + PARTIAL_SUFFIX
    if kind == "kill9-converting":
        def converting() -> bool:
            try:
                return journal.scan(partial).done_splits == {"train", "val"}
            except (OSError, journal.JournalDamaged):
                return False
        _wait_for(converting, proc)
        time.sleep(rng.uniform(0, 0.05))
    else:
        time.sleep(rng.uniform(0, run_seconds))
    if proc.poll() is None:
        proc.send_signal({"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}.get(kind, signal.SIGKILL))
    _, err = proc.communicate(timeout=600)
    # A signal that arrives before the interpreter has set its handlers ends the process the default way
    # (nothing begun; what is on disk is still checked below). One after the work is done is ignored: exit 0.
    if kind in ("sigint", "sigterm") and proc.returncode not in (0, 130, -signal.SIGINT, -signal.SIGTERM):
        return Outcome(kind, f"FAILED: exit {proc.returncode}", err[-500:])
    if kind in ("sigint", "sigterm") and proc.returncode == 130 and not _clean_error(err):
        return Outcome(kind, "FAILED: not a one-line error", err[-500:])
    return _after_writer_fault(kind, cmd, out, reference, proc.returncode == 0, err)


def damaged_copy(reference: str, kind: str, work: str, rng: random.Random) -> tuple[str, str]:
    """A copy of ``reference`` cut at a random length or with one random bit flipped."""
    path = os.path.join(work, f"{kind}-{rng.randrange(10**9)}.h5")
    shutil.copy(reference, path)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        if kind == "truncated":
            at = rng.randrange(0, size)
            fh.truncate(at)
            return path, f"cut at {at} of {size} bytes"
        at = rng.randrange(0, size)
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ (1 << rng.randrange(8))]))
        return path, f"bit flipped at byte {at} of {size}"


def reader_fault(kind: str, reader: str, reference: str, head: str, work: str, rng: random.Random) -> Outcome:
    """Give a damaged copy to one reader: it must refuse it in one line, or read exactly the original."""
    path, where = damaged_copy(reference, kind, work, rng)
    command = _reader_command(reader, path, head, work, rng)
    r = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    label = f"{kind} -> {reader}"
    if "Traceback" in r.stderr or r.returncode < 0:
        return Outcome(label, f"FAILED: exit {r.returncode}, traceback or crash", where + ": " + r.stderr[-400:])
    if r.returncode == 2 and _clean_error(r.stderr):
        return Outcome(label, "refused cleanly", where)
    if r.returncode == 0 and reader == "predict":
        # It reads one split: damage elsewhere in the file is never read, so its output must be the original's.
        original = subprocess.run(_reader_command(reader, reference, head, work, rng), env=ENV, capture_output=True,
                                  text=True, timeout=600, check=True)
        same = r.stdout == original.stdout
        return Outcome(label, "read identical" if same else "FAILED: damage read as data: predictions differ", where)
    if r.returncode == 0:
        why = same_rows(path, reference)
        return Outcome(label, "FAILED: damage read as data: " + why if why else "read identical", where)
    return Outcome(label, f"FAILED: exit {r.returncode}", where + ": " + r.stderr[-400:])


def _reader_command(reader: str, path: str, head: str, work: str, rng: random.Random) -> list[str]:
    """The command with which ``reader`` reads the feature file ``path``."""
    return {
        "verify": _python(os.path.join(REPO, "run_extract.py"), "verify", path),
        "head": _python(os.path.join(REPO, "run_head.py"), "--features", path, "--C", "1", "--out",
                        os.path.join(work, f"head-{rng.randrange(10**9)}")),
        "predict": _python(os.path.join(REPO, "run_head.py"), "predict", "--head", head, "--features", path,
                           "--split", "train"),
    }[reader]


def run_campaign(n_faults: int, seed: int, work: str, log=print) -> list[Outcome]:
    """Inject ``n_faults`` faults, spread evenly over the writer and reader kinds; returns every outcome."""
    rng = random.Random(seed)
    data = make_dataset(os.path.join(work, "data"))
    reference = os.path.join(work, "reference.h5")
    started = time.perf_counter()
    subprocess.run(extract_args(data, reference), env=ENV, check=True, capture_output=True)
    run_seconds = time.perf_counter() - started
    head = os.path.join(work, "head")
    subprocess.run(_python(os.path.join(REPO, "run_head.py"), "--features", reference, "--C", "1", "--out", head),
                   env=ENV, check=True, capture_output=True)
    plan = [("writer", k, None) for k in WRITER_KINDS] + [("reader", k, r) for k in READER_KINDS for r in READERS]
    outcomes = []
    for i in range(n_faults):
        side, kind, reader = plan[i % len(plan)]
        if side == "writer":
            outcome = writer_fault(kind, data, work, reference, run_seconds, rng)
        else:
            outcome = reader_fault(kind, reader, reference, head, work, rng)
        outcomes.append(outcome)
        log(f"[{i + 1}/{n_faults}] {outcome.kind}: {outcome.result} {outcome.detail}".rstrip())
    return outcomes


def report(outcomes: list[Outcome], seconds: float, command: str) -> list[str]:
    """RELIABILITY.md: faults by kind and their outcomes."""
    table = collections.defaultdict(collections.Counter)
    for o in outcomes:
        table[o.kind][o.result] += 1
    results = sorted({o.result for o in outcomes})
    failed = [o for o in outcomes if not o.ok]
    lines = ["# Reliability", "",
             f"Generated by `{command}` on {dt.date.today().isoformat()} in {seconds / 60:.1f} minutes: "
             f"{len(outcomes)} faults injected into real processes and real files "
             "(see `benchmarks/faults.py` for how each is made).", "",
             f"**{len(outcomes) - len(failed)} of {len(outcomes)} faults ended well; {len(failed)} failed.** "
             "A failure is a traceback, a damaged or different file accepted as complete, or a rerun that "
             "does not finish.", "",
             "| fault | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for kind in sorted(table):
        lines.append(f"| {kind} | " + " | ".join(str(table[kind][r]) for r in results) + " |")
    lines += ["", "- *resumed identical*: the rerun of the same command produced a file equal, row for row, to an "
              "uninterrupted run;",
              "- *finished before the fault*: the run was already done when the fault came (the file is still checked);",
              "- *refused cleanly*: exit 2 with one `error:` line (a damaged file, or the second of two writers);",
              "- *read identical*: the damage fell where nothing is read (the file's checksums and rows still match; "
              "`predict` reads one split, and its predictions equal the original file's)."]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {o.kind}: {o.result} ({o.detail})" for o in failed]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(REPO, "RELIABILITY.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tlcache-faults-") as work:
        outcomes = run_campaign(args.faults, args.seed, work)
    command = f"python benchmarks/faults.py --faults {args.faults} --seed {args.seed}"
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(report(outcomes, time.perf_counter() - started, command)) + "\n")
    failed = sum(not o.ok for o in outcomes)
    print(f"wrote {args.out}: {len(outcomes) - failed} of {len(outcomes)} ended well")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
