"""Step budget and LR schedule. Baseline: 20000 iterations, 1200 warmdown, 600 s wall-clock cap."""
from __future__ import annotations

from dataclasses import dataclass
from ._base import need


@dataclass(kw_only=True)
class ScheduleConfig:
    def validate(self) -> None:
        need(self.iterations > 0, f"schedule.iterations must be > 0, got {self.iterations}")
        need(self.warmdown_iters >= 0 and self.warmup_steps >= 0,
             "schedule.warmdown_iters and schedule.warmup_steps must be >= 0")
        need(0 <= self.warmdown_frac < 1, f"schedule.warmdown_frac must be in [0, 1), got {self.warmdown_frac}")
        need(0 <= self.min_lr <= 1, f"schedule.min_lr must be in [0, 1], got {self.min_lr}")
        need(self.max_wallclock_seconds >= 0,
             f"schedule.max_wallclock_seconds must be >= 0 (0 = no cap), got {self.max_wallclock_seconds}")

    iterations: int = 20000  # 9000 in #287/#317
    warmdown_iters: int = 1200  # LR decays linearly to 0 over the last warmdown_iters (or their est. time); 3000 #162..#317, 3500 #414/#549/#691
    warmdown_frac: float = 0.0  # > 0: warmdown over this fraction of iterations (or of the wall-clock cap) instead; 0 = off; 0.72 #1493, 0.85 #1855
    min_lr: float = 0.0  # floor on the LR multiplier: s = max(s, min_lr); 0 = off (baseline); 0.10 #1787
    warmup_steps: int = 20  # compile warm-up steps, rolled back afterwards (NOT an LR warm-up)
    max_wallclock_seconds: float = 600.0  # 0 = no cap; step-based warmdown (deterministic on CPU)
