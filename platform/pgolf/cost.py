"""What trials cost: prices, per-trial GPU/CPU seconds and dollars, worst-case and expected cost of a
plan, and the ledger that budget caps are enforced against.

Worst case is what the platform guarantees a trial cannot exceed: GPUs held x (the trial's own deadline
+ the grace for killing its process group). Expected is GPUs x (train cap + eval cap), what a record-
shaped run uses. No price means GPU-hours only: a dollar figure is never made up.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pgolf.trainers.config import ConfigError

GPU_ENV = "PGOLF_GPU_HOUR_USD"
CPU_ENV = "PGOLF_CPU_HOUR_USD"


class PriceError(ConfigError):
    """A bad price or cap; exits 2 like a bad experiment file."""


@dataclass(frozen=True)
class Prices:
    gpu_hour_usd: float | None = None
    cpu_hour_usd: float | None = None
    source: str = "none"

    @property
    def priced(self) -> bool:
        return self.gpu_hour_usd is not None or self.cpu_hour_usd is not None

    def usd(self, gpu_seconds: float, cpu_seconds: float) -> float | None:
        if not self.priced:
            return None
        return (gpu_seconds * (self.gpu_hour_usd or 0.0) + cpu_seconds * (self.cpu_hour_usd or 0.0)) / 3600.0

    def describe(self) -> str:
        if not self.priced:
            return (f"no price set: GPU-hours only (set [resources] gpu_hour_usd / cpu_hour_usd, ${GPU_ENV} or "
                    f"--gpu-hour-usd for dollars)")
        parts = [f"${self.gpu_hour_usd:g}/GPU-hour" if self.gpu_hour_usd is not None else "",
                 f"${self.cpu_hour_usd:g}/CPU-hour" if self.cpu_hour_usd is not None else ""]
        return f"price {' + '.join(p for p in parts if p)} ({self.source})"


def _price(value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise PriceError(f"{where} = {value!r}: expected a price in dollars per hour, e.g. 2.5") from None
    if not math.isfinite(x) or x < 0:
        raise PriceError(f"{where} = {value!r}: a price must be a finite number >= 0")
    return x


def resolve_prices(resources: Any = None, *, gpu_hour_usd: float | None = None, cpu_hour_usd: float | None = None,
                   env: Mapping[str, str] | None = None, file: str = "the experiment file") -> Prices:
    """Per kind of hour: the command line wins, then $PGOLF_GPU_HOUR_USD / $PGOLF_CPU_HOUR_USD, then
    [resources] gpu_hour_usd / cpu_hour_usd of the file (0 there = not set)."""
    env = os.environ if env is None else env
    out: dict[str, float | None] = {}
    sources = []
    for kind, cli, var in (("gpu", gpu_hour_usd, GPU_ENV), ("cpu", cpu_hour_usd, CPU_ENV)):
        key = f"{kind}_hour_usd"
        from_file = getattr(resources, key, 0.0) if resources is not None else 0.0
        if cli is not None:
            out[key], src = _price(cli, f"--{kind}-hour-usd"), f"--{kind}-hour-usd"
        elif env.get(var, "").strip():
            out[key], src = _price(env[var], f"${var}"), f"${var}"
        elif from_file:
            out[key], src = _price(from_file, f"{file}: [resources] {key}"), f"[resources] {key}"
        else:
            out[key], src = None, ""
        if src:
            sources.append(src)
    return Prices(out["gpu_hour_usd"], out["cpu_hour_usd"], ", ".join(sources) or "none")


def trial_metrics(gpus: float, cpus: float, wall_seconds: float, prices: Prices) -> dict[str, float]:
    """The cost metrics every trial logs: resources held x the trial's own wall time (failures included)."""
    gpu_s, cpu_s = float(gpus) * wall_seconds, float(max(cpus, 1)) * wall_seconds
    out = {"cost/gpu_seconds": gpu_s, "cost/cpu_seconds": cpu_s}
    usd = prices.usd(gpu_s, cpu_s)
    if usd is not None:
        out["cost/usd"] = usd
    return out


# --------------------------------------------------------------------------------------------------
# plans


def worst_seconds(deadline_seconds: float) -> float:
    from pgolf.trainer_process import TERM_GRACE_SECONDS
    return float(deadline_seconds) + TERM_GRACE_SECONDS


def expected_seconds(budget: Any) -> float:
    return float(budget.train_seconds + budget.eval_seconds)


