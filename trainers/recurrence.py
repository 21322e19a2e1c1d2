"""When depth recurrence switches on (#1394/#1493): at `model.loop_enable_frac` of training, measured
like the records as elapsed time over the cap (already shortened by the GPTQ reserve), or as steps over
`schedule.iterations` without a cap.

A model is built with its final, looped layer plan (what eval, quantization and TTT run); the trainer
starts it unlooped and flips it here. The warm-up runs both plans so both compiled graphs exist before
the clock starts, and the flip in the timed loop is a cache hit.
"""
from __future__ import annotations

from .config import ModelConfig, ScheduleConfig
from .model import set_looping


def training_frac(step: int, elapsed_ms: float, sched: ScheduleConfig) -> float:
    if sched.max_wallclock_seconds > 0:
        return elapsed_ms / (sched.max_wallclock_seconds * 1000.0)
    return step / max(sched.iterations, 1)


class LoopSwitch:
    def __init__(self, model, mcfg: ModelConfig, sched: ScheduleConfig):
        self.model, self.sched = model, sched
        self.active = mcfg.num_loops > 0 and mcfg.loop_enable_frac > 0
        self.enable_frac = mcfg.loop_enable_frac
        if self.active:
            set_looping(model, False)

    def warmup_plans(self) -> tuple[bool, ...]:
        """Looping states the compile warm-up runs through, ending unlooped."""
        return (False, True) if self.active else (False,)

    def set(self, on: bool) -> None:
        if self.active:
            set_looping(self.model, on)

    def due(self, step: int, elapsed_ms: float) -> bool:
        """True once, at the first step whose training fraction reaches loop_enable_frac; flips the model."""
        if not self.active or self.model.looping or training_frac(step, elapsed_ms, self.sched) < self.enable_frac:
            return False
        set_looping(self.model, True)
        return True

    def finish(self) -> None:
        """After training the model is evaluated, quantized and adapted in its looped plan."""
        self.set(True)
