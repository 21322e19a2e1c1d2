"""Record-track compliance verdicts for one seed and for a variant (all seeds of one config hash).

Input is the trainer's `result.json` content. Every rule is a named check with a detail string, so a
reviewer sees why a run is out, not only that it is. The mapping of timed phases to the train and eval
caps is data (`PhasePolicy`) so an experiment can change it without touching code.

Unproven is treated as failed: a run that did not record its artifact size, its timings, its TTT trace
verdict or whether validation data reached a training loader is not compliant. Hardware is the one
informational check: it decides `record_grade`, never `compliant`, so that CPU and single-GPU runs can
still be validated.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pgolf.formatting import json_safe as _plain
from pgolf.trainers.config import finite
from pgolf.trainers.contract import (ARTIFACT_BYTES, CAPS, EVAL_SECONDS, PHASE_POLICY, TRAIN_SECONDS,
                                     UNKNOWN_PHASE_CAP, seconds_by_cap)

__all__ = [
    "BUDGETS",
    "DEFAULT_PHASE_MAP",
    "DEFAULT_POLICY",
    "NO_TTT_MODES",
    "Caps",
    "Check",
    "PhasePolicy",
    "PhaseTotals",
    "SeedVerdict",
    "VariantVerdict",
    "check_seed",
    "check_variant",
    "eval_seconds",
    "hardware_class",
    "is_record_hardware",
    "train_seconds",
]

BUDGETS: tuple[str, ...] = CAPS

# One policy for trainer and platform: the trainer writes time/train_s and time/eval_s with it, and
# compliance re-derives them from the per-phase timings with the same table.
DEFAULT_PHASE_MAP: dict[str, str] = dict(PHASE_POLICY)

NO_TTT_MODES = frozenset({"", "off", "none", "disabled"})


# --------------------------------------------------------------------------------------------------
# phases -> budgets


@dataclass(frozen=True)
class PhaseTotals:
    train: float
    eval: float
    report_only: float
    unknown: list[str]  # phase names the policy does not know; counted under `PhasePolicy.unknown`

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass(frozen=True)
class PhasePolicy:
    """Which budget each timed phase counts against.

    Phases the policy has never heard of are charged to `unknown` ("eval" by default): a new pass that
    nobody classified should make a run look slower, never faster."""

    phases: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PHASE_MAP))
    unknown: str = UNKNOWN_PHASE_CAP

    def __post_init__(self) -> None:
        for name, budget in self.phases.items():
            if budget not in BUDGETS:
                raise ValueError(f"phase {name!r}: budget must be one of {BUDGETS}, got {budget!r}")
        if self.unknown not in BUDGETS:
            raise ValueError(f"unknown-phase budget must be one of {BUDGETS}, got {self.unknown!r}")
        object.__setattr__(self, "phases", dict(self.phases))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PhasePolicy:
        """Defaults overridden by `{"phases": {...}, "unknown": ...}` (e.g. an experiment's budget table)."""
        extra = set(d) - {"phases", "unknown"}
        if extra:
            raise ValueError(f"PhasePolicy: unknown keys {sorted(extra)}; expected 'phases' and 'unknown'")
        return cls(phases={**DEFAULT_PHASE_MAP, **dict(d.get("phases", {}))},
                   unknown=d.get("unknown", UNKNOWN_PHASE_CAP))

    def with_overrides(self, **phases: str) -> PhasePolicy:
        return PhasePolicy(phases={**self.phases, **phases}, unknown=self.unknown)

    def budget_of(self, phase: str) -> str:
        return self.phases.get(phase, self.unknown)

    def totals(self, phases: Mapping[str, float]) -> PhaseTotals:
        for name, seconds in phases.items():
            if finite(seconds) is None or seconds < 0:
                raise ValueError(f"phase {name!r}: seconds must be a finite number >= 0, got {seconds!r}")
        sums = seconds_by_cap({k: float(v) for k, v in phases.items()}, self.phases, self.unknown)
        unknown = [name for name in phases if name not in self.phases]
        return PhaseTotals(train=sums["train"], eval=sums["eval"], report_only=sums["report_only"],
                           unknown=sorted(unknown))

    def train_seconds(self, phases: Mapping[str, float]) -> float:
        return self.totals(phases).train

    def eval_seconds(self, phases: Mapping[str, float]) -> float:
        return self.totals(phases).eval

    def to_dict(self) -> dict[str, Any]:
        return {"phases": dict(self.phases), "unknown": self.unknown}


DEFAULT_POLICY = PhasePolicy()


def train_seconds(phases: Mapping[str, float], policy: PhasePolicy = DEFAULT_POLICY) -> float:
    return policy.train_seconds(phases)


def eval_seconds(phases: Mapping[str, float], policy: PhasePolicy = DEFAULT_POLICY) -> float:
    return policy.eval_seconds(phases)


# --------------------------------------------------------------------------------------------------
# caps and hardware


@dataclass(frozen=True)
class Caps:
    """Record-track limits; each passes at equality (the artifact cap is decimal bytes, not 16 MiB)."""

    artifact_bytes: int = 16_000_000
    train_seconds: float = 600.0
    eval_seconds: float = 600.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu_name(env: Mapping[str, Any]) -> str:
    name = str(env.get("gpu_name") or "").strip()
    if name.upper().startswith("NVIDIA "):
        name = name[len("NVIDIA "):]
    return " ".join(name.split())


def _gpu_count(env: Mapping[str, Any]) -> int:
    c = env.get("gpu_count")
    return int(c) if finite(c) is not None else 0


def _is_h100_sxm(name: str) -> bool:
    # SXM boards report "H100 80GB HBM3" (no "SXM" in the name); PCIe and NVL boards say so.
    u = name.upper()
    return "H100" in u and ("SXM" in u or "HBM3" in u) and "PCIE" not in u and "NVL" not in u


def hardware_class(env: Mapping[str, Any] | None) -> str:
    """A short comparable label: "8xH100 80GB HBM3", "1xA100-SXM4-80GB", "cpu" or "unknown".

    Seeds of one variant must share it: node speed changes the step count and with it the score."""
    if not env:
        return "unknown"
    count, name = _gpu_count(env), _gpu_name(env)
    if count <= 0 or not name:
        return "cpu" if count == 0 and str(env.get("device", "cpu")).startswith("cpu") else "unknown"
    return f"{count}x{name}"


def is_record_hardware(env: Mapping[str, Any] | None) -> bool:
    return bool(env) and _gpu_count(env) == 8 and _is_h100_sxm(_gpu_name(env))


# --------------------------------------------------------------------------------------------------
# verdicts


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: not applicable
    detail: str
    blocking: bool = True  # False: reported, but never decides `compliant`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reasons(checks: Sequence[Check]) -> list[str]:
    return [f"{c.name}: {c.detail}" for c in checks if c.blocking and c.passed is False]


class _Verdict:
    """What a seed verdict and a variant verdict share: compliant = no blocking check failed."""
    checks: list[Check]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def reasons(self) -> list[str]:
        return _reasons(self.checks)

    @property
    def compliant(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class SeedVerdict(_Verdict):
    seed: int | None
    config_hash: str | None
    checks: list[Check]
    hardware_class: str
    record_grade: bool
    train_seconds: float | None
    eval_seconds: float | None
    report_only_seconds: float | None
    unknown_phases: list[str]
    artifact_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return _plain({
            "seed": self.seed, "config_hash": self.config_hash, "compliant": self.compliant,
            "reasons": self.reasons, "record_grade": self.record_grade, "hardware_class": self.hardware_class,
            "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
            "report_only_seconds": self.report_only_seconds, "unknown_phases": list(self.unknown_phases),
            "artifact_bytes": self.artifact_bytes, "checks": [c.to_dict() for c in self.checks],
        })


def _int_or_none(x: Any) -> int | None:
    return int(x) if finite(x) is not None and float(x).is_integer() else None


def _artifact_check(result: Mapping[str, Any], caps: Caps) -> tuple[Check, int | None]:
    total = result.get(ARTIFACT_BYTES)
    if not (finite(total) is not None and float(total).is_integer() and total >= 0):
        return Check("artifact_under_cap", False, f"artifact/bytes missing or not a byte count: {total!r}"), None
    total = int(total)
    code, model = result.get("artifact/code_bytes"), result.get("artifact/model_bytes")
    parts = ""
    if finite(code) is not None and finite(model) is not None:
        parts = f" (code {int(code):,} + model {int(model):,})"
        # The total may exceed code + model (tokenizer, helper modules count too) but never undercut it.
        if total < code + model:
            return Check("artifact_under_cap", False,
                         f"artifact/bytes {total:,} is less than code + model {int(code + model):,}"), total
    ok = total <= caps.artifact_bytes
    rel = "<=" if ok else ">"
    return Check("artifact_under_cap", ok,
                 f"{total:,} bytes{parts} {rel} cap {caps.artifact_bytes:,} "
                 f"(headroom {caps.artifact_bytes - total:,})"), total


def _timing(result: Mapping[str, Any], policy: PhasePolicy) -> tuple[PhaseTotals | None, str | None, str]:
    """Totals from the per-phase timers when present (the policy is the authority), otherwise the trainer's
    own `time/train_s` / `time/eval_s`; the third value says which source was used."""
    phases = result.get("phases")
    if isinstance(phases, Mapping) and phases:
        try:
            return policy.totals(phases), None, "phases"
        except ValueError as e:
            return None, str(e), "phases"
    tr, ev = result.get(TRAIN_SECONDS), result.get(EVAL_SECONDS)
    if finite(tr) is not None and finite(ev) is not None:
        return PhaseTotals(train=float(tr), eval=float(ev), report_only=0.0, unknown=[]), None, "time/*_s"
    return None, "no phase timings recorded", "none"


def _time_check(name: str, seconds: float | None, cap: float, err: str | None, source: str,
                unknown: list[str]) -> Check:
    if seconds is None:
        return Check(name, False, err or "no timing recorded")
    ok = seconds <= cap
    detail = f"{seconds:.1f} s {'<=' if ok else '>'} cap {cap:g} s (from {source})"
    if unknown:
        detail += f"; includes unclassified phases {unknown}"
    return Check(name, ok, detail)


def _ttt_check(result: Mapping[str, Any]) -> Check:
    ttt = result.get("ttt")
    mode = ttt.get("mode") if isinstance(ttt, Mapping) else None
    if not isinstance(ttt, Mapping) or mode is None or str(mode).strip().lower() in NO_TTT_MODES:
        return Check("ttt_legal", True, "no test-time training")
    verdict = ttt.get("trace_verdict")
    if not isinstance(verdict, Mapping) or not isinstance(verdict.get("compliant"), bool):
        return Check("ttt_legal", False, f"TTT mode {mode!r} ran but no trace verdict was recorded")
    if verdict["compliant"]:
        return Check("ttt_legal", True, f"TTT mode {mode!r}: trace shows score-before-update, single pass")
    reasons = [str(r) for r in verdict.get("reasons") or []] or ["trace verdict not compliant"]
    return Check("ttt_legal", False, f"TTT mode {mode!r}: " + "; ".join(reasons))


def _val_check(result: Mapping[str, Any]) -> Check:
    data = result.get("data")
    flag = data.get("val_in_train") if isinstance(data, Mapping) else None
    if flag is False:
        return Check("no_val_in_train", True, "no validation tokens in any training loader")
    if flag is True:
        return Check("no_val_in_train", False, "validation data reached a training loader")
    return Check("no_val_in_train", False, "data/val_in_train not recorded by the trainer")


def _hardware_check(env: Mapping[str, Any] | None) -> Check:
    cls = hardware_class(env)
    ok = is_record_hardware(env)
    detail = f"{cls}: " + ("record hardware (8xH100 SXM)" if ok else "not 8xH100 SXM; not record-grade")
    return Check("record_hardware", ok, detail, blocking=False)


def check_seed(result: Mapping[str, Any], *, caps: Caps = Caps(),
               policy: PhasePolicy = DEFAULT_POLICY) -> SeedVerdict:
    """Every per-seed rule of the record track, evaluated on one run's result.json."""
    artifact, total = _artifact_check(result, caps)
    totals, err, source = _timing(result, policy)
    unknown = totals.unknown if totals else []
    env = result.get("env") if isinstance(result.get("env"), Mapping) else None
    hw = _hardware_check(env)
    checks = [
        artifact,
        _time_check("train_under_cap", totals.train if totals else None, caps.train_seconds, err, source,
                    unknown if policy.unknown == "train" else []),
        _time_check("eval_under_cap", totals.eval if totals else None, caps.eval_seconds, err, source,
                    unknown if policy.unknown == "eval" else []),
        _ttt_check(result),
        _val_check(result),
        hw,
    ]
    seed = result.get("seed")
    config_hash = result.get("config_hash")
    return SeedVerdict(
        seed=_int_or_none(seed) if not isinstance(seed, str) else (int(seed) if seed.isdigit() else None),
        config_hash=str(config_hash) if config_hash else None,
        checks=checks, hardware_class=hardware_class(env), record_grade=bool(hw.passed),
        train_seconds=totals.train if totals else None, eval_seconds=totals.eval if totals else None,
        report_only_seconds=totals.report_only if totals else None, unknown_phases=list(unknown),
        artifact_bytes=total)


@dataclass(frozen=True)
class VariantVerdict(_Verdict):
    seeds: list[SeedVerdict]
    checks: list[Check]
    config_hash: str | None  # the shared hash, None when missing or mixed
    hardware_classes: list[str]
    min_seeds: int

    @property
    def record_grade(self) -> bool:
        return bool(self.seeds) and all(s.record_grade for s in self.seeds)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def n_compliant(self) -> int:
        return sum(s.compliant for s in self.seeds)

    def pass_fractions(self) -> dict[str, float]:
        """Per check, the fraction of seeds passing (e.g. "artifact_under_cap": 2/3) for the report table."""
        out: dict[str, float] = {}
        for s in self.seeds:
            for c in s.checks:
                out[c.name] = out.get(c.name, 0.0) + (1.0 if c.passed else 0.0)
        return {k: v / len(self.seeds) for k, v in out.items()} if self.seeds else {}

    def to_dict(self) -> dict[str, Any]:
        return _plain({
            "compliant": self.compliant, "reasons": self.reasons, "record_grade": self.record_grade,
            "config_hash": self.config_hash, "n_seeds": self.n_seeds, "n_compliant": self.n_compliant,
            "min_seeds": self.min_seeds, "hardware_classes": list(self.hardware_classes),
            "pass_fractions": self.pass_fractions(), "checks": [c.to_dict() for c in self.checks],
            "seeds": [s.to_dict() for s in self.seeds],
        })


def check_variant(seed_results: Sequence[Mapping[str, Any]], *, caps: Caps = Caps(), min_seeds: int = 3,
                  policy: PhasePolicy = DEFAULT_POLICY) -> VariantVerdict:
    """The per-seed checks for every run plus the rules that only exist across seeds: one config hash,
    enough distinct seeds, one hardware class."""
    verdicts = [check_seed(r, caps=caps, policy=policy) for r in seed_results]

    bad = [f"seed {v.seed}: " + "; ".join(v.reasons) for v in verdicts if not v.compliant]
    all_ok = Check("all_seeds_compliant", not bad and bool(verdicts),
                   "; ".join(bad) if bad else (f"{len(verdicts)} of {len(verdicts)} seeds compliant"
                                               if verdicts else "no seeds"))

    by_hash: dict[str, list[Any]] = {}
    for v in verdicts:
        by_hash.setdefault(v.config_hash or "<missing>", []).append(v.seed)
    one_hash = len(by_hash) == 1 and "<missing>" not in by_hash
    hash_detail = (f"config_hash {next(iter(by_hash))}" if one_hash else
                   "seeds of different configs cannot be one result: "
                   + ", ".join(f"{h} (seeds {s})" for h, s in sorted(by_hash.items())))
    hash_check = Check("single_config_hash", one_hash, hash_detail if verdicts else "no seeds")

    seeds = [v.seed for v in verdicts]
    distinct = {s for s in seeds if s is not None}
    dupes = sorted({s for s in distinct if seeds.count(s) > 1})
    missing = seeds.count(None)
    problems = []
    if dupes:
        problems.append(f"repeated seeds {dupes}")
    if missing:
        problems.append(f"{missing} run(s) without a seed")
    enough = len(distinct) >= min_seeds and not problems
    seed_detail = f"{len(distinct)} distinct seeds {sorted(distinct)}, need >= {min_seeds}"
    if problems:
        seed_detail += "; " + "; ".join(problems)
    seeds_check = Check("enough_seeds", enough, seed_detail)

    classes: dict[str, list[Any]] = {}
    for v in verdicts:
        classes.setdefault(v.hardware_class, []).append(v.seed)
    hw_ok = len(classes) == 1 and "unknown" not in classes
    hw_detail = (f"all seeds on {next(iter(classes))}" if hw_ok else
                 "mixed or unknown hardware: " + ", ".join(f"{c} (seeds {s})" for c, s in sorted(classes.items())))
    hw_check = Check("consistent_hardware", hw_ok, hw_detail if verdicts else "no seeds")

    return VariantVerdict(
        seeds=verdicts, checks=[all_ok, hash_check, seeds_check, hw_check],
        config_hash=next(iter(by_hash)) if one_hash else None,
        hardware_classes=sorted(classes), min_seeds=min_seeds)
