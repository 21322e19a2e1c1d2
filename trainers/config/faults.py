"""Injected faults, for the platform's reliability tests only (all off by default)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class FaultConfig:
    raise_at_step: int = 0  # raise RuntimeError after this training step
    sigkill_at_step: int = 0  # the trainer SIGKILLs itself after this step (a hard crash, no cleanup)
    hang_at_step: int = 0  # sleep forever after this step (the trial's deadline must end it)
    pad_artifact_bytes: int = 0  # add this many bytes to the model blob (pushes it over the cap)
