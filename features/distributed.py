"""Extraction across several processes launched by ``torchrun``: shards, process group, merge order.

Each rank extracts a contiguous block of every split into its own shard file; rank 0
then streams the shards, in rank order, into the final file (see
:func:`features.store.merge_shards`). Contiguous blocks make that concatenation the
exact row order of a single-process run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.distributed as dist

# A rank that finishes its shard early waits at the barrier for the slowest one. If a
# rank dies, torchrun stops the others, so this only bounds a genuinely stuck run.
BARRIER_TIMEOUT = _dt.timedelta(hours=12)


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi-process run.

    Attributes
    ----------
    rank : int
        Global rank, 0 .. world_size - 1; rank 0 merges the shards.
    world_size : int
        Number of processes over all nodes.
    local_rank : int
        Rank on this node: the CUDA device this process uses.
    """

    rank: int
    world_size: int
    local_rank: int

    def block(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's contiguous block of ``n`` items (sizes differ by at most 1)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def path(self, out_path: str) -> str:
        """File this rank writes; the world size is in the name so runs of another size never mix."""
        return f"{out_path}.shard-{self.rank}-of-{self.world_size}"

    def all_paths(self, out_path: str) -> list[str]:
        """Every rank's shard file, in rank order."""
        return [Shard(r, self.world_size, 0).path(out_path) for r in range(self.world_size)]


def shard_from_env(environ: Mapping[str, str]) -> Shard | None:
    """The shard described by torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Returns ``None`` for a plain single-process run (no variables, or ``WORLD_SIZE=1``).

    Raises
    ------
    ValueError
        The variables are present but inconsistent.
    """
    if int(environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    try:
        shard = Shard(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise ValueError("WORLD_SIZE is set but RANK is missing or not a number; launch with torchrun") from None
    if not 0 <= shard.rank < shard.world_size:
        raise ValueError(f"RANK={shard.rank} is outside 0..{shard.world_size - 1}")
    return shard


def shard_device(shard: Shard, device: torch.device) -> torch.device:
    """One GPU per rank (``cuda:LOCAL_RANK``); CPU ranks share the machine's CPU."""
    if device.type != "cuda":
        return device
    if shard.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {shard.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                         "use --nproc_per_node <= the number of GPUs")
    torch.cuda.set_device(shard.local_rank)
    return torch.device("cuda", shard.local_rank)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the run's process group for the ``with`` block (gloo on CPU; gloo + nccl on CUDA).

    Only Python objects (timings) and a barrier cross ranks, and those always go
    through gloo; NCCL is registered for CUDA tensors so a CUDA run has both.
    Rendezvous details (``MASTER_ADDR``, ``MASTER_PORT``) come from torchrun's environment.
    """
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def gather_from_ranks(value):
    """Every rank's ``value``, in rank order (a barrier: it returns when all ranks have sent)."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values

