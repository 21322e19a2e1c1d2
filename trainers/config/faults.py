"""Injected faults, for the platform's reliability tests only (all off by default)."""
from __future__ import annotations

from dataclasses import dataclass
from ._base import need


@dataclass(kw_only=True)
class FaultConfig:
    def validate(self) -> None:
        for key in ("raise_at_step", "sigkill_at_step", "hang_at_step", "pad_artifact_bytes"):
            need(getattr(self, key) >= 0, f"faults.{key} must be >= 0 (0 = off), got {getattr(self, key)}")

    raise_at_step: int = 0  # raise RuntimeError after this training step
    sigkill_at_step: int = 0  # the trainer SIGKILLs itself after this step (a hard crash, no cleanup)
    hang_at_step: int = 0  # sleep forever after this step (the trial's deadline must end it)
    pad_artifact_bytes: int = 0  # add this many bytes to the model blob (pushes it over the cap)
