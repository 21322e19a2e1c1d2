"""Small shared types of a run: process-group facts, failures with exit codes, phase timers."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .contract import EXIT_BAD_CONFIG, EXIT_BAD_DATA, EXIT_OVER_BUDGET  # noqa: F401 - re-exported


class RunFailure(RuntimeError):
    """A run that cannot go on or finished outside the rules; `code` is the process exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def timed(phases: dict[str, float], name: str, sync: bool):
    """Accumulate wall seconds of a phase; `sync` waits for queued CUDA work so the time is real."""
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    yield
    if sync:
        torch.cuda.synchronize()
    phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
