"""Trial specs: (variant, sweep point, seed) resolved into the exact config a trial trains, hashed on the
driver; the sweep axes (the one axis parser) and which specs train after --resume and duplicates.
Everything here runs before Ray or MLflow is touched, so a bad file fails here."""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

from pgolf import tracking
from pgolf.experiment import Experiment, ExperimentError, apply_data_source
from pgolf.trainers.config import TrainConfig


@dataclass
class TrialSpec:
    """Everything one trial needs about its config; built and hashed on the driver."""
    key: str  # unique within an invocation: "<variant>-s<seed>"
    variant: str
    seed: int
    config_hash: str
    cfg: TrainConfig  # resolved and validated, absolute data paths; run_dir is the trial's to set
    overrides: dict[str, Any] = field(default_factory=dict)  # sweep axis values of this variant

    @property
    def config(self) -> dict[str, dict[str, Any]]:
        return self.cfg.to_dict()


def build_spec(exp: Experiment, variant: str | None, seed: int, overrides: dict[str, Any],
               data_root: str | None) -> TrialSpec:
    """Resolve (variant, sweep point, seed) into the exact config the trainer will read, and hash it.
    The hash is computed after the data paths are made absolute, exactly as the trainer computes it."""
    cfg = exp.resolved(variant, seed, overrides)
    apply_data_source(exp, cfg, data_root)
    name = variant if variant in exp.variants else exp.meta.name
    if overrides:
        label = point_label(overrides)
        name = f"{name},{label}" if exp.variants else label
    cfg.run.run_dir = ""
    return TrialSpec(key=tracking.trial_run_name(name, seed), variant=name, seed=seed,
                     config_hash=exp.hash_of(cfg), cfg=cfg, overrides=dict(overrides))


def point_label(point: dict[str, Any]) -> str:
    shorts = [k.split(".")[-1] for k in point]
    use_short = len(set(shorts)) == len(shorts)
    return ",".join(f"{k.split('.')[-1] if use_short else k}={_fmt(v)}" for k, v in point.items())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def validate_specs(exp: Experiment, seeds: list[int], data_root: str | None) -> list[TrialSpec]:
    variants: list[str | None] = list(exp.variants) or [None]
    return [build_spec(exp, v, s, {}, data_root) for v in variants for s in seeds]


def _axis_where(exp: Experiment, axis: str) -> str:
    return f"{exp.path}: [sweep.axes] {axis}"


def axis_kind(exp: Experiment, axis: str, spec: Any) -> tuple[str, Any]:
    """("values", [..]) or ("uniform"|"loguniform"|"randint", (low, high)). Errors name the axis."""
    if isinstance(spec, list):
        if not spec:
            raise ExperimentError(f"{_axis_where(exp, axis)}: empty list of values")
        return "values", spec
    if isinstance(spec, dict):
        kind = spec.get("type", "choice" if "values" in spec else "uniform")
        if kind == "choice":
            vals = spec.get("values")
            if not isinstance(vals, list) or not vals:
                raise ExperimentError(f"{_axis_where(exp, axis)}: type 'choice' needs values = [..]")
            return "values", vals
        if kind in ("uniform", "loguniform", "randint"):
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)) or not low < high:
                raise ExperimentError(f"{_axis_where(exp, axis)}: type {kind!r} needs numbers low < high, "
                                      f"got low={low!r} high={high!r}")
            if kind == "loguniform" and low <= 0:
                raise ExperimentError(f"{_axis_where(exp, axis)}: loguniform needs low > 0, got {low!r}")
            if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
                raise ExperimentError(f"{_axis_where(exp, axis)}: randint needs integer low and high (high inclusive)")
            extra = set(spec) - {"type", "low", "high"}
            if extra:
                raise ExperimentError(f"{_axis_where(exp, axis)}: unknown keys {sorted(extra)} for type {kind!r}")
            return kind, (low, high)
        raise ExperimentError(f"{_axis_where(exp, axis)}: unknown type {kind!r} "
                              f"(expected 'choice', 'uniform', 'loguniform' or 'randint')")
    raise ExperimentError(f"{_axis_where(exp, axis)}: expected a list of values or a table "
                          f"{{type = 'uniform'|'loguniform'|'randint'|'choice', low, high | values}}, got {spec!r}")


def _sample(kind: str, arg: Any, rng: random.Random) -> Any:
    if kind == "values":
        return rng.choice(arg)
    low, high = arg
    if kind == "uniform":
        return float(f"{rng.uniform(low, high):.5g}")
    if kind == "loguniform":
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.5g}")
    return rng.randint(low, high)


