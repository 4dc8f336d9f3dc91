"""PyTorch DDP under ``torchrun``: process-group setup and collective helpers (the deterministic
sharding of an epoch's windows over ranks: :func:`corticalrnn.data.epoch_batches`).

``torchrun`` (or ``srun`` + ``torchrun``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; without them everything runs as a single process (rank 0 of 1). Backend:
``nccl`` when training on CUDA, ``gloo`` on CPU. Only rank 0 writes files (checkpoints, logs,
figures); :attr:`DistInfo.is_main` says which process that is.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op when alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return info


def current() -> DistInfo:
    """The DistInfo of an already-initialised process group (rank 0 of 1 when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def shutdown() -> None:
    """Leave the process group if this process joined one. Unreachable objects that still hold it (a
    finished trainer's DDP wrapper in a reference cycle) are collected first, so the group is torn down
    here, while the interpreter is fully alive, not at exit."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (for stop decisions)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns the input when alone)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
