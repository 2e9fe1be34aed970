"""Data parallel the torchrun way: the process group comes from the environment.

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set) the run joins
the default process group (nccl on GPU, gloo on CPU) through
``torch.distributed.init_process_group`` and wraps the model in
DistributedDataParallel; otherwise it is one process and nothing here does anything.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from sparsifiner.errors import SparsifinerError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(requested: Optional[str], local_rank: int = 0) -> torch.device:
    """"auto" (or None): the local rank's GPU when there is one, else the CPU."""
    if requested in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SparsifinerError("--device cuda was asked for but torch sees no GPU: use --device cpu")
    return device


@contextlib.contextmanager
def distributed_context(device: Optional[str] = None) -> Iterator[DistInfo]:
    """Join the torchrun process group if the environment names one; leave it on exit."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistInfo(device=pick_device(device))
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    try:
        yield DistInfo(world=world, rank=rank, local_rank=local_rank, device=dev)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel over ``module`` when the run has several processes."""
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a list of numbers over the processes (float64)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def no_sync(module: nn.Module, skip: bool):
    """DDP's no_sync() while accumulating gradients; a null context otherwise."""
    if skip and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()