def sweep_points(exp: Experiment) -> list[dict[str, Any]]:
    """grid: the cross product of the axes' values; random: `num_samples` points drawn from
    [sweep].seed. Sampled here, once, so that every seed of a point trains the same config (Tune would
    draw a fresh value per trial when random domains are mixed with grid_search over seeds)."""
    sw = exp.sweep
    if not sw.axes:
        raise ExperimentError(f"{exp.path}: [sweep] has no axes; add e.g. [sweep.axes] \"optim.matrix_lr\" = [0.02, 0.04]")
    kinds = {axis: axis_kind(exp, axis, spec) for axis, spec in sw.axes.items()}
    if sw.search == "grid":
        for axis, (kind, _) in kinds.items():
            if kind != "values":
                raise ExperimentError(f"{_axis_where(exp, axis)}: grid search needs a list of values; "
                                      f"use search = 'random' or 'optuna' for a {kind} range")
        axes = list(kinds)
        return [dict(zip(axes, combo)) for combo in itertools.product(*(kinds[a][1] for a in axes))]
    if sw.search == "random":
        rng = random.Random(sw.seed)
        return [{axis: _sample(kind, arg, rng) for axis, (kind, arg) in kinds.items()} for _ in range(sw.num_samples)]
    raise ExperimentError(f"{exp.path}: [sweep] search = {sw.search!r} has no fixed points")


def sweep_specs(exp: Experiment, seeds: list[int], data_root: str | None) -> list[TrialSpec]:
    variants: list[str | None] = list(exp.variants) or [None]
    return [build_spec(exp, v, s, p, data_root) for v in variants for p in sweep_points(exp) for s in seeds]


def optuna_space(exp: Experiment) -> dict[str, Any]:
    from ray import tune

    space = {}
    for axis, spec in exp.sweep.axes.items():
        kind, arg = axis_kind(exp, axis, spec)
        if kind == "values":
            space[axis] = tune.choice(arg)
        elif kind == "uniform":
            space[axis] = tune.uniform(*arg)
        elif kind == "loguniform":
            space[axis] = tune.loguniform(*arg)
        else:
            space[axis] = tune.randint(arg[0], arg[1] + 1)  # tune.randint excludes high
    return space


def _probe_point(exp: Experiment) -> dict[str, Any]:
    out = {}
    for axis, spec in exp.sweep.axes.items():
        kind, arg = axis_kind(exp, axis, spec)
        out[axis] = arg[0]
    return out


def check_sweep(exp: Experiment, kind: str) -> None:
    """Sweep settings that cannot work, reported before anything starts."""
    sw = exp.sweep
    if kind != "sweep":
        return
    if sw.search == "optuna":
        if exp.variants:
            raise ExperimentError(f"{exp.path}: search = 'optuna' sweeps the base config; remove [variants] "
                                  f"or use search = 'grid'/'random', which cross variants with the axes")
        if not sw.axes:
            raise ExperimentError(f"{exp.path}: [sweep] has no axes")
        for axis, spec in sw.axes.items():
            axis_kind(exp, axis, spec)


@dataclass
class TrialPlan:
    specs: list[TrialSpec]  # every requested (variant, seed), in order
    to_run: list[TrialSpec]
    resumed: dict[str, Any] = field(default_factory=dict)  # spec key -> finished MLflow run
    duplicate_of: dict[str, str] = field(default_factory=dict)  # spec key -> key of the spec that runs it


def make_plan(specs: list[TrialSpec], finished: dict[tuple[str, int], Any] | None) -> TrialPlan:
    """Which specs train. A duplicate is the same (config hash, seed) reading the same files: the hash
    leaves the data location out (moving the data must not make old runs unresumable), so two variants
    that differ only in where they read are both trained."""
    seen: dict[tuple, str] = {}
    plan = TrialPlan(specs=specs, to_run=[])
    for spec in specs:
        pair = (spec.config_hash, spec.seed)
        same = (*pair, spec.cfg.data.data_path, spec.cfg.data.tokenizer_path)
        if same in seen:
            plan.duplicate_of[spec.key] = seen[same]
            continue
        seen[same] = spec.key
        if finished and pair in finished:
            plan.resumed[spec.key] = finished[pair]
            continue
        plan.to_run.append(spec)
    return plan


def spec_from_sample(exp: Experiment, seeds: list[int], data_root: str | None, config: dict) -> TrialSpec:
    """A searcher's suggestion (axis values + Repeater index) -> the spec of one seed of it."""
    index = int(config.get("__trial_index__", 0))
    return build_spec(exp, None, seeds[index % len(seeds)], dict(config.get("axes", {})), data_root)
