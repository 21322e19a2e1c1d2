"""Step budget and LR schedule. Baseline: 20000 iterations, 1200 warmdown, 600 s wall-clock cap."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class ScheduleConfig:
    iterations: int = 20000
    warmdown_iters: int = 1200  # LR decays linearly to 0 over the last warmdown_iters (or their est. time)
    warmup_steps: int = 20  # compile warm-up steps, rolled back afterwards (NOT an LR warm-up)
    max_wallclock_seconds: float = 600.0  # 0 = no cap; step-based warmdown (deterministic on CPU)