@dataclass(frozen=True)
class TrialCost:
    """One trial's cost at a number of seconds (worst case or expected)."""
    gpu_seconds: float
    cpu_seconds: float
    usd: float | None

    @classmethod
    def of(cls, gpus: float, cpus: float, seconds: float, prices: Prices) -> TrialCost:
        g, c = float(gpus) * seconds, float(max(cpus, 1)) * seconds
        return cls(g, c, prices.usd(g, c))

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0


def fmt_hours(gpu_seconds: float) -> str:
    return f"{gpu_seconds / 3600.0:.3f}"


def fmt_usd(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:,.2f}"


def fmt_wall(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def wall_seconds(n_trials: int, concurrency: int, per_trial: float) -> float:
    """Trials of equal length in waves of `concurrency`."""
    return math.ceil(n_trials / max(concurrency, 1)) * per_trial if n_trials else 0.0


# --------------------------------------------------------------------------------------------------
# budget caps


@dataclass
class Ledger:
    """Spend against --max-gpu-hours / --max-usd. A trial starts only when its worst case fits in what is
    left after the actual spend of finished trials and the worst case reserved by running ones, so the
    cap holds even if every running trial runs to its deadline. A running trial is never stopped."""
    max_gpu_hours: float | None = None
    max_usd: float | None = None
    spent_gpu_s: float = 0.0
    spent_usd: float = 0.0
    reserved: dict[str, TrialCost] = field(default_factory=dict)

    def __post_init__(self):
        for name, v in (("--max-gpu-hours", self.max_gpu_hours), ("--max-usd", self.max_usd)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise PriceError(f"{name} {v!r}: expected a number >= 0")

    @property
    def capped(self) -> bool:
        return self.max_gpu_hours is not None or self.max_usd is not None

    def _left(self) -> tuple[float, float]:
        held_g = sum(c.gpu_seconds for c in self.reserved.values())
        held_u = sum(c.usd or 0.0 for c in self.reserved.values())
        g = math.inf if self.max_gpu_hours is None else self.max_gpu_hours * 3600.0 - self.spent_gpu_s - held_g
        u = math.inf if self.max_usd is None else self.max_usd - self.spent_usd - held_u
        return g, u

    def check(self, worst: TrialCost) -> str:
        """"start", "wait" (running trials hold the room; ask again when one ends) or "never"."""
        if self.max_usd is not None and worst.usd is None:
            raise PriceError("--max-usd needs a price: set [resources] gpu_hour_usd / cpu_hour_usd, "
                             f"${GPU_ENV} / ${CPU_ENV} or --gpu-hour-usd / --cpu-hour-usd")
        g, u = self._left()
        eps = 1e-9
        if worst.gpu_seconds <= g + eps and (worst.usd or 0.0) <= u + eps:
            return "start"
        return "wait" if self.reserved else "never"

    def start(self, key: str, worst: TrialCost) -> None:
        self.reserved[key] = worst

    def finish(self, key: str, gpu_seconds: float, usd: float | None) -> None:
        self.reserved.pop(key, None)
        self.spent_gpu_s += gpu_seconds
        self.spent_usd += usd or 0.0

    def left_text(self) -> str:
        g, u = self._left()
        parts = []
        if self.max_gpu_hours is not None:
            parts.append(f"{max(g, 0.0) / 3600.0:.3f} of {self.max_gpu_hours:g} GPU-hours left")
        if self.max_usd is not None:
            parts.append(f"${max(u, 0.0):,.2f} of ${self.max_usd:,.2f} left")
        return ", ".join(parts)


def sum_costs(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Parent-run sums from trial rows with "status" and cost metrics: useful (FINISHED) vs failed/killed."""
    out = {"cost/gpu_seconds": 0.0, "cost/gpu_seconds_useful": 0.0, "cost/gpu_seconds_failed": 0.0,
           "cost/cpu_seconds": 0.0}
    usd = {"cost/usd": 0.0, "cost/usd_useful": 0.0, "cost/usd_failed": 0.0}
    priced = False
    for r in rows:
        ok = r.get("status") == "FINISHED"
        g = float(r.get("cost/gpu_seconds") or 0.0)
        out["cost/gpu_seconds"] += g
        out["cost/cpu_seconds"] += float(r.get("cost/cpu_seconds") or 0.0)
        out["cost/gpu_seconds_useful" if ok else "cost/gpu_seconds_failed"] += g
        if r.get("cost/usd") is not None:
            priced = True
            u = float(r["cost/usd"])
            usd["cost/usd"] += u
            usd["cost/usd_useful" if ok else "cost/usd_failed"] += u
    return {**out, **(usd if priced else {})}
