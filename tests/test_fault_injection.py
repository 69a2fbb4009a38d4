"""A sample of the fault-injection campaign (``make faults`` runs 200): one fault of every kind."""

import random

from benchmarks.faults import READER_KINDS, READERS, WRITER_KINDS, run_campaign


def test_one_fault_of_every_kind_ends_resumed_or_refused(tmp_path):
    n = len(WRITER_KINDS) + len(READER_KINDS) * len(READERS)
    seed = random.SystemRandom().randrange(10**6)  # a new sample each run; a failure names its seed to replay it
    outcomes = run_campaign(n, seed=seed, work=str(tmp_path), log=lambda *_: None)
    assert len(outcomes) == n
    failed = [f"{o.kind}: {o.result} {o.detail}" for o in outcomes if not o.ok]
    assert not failed, (f"replay: python benchmarks/faults.py --faults {n} --seed {seed}", failed)
    assert {o.kind for o in outcomes} >= set(WRITER_KINDS)
