"""The retrieval evaluation across ranks: which images are this rank's, gathering every rank's results, and joining
the process group under torchrun."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ...device import leave_process_group
from ...inference.loading import resolve_device

_GATHER_GROUP = None


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of ranks); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (on the CPU; shapes may differ), in rank order."""
    _, world = rank_and_world()
    if world == 1:
        return [tensor.cpu()]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, tensor.cpu(), group=_gather_group())
    return gathered


def _gather_group():
    """The group gathers travel in: the default one under gloo, else a gloo group made once (objects travel on the
    CPU, which NCCL and HCCL do not do)."""
    global _GATHER_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _GATHER_GROUP is None:
        _GATHER_GROUP = dist.new_group(backend="gloo")
    return _GATHER_GROUP


def leave() -> None:
    """The end of a run under torchrun: the gather group dropped, then the process group left and freed (see
    `leave_process_group`: gloo's worker threads still running at exit can abort a finished rank)."""
    global _GATHER_GROUP
    _GATHER_GROUP = None
    leave_process_group()


def image_slice(num_images: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of the images (sizes differ by at most one)."""
    return range(num_images * rank // world, num_images * (rank + 1) // world)


def setup_distributed(device: str) -> str:
    """Under torchrun (WORLD_SIZE > 1) join the process group; the device this process uses."""
    device = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    if device == "hpu":
        from ...device.gaudi import register_hccl_backend

        register_hccl_backend()
        dist.init_process_group("hccl")
        return device
    dist.init_process_group("gloo")
    return device
