"""The process group: joining it, the collectives the run needs outside DDP, and leaving it. With one
process every helper is a no-op, so callers never test for a group themselves."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .context import EXIT_BAD_CONFIG, Dist, RunFailure


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RunFailure("run.device = 'cuda' but CUDA is not available", EXIT_BAD_CONFIG)
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return Dist(rank, world, local), device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(value: float, device: torch.device) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def leave_process_group() -> None:
    """After a successful run, all ranks leave together and tear the group down. A rank that exits
    with the group still alive while a peer is finishing (rank 0 writes the artifacts last) can die in
    the group's destructor: SIGABRT, "terminate called without an active exception", three times in
    about a dozen runs of the 2-process gloo test (tests/test_ddp.py) before this was added. Failed
    runs skip this: a barrier could wait on a peer that is stuck or gone."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
