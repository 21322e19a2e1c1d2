"""Step budget and LR schedule. Baseline: 20000 iterations, 1200 warmdown, 600 s wall-clock cap."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class ScheduleConfig:
    iterations: int = 20000  # 9000 in #287/#317
    warmdown_iters: int = 1200  # LR decays linearly to 0 over the last warmdown_iters (or their est. time); 3000 #162..#317, 3500 #414/#549/#691
    warmdown_frac: float = 0.0  # > 0: warmdown over this fraction of iterations (or of the wall-clock cap) instead; 0 = off; 0.72 #1493, 0.85 #1855
    min_lr: float = 0.0  # floor on the LR multiplier: s = max(s, min_lr); 0 = off (baseline); 0.10 #1787
    warmup_steps: int = 20  # compile warm-up steps, rolled back afterwards (NOT an LR warm-up)
    max_wallclock_seconds: float = 600.0  # 0 = no cap; step-based warmdown (deterministic on CPU)
