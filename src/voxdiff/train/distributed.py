"""torchrun integration: process-group setup, rank helpers and metric reduction."""

from __future__ import annotations

import contextlib

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Rank, world size and device of this process (world 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, which alone logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def rank_device(requested: str = "auto") -> torch.device:
    """:func:`pick_device` for this process's ``LOCAL_RANK`` (0 when not under torchrun)."""
    return pick_device(requested, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar metrics over ranks (identity on one process)."""
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def barrier(info: DistInfo) -> None:
    """Synchronise ranks (no-op on one process)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        # No rank tears gloo down while another still uses it (that aborts the other rank).
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


def shard(items: list, part_id: int | None = None, num_parts: int | None = None) -> list:
    """The part of ``items`` this process handles: explicit parts, else by torchrun rank."""
    if num_parts is None:
        num_parts = int(os.environ.get("WORLD_SIZE", "1"))
        part_id = int(os.environ.get("RANK", "0"))
    if part_id is None or not 0 <= part_id < num_parts:
        raise ValueError(f"part id {part_id} not in [0, {num_parts})")
    return items[part_id::num_parts]
