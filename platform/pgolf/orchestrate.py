"""The driver behind `pgolf validate` and `pgolf tune`.

Order of work, and why:
1. Load the experiment and build every trial's resolved config and hash. A bad file fails here, before
   Ray or MLflow is touched.
2. Get or create the MLflow experiment and the parent run (once, on the driver: concurrent first use of
   a fresh sqlite store races on migrations), look up finished (config_hash, seed) pairs for --resume.
3. Run the remaining trials through Ray Tune (one function trial per (config, seed)).
4. Read the results back from MLflow (not from trial directories, which may sit on other nodes), print
   the per-variant table and the significance test, write both onto the parent run.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pgolf import capacity, tracking
from pgolf.experiment import Experiment, ExperimentError, apply_data_source, load_experiment
from pgolf.trainers.config import set_field
from pgolf.trial import TrialContext, TrialSpec, deadline_for

OPTUNA_METRIC = "final/val_bpb"
ASHA_METRIC = "val/bpb"


# --------------------------------------------------------------------------------------------------
# specs


def build_spec(exp: Experiment, variant: str | None, seed: int, overrides: dict[str, Any],
               data_root: str | None) -> TrialSpec:
    """Resolve (variant, sweep point, seed) into the exact config the trainer will read, and hash it.
    The hash is computed after the data paths are made absolute, exactly as the trainer computes it."""
    cfg = exp.resolved(variant, seed)
    for key, value in overrides.items():
        set_field(cfg, key, value, source=f"{exp.path} [sweep.axes]")
    apply_data_source(exp, cfg, data_root)
    name = variant if variant in exp.variants else exp.meta.name
    if overrides:
        label = point_label(overrides)
        name = f"{name},{label}" if exp.variants else label
    d = cfg.to_dict()
    d["run"]["run_dir"] = ""
    return TrialSpec(key=tracking.trial_run_name(name, seed), variant=name, seed=seed,
                     config_hash=exp.hash_of(cfg), config=d, overrides=dict(overrides))


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
        if sw.num_samples < 1:
            raise ExperimentError(f"{exp.path}: [sweep] num_samples must be >= 1, got {sw.num_samples}")
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


def check_baseline(exp: Experiment) -> None:
    """[baseline] values that the significance test could not use, reported before any trial runs."""
    b = exp.baseline
    if b.unit.lower() not in ("nats", "bpb"):
        raise ExperimentError(f"{exp.path}: [baseline] unit = {b.unit!r}; expected 'nats' (val_loss) or 'bpb' (val_bpb)")
    for seed, value in b.per_seed.items():
        try:
            int(seed)
        except ValueError:
            raise ExperimentError(f"{exp.path}: [baseline.per_seed] key {seed!r} is not a seed number "
                                  f"(write e.g. per_seed = {{1337 = 1.1228, 42 = 1.1236}})") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ExperimentError(f"{exp.path}: [baseline.per_seed] {seed} = {value!r}; expected a number")
    if sum(bool(x) for x in (b.config_hash, b.per_seed, b.record)) > 1:
        raise ExperimentError(f"{exp.path}: [baseline] sets more than one of config_hash, per_seed, record; keep one")
    if b.tokens_per_byte < 0:
        raise ExperimentError(f"{exp.path}: [baseline] tokens_per_byte must be > 0 (or 0 to use the runs' own)")


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
    if sw.search not in ("grid", "random", "optuna"):
        raise ExperimentError(f"{exp.path}: [sweep] search = {sw.search!r}; expected 'grid', 'random' or 'optuna'")
    if sw.scheduler not in ("none", "asha"):
        raise ExperimentError(f"{exp.path}: [sweep] scheduler = {sw.scheduler!r}; expected 'none' or 'asha'")
    if sw.search == "optuna":
        if exp.variants:
            raise ExperimentError(f"{exp.path}: search = 'optuna' sweeps the base config; remove [variants] "
                                  f"or use search = 'grid'/'random', which cross variants with the axes")
        if sw.num_samples < 1:
            raise ExperimentError(f"{exp.path}: [sweep] num_samples must be >= 1, got {sw.num_samples}")
        if not sw.axes:
            raise ExperimentError(f"{exp.path}: [sweep] has no axes")
        for axis, spec in sw.axes.items():
            axis_kind(exp, axis, spec)


# --------------------------------------------------------------------------------------------------
# plan: resume and duplicates


@dataclass
class Plan:
    specs: list[TrialSpec]  # every requested (variant, seed), in order
    to_run: list[TrialSpec]
    resumed: dict[str, Any] = field(default_factory=dict)  # spec key -> finished MLflow run
    duplicate_of: dict[str, str] = field(default_factory=dict)  # spec key -> key of the spec that runs it


def make_plan(specs: list[TrialSpec], finished: dict[tuple[str, int], Any] | None) -> Plan:
    """Which specs train. A duplicate is the same (config hash, seed) reading the same files: the hash
    leaves the data location out (moving the data must not make old runs unresumable), so two variants
    that differ only in where they read are both trained."""
    seen: dict[tuple, str] = {}
    plan = Plan(specs=specs, to_run=[])
    for spec in specs:
        pair = (spec.config_hash, spec.seed)
        same = (*pair, spec.config["data"]["data_path"], spec.config["data"]["tokenizer_path"])
        if same in seen:
            plan.duplicate_of[spec.key] = seen[same]
            continue
        seen[same] = spec.key
        if finished and pair in finished:
            plan.resumed[spec.key] = finished[pair]
            continue
        plan.to_run.append(spec)
    return plan


# --------------------------------------------------------------------------------------------------
# Ray


def connect_ray(address: str | None) -> bool:
    """Connect to Ray; returns True when this call started a local cluster it must shut down.

    No --address and no $RAY_ADDRESS: a fresh local cluster for this invocation (`address="local"`),
    never a silent attach to whatever cluster happens to run on the box. Inside `ray job submit`,
    RAY_ADDRESS is set and the job's cluster is used. `--address auto` attaches to a running one."""
    import ray

    if ray.is_initialized():
        return False
    addr = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        if addr == "local":
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
            return True
        ray.init(address=addr, log_to_driver=False)
    except Exception as exc:
        hint = ("another local Ray cluster on this machine can hold the dashboard agent's fixed port 52365: "
                "attach to it with --address auto, or stop it" if addr == "local" else
                "check the address (ray status), that the cluster runs the same Ray version, and token auth "
                "(RAY_AUTH_TOKEN / ray get-auth-token)")
        raise RayUnavailable(f"Ray did not start/connect at address {addr!r}: {type(exc).__name__}: {exc}; {hint}") from exc
    return False


class RayUnavailable(RuntimeError):
    pass


def default_concurrency(gpus: int, cpus: int) -> int:
    """floor(cluster GPUs / GPUs per trial); CPU-only trials: floor(cluster CPUs / CPUs per trial)."""
    import ray

    res = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(res.get("GPU", 0) // gpus))
    return max(1, int(res.get("CPU", 1) // max(cpus, 1)))


def _progress_callback(total: int):
    from ray.tune import Callback

    class Progress(Callback):
        """One line per finished trial instead of Tune's full status tables."""

        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            key = trial.config.get("key") or f"{r.get('variant', '?')}-s{r.get('seed', '?')}"
            if not r.get("pgolf_done"):
                print(f"  [{self.done}/{total}] {key:<28} {'STOPPED':<9} at step {r.get('step', '?')} "
                      f"(val/bpb {r.get('val/bpb', float('nan')):.4f})", flush=True)
                return
            score = r.get("final/val_bpb")
            tail = f"final/val_bpb {score:.4f}" if isinstance(score, float) else r.get("status_reason", "")
            print(f"  [{self.done}/{total}] {key:<28} {r.get('status', 'done'):<9} {tail}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            print(f"  [{self.done}/{total}] trial {trial.trial_id} ERROR (platform error; see the Ray logs "
                  f"under {trial.local_path})", flush=True)

    return Progress()


def run_tuner(ctx: TrialContext, exp: Experiment, plan: Plan, *, kind: str, max_concurrent: int,
              storage_path: str, run_name: str) -> Any:
    from ray import tune

    from pgolf.trial import run_trial

    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", "30")  # a stuck trial costs 30 s, not 600 s
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no status tables, our progress lines only
    # Intermediate reports carry val/bpb, the final one final/val_bpb: by design not every report has
    # every metric the searcher or scheduler reads.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    resources = {"cpu": max(exp.resources.cpus, 1), "gpu": exp.resources.gpus}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)

    search_alg = scheduler = None
    if kind == "sweep" and exp.sweep.search == "optuna":
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        seeds = ctx.seeds
        param_space = {"axes": optuna_space(exp)}
        search_alg = Repeater(OptunaSearch(metric=OPTUNA_METRIC, mode="min", seed=exp.sweep.seed),
                              repeat=len(seeds), set_index=True)
        num_samples = exp.sweep.num_samples * len(seeds)
        total = num_samples
    else:
        param_space = {"key": tune.grid_search([s.key for s in plan.to_run])}
        num_samples = 1
        total = len(plan.to_run)
    if kind == "sweep" and exp.sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        cfg = exp.config
        # max_t one past the last step: ASHA stops a trial whose time_attr reaches max_t, and the last
        # periodic validation (step == iterations) comes before quantization and the scored evaluation.
        scheduler = ASHAScheduler(time_attr="step", metric=ASHA_METRIC, mode="min",
                                  max_t=max(cfg.schedule.iterations, 1) + 1,
                                  grace_period=max(cfg.eval.val_loss_every, 1), reduction_factor=2)

    def dirname(trial) -> str:
        key = trial.config.get("key") or f"i{trial.config.get('__trial_index__', 0)}"
        return f"{trial.trial_id}_{tracking.metric_key(key).replace('/', '_')}"[:120]

    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=num_samples, max_concurrent_trials=max_concurrent,
                                    search_alg=search_alg, scheduler=scheduler,
                                    trial_dirname_creator=dirname, reuse_actors=True),
        run_config=tune.RunConfig(name=run_name, storage_path=storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[_progress_callback(total)]),
    )
    return tuner.fit()


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class SeedRecord:
    key: str
    variant: str
    seed: int
    config_hash: str
    status: str  # FINISHED | FAILED | KILLED | MISSING
    reason: str
    run_id: str | None
    result: dict | None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"

    @property
    def early_stopped(self) -> bool:
        return self.status == "KILLED" and self.reason.startswith("stopped")


def collect(uri: str, experiment_id: str, parent_run_id: str, plan: Plan,
            extra_specs: list[TrialSpec] | None = None) -> list[SeedRecord]:
    """One record per requested (variant, seed), from MLflow. Within this invocation a spec may have
    several runs only by accident (a searcher repeating a point); the newest FINISHED one wins."""
    by_key: dict[str, Any] = {}
    for run in sorted(tracking.child_runs(uri, experiment_id, parent_run_id), key=lambda r: r.info.start_time or 0):
        key = run.data.tags.get("pgolf.spec_key")
        prev = by_key.get(key)
        if key and (prev is None or prev.info.status != "FINISHED" or run.info.status == "FINISHED"):
            by_key[key] = run
    records = []
    for spec in plan.specs + (extra_specs or []):
        src_key = plan.duplicate_of.get(spec.key, spec.key)
        resumed = plan.resumed.get(src_key)
        run = resumed or by_key.get(src_key)
        if run is None:
            records.append(SeedRecord(spec.key, spec.variant, spec.seed, spec.config_hash, "MISSING",
                                      "no MLflow run: the trial never started or could not reach the store",
                                      None, None))
            continue
        status = run.info.status
        reason = run.data.tags.get("status_reason", "")
        if resumed is not None:
            reason = f"resumed: finished earlier (run {run.info.run_id[:8]})"
        result = tracking.load_result(uri, run)
        records.append(SeedRecord(spec.key, spec.variant, spec.seed, run.data.tags.get("config_hash", spec.config_hash),
                                  status, reason, run.info.run_id, result, resumed=resumed is not None))
    return records


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _vals(records: list[SeedRecord], key: str) -> list[float]:
    return [v for r in records if r.ok and r.result and (v := _num(r.result.get(key))) is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(exp: Experiment, records: list[SeedRecord], uri: str, experiment_id: str, *, kind: str = "validation",
              overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-variant statistics, compliance and the significance test against [baseline]."""
    from pgolf import compliance, stats

    overrides = overrides or {}

    caps = compliance.Caps(artifact_bytes=exp.budget.artifact_bytes, train_seconds=exp.budget.train_seconds,
                           eval_seconds=exp.budget.eval_seconds)
    variants: dict[str, list[SeedRecord]] = {}
    for r in records:
        variants.setdefault(r.variant, []).append(r)
    out: dict[str, Any] = {}
    for name, recs in variants.items():
        bpb, loss = _vals(recs, "final/val_bpb"), _vals(recs, "final/val_loss")
        all_results = [r.result for r in recs if r.result]
        ok_results = [r.result for r in recs if r.ok and r.result]
        entry: dict[str, Any] = {
            "config_hash": recs[0].config_hash, "n_requested": len(recs), "n_ok": sum(r.ok for r in recs),
            "overrides": overrides.get(name, {}),
            "seeds": {str(r.seed): {"status": r.status, "reason": r.reason, "run_id": r.run_id, "resumed": r.resumed,
                                    "final/val_bpb": (r.result or {}).get("final/val_bpb") if r.ok else None,
                                    "final/val_loss": (r.result or {}).get("final/val_loss") if r.ok else None}
                      for r in recs},
            "final/val_bpb": stats.summarize(bpb).to_dict() if bpb else None,
            "final/val_loss": stats.summarize(loss).to_dict() if loss else None,
            "artifact_bytes_max": max(_vals(recs, "artifact/bytes"), default=None),
            "headroom_bytes_min": min(_vals(recs, "artifact/headroom_bytes"), default=None),
            "train_seconds_max": max(_vals(recs, "time/train_s"), default=None),
            "eval_seconds_max": max(_vals(recs, "time/eval_s"), default=None),
            "tokens_per_byte": _mean(_vals(recs, "data/tokens_per_byte")),
        }
        # A record claim needs 3 seeds; a sweep row is judged on the seeds it was asked to run.
        min_seeds = 3 if kind == "validation" else min(3, len(recs))
        verdict = compliance.check_variant(all_results, caps=caps, min_seeds=min_seeds) if all_results else None
        entry["compliance"] = verdict.to_dict() if verdict else {"compliant": False, "reasons": ["no seed produced a result"]}
        entry["compliant"] = bool(verdict and verdict.compliant and len(ok_results) == len(recs))
        if verdict and verdict.compliant and len(ok_results) < len(recs):
            entry["compliance"]["reasons"] = [f"{len(recs) - len(ok_results)} requested seed(s) did not finish"]
        out[name] = entry
    return {"variants": out, "significance": significance(exp, out, records, uri, experiment_id)}


def _baseline_nats(exp: Experiment, tpb: float | None, uri: str, experiment_id: str) -> tuple[Any, str, str | None]:
    """(baseline in nats: number | {seed: value} | None, description, the baseline's own config hash)."""
    from pgolf import stats

    b = exp.baseline
    if b.config_hash:
        exp_id = experiment_id
        if b.experiment:
            c = tracking.client(uri)
            e = c.get_experiment_by_name(b.experiment)
            if e is None:
                return None, f"[baseline] experiment {b.experiment!r} not found in {uri}", b.config_hash
            exp_id = e.experiment_id
        runs = tracking.runs_of_hash(uri, exp_id, b.config_hash)
        by_seed = {}
        for r in sorted(runs, key=lambda r: r.info.start_time or 0):
            v = r.data.metrics.get("final/val_loss")
            if v is not None:
                by_seed[int(r.data.tags.get("seed", len(by_seed)))] = float(v)
        if not by_seed:
            return None, (f"[baseline] config_hash {b.config_hash}: no FINISHED runs in MLflow experiment "
                          f"{b.experiment or exp.meta.name!r}; run `pgolf validate` on the baseline first"), b.config_hash
        return by_seed, f"MLflow runs of config {b.config_hash} ({len(by_seed)} seeds)", b.config_hash
    if b.per_seed or b.record:
        unit = b.unit.lower()
        if unit not in ("nats", "bpb"):
            return None, f"{exp.path}: [baseline] unit must be 'nats' or 'bpb', got {b.unit!r}", None
        factor = 1.0
        if unit == "bpb":
            factor = b.tokens_per_byte or tpb or 0.0
            if not factor:
                return None, ("[baseline] is in bpb but no tokens_per_byte is known to convert it to nats: set "
                              "[baseline] tokens_per_byte or let at least one seed finish"), None

        def conv(v: float) -> float:
            return float(v) if unit == "nats" else float(stats.bpb_to_nats(float(v), factor))
        label = b.name or ("published per-seed scores" if b.per_seed else "published record")
        if b.per_seed:
            vals = {int(k): conv(v) for k, v in b.per_seed.items()}
            return vals, f"{label} ({len(vals)} seeds, {unit})", None
        return conv(b.record), f"{label} {b.record:g} {unit}", None
    return None, "", None


def significance(exp: Experiment, variants: dict[str, Any], records: list[SeedRecord], uri: str,
                 experiment_id: str) -> dict[str, Any]:
    from pgolf import stats

    b = exp.baseline
    tpbs = [v["tokens_per_byte"] for v in variants.values() if v.get("tokens_per_byte")]
    tpb = sum(tpbs) / len(tpbs) if tpbs else None
    try:
        baseline, desc, base_hash = _baseline_nats(exp, tpb, uri, experiment_id)
    except Exception as exc:  # noqa: BLE001 - a broken baseline lookup must not hide the table
        baseline, desc, base_hash = None, f"baseline lookup failed: {exc}", None
    out: dict[str, Any] = {"baseline": desc, "margin_nats": b.margin_nats, "alpha": b.alpha,
                           "tokens_per_byte": tpb, "tests": {}}
    if baseline is None:
        out["skipped"] = desc or f"no [baseline] in {exp.path}: significance test skipped"
        return out
    for name, v in variants.items():
        if base_hash and v["config_hash"] == base_hash:
            continue
        new = {int(s): d["final/val_loss"] for s, d in v["seeds"].items() if d["final/val_loss"] is not None}
        if not new:
            out["tests"][name] = {"error": "no finished seeds"}
            continue
        try:
            res = stats.compare(new, baseline, margin_nats=b.margin_nats, alpha=b.alpha,
                                tokens_per_byte=v.get("tokens_per_byte") or tpb)
            out["tests"][name] = res.to_dict()
        except (ValueError, TypeError) as exc:
            out["tests"][name] = {"error": str(exc)}
    pvals = {n: t["p"] for n, t in out["tests"].items() if isinstance(t.get("p"), (int, float))}
    if len(pvals) > 1:
        for n, h in stats.holm(pvals, alpha=b.alpha).items():
            out["tests"][n]["holm_p"] = h.adjusted_p
            out["tests"][n]["holm_significant"] = h.reject
    return out


# --------------------------------------------------------------------------------------------------
# printing


def _f(x: Any, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _int(x: Any) -> str:
    return "-" if x is None else f"{int(x):,}"


def format_table(summary: dict[str, Any], order: list[str] | None = None) -> str:
    variants = summary["variants"]
    names = order or list(variants)
    head = ["variant", "hash", "ok", "final/val_bpb mean ± std", "95% CI", "final/val_loss mean ± std",
            "bytes max", "headroom min", "train s max", "eval s max", "compliant"]
    rows = []
    for n in names:
        v = variants[n]
        bpb, loss = v["final/val_bpb"], v["final/val_loss"]
        rows.append([
            n, v["config_hash"], f"{v['n_ok']}/{v['n_requested']}",
            f"{_f(bpb['mean'])} ± {_f(bpb['std'])}" if bpb else "-",
            f"[{_f(bpb['ci_low'])}, {_f(bpb['ci_high'])}]" if bpb else "-",
            f"{_f(loss['mean'])} ± {_f(loss['std'])}" if loss else "-",
            _int(v["artifact_bytes_max"]), _int(v["headroom_bytes_min"]),
            _f(v["train_seconds_max"], ".1f"), _f(v["eval_seconds_max"], ".1f"),
            "yes" if v["compliant"] else "no",
        ])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def format_details(summary: dict[str, Any]) -> str:
    lines = []
    for n, v in summary["variants"].items():
        for s, d in v["seeds"].items():
            if d["status"] != "FINISHED" or d.get("resumed"):
                lines.append(f"  {n}-s{s}: {d['status']}: {d['reason']}")
        if not v["compliant"]:
            reasons = v["compliance"].get("reasons") or []
            if reasons:
                lines.append(f"  {n}: not compliant: " + "; ".join(reasons))
    sig = summary["significance"]
    if sig.get("skipped"):
        lines.append(f"significance: {sig['skipped']}")
    else:
        lines.append(f"significance vs {sig['baseline']} (margin {sig['margin_nats']} nats, alpha {sig['alpha']}):")
        for n, t in sig["tests"].items():
            if "error" in t:
                lines.append(f"  {n}: {t['error']}")
                continue
            holm = f", Holm p={t['holm_p']:.3g}" if "holm_p" in t else ""
            verdict = "significant" if t.get("holm_significant", t["significant"]) else "not significant"
            dbpb = f" ({t['delta_bpb']:+.5f} bpb)" if t.get("delta_bpb") is not None else ""
            need = (f"; needs {t['required_improvement_nats']:.5f} nats below the threshold at this n"
                    if t.get("required_improvement_nats") is not None else "")
            lines.append(f"  {n}: {t['test']} n={t['n']} df={_f(t['df'], '.1f')} t={_f(t['t'], '.3f')} "
                         f"p={_f(t['p'], '.3g')}{holm}; delta {t['delta_nats']:+.5f} nats{dbpb}{need} -> {verdict}")
    return "\n".join(lines)


def parent_metrics(summary: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    single = len(summary["variants"]) == 1
    for n, v in summary["variants"].items():
        prefixes = [tracking.metric_key(n) + "/"] + ([""] if single else [])
        vals = {"n_ok": v["n_ok"], "n_requested": v["n_requested"], "compliant": float(v["compliant"]),
                "artifact_bytes_max": v["artifact_bytes_max"], "headroom_bytes_min": v["headroom_bytes_min"],
                "train_s_max": v["train_seconds_max"], "eval_s_max": v["eval_seconds_max"]}
        for metric in ("final/val_bpb", "final/val_loss"):
            s = v[metric]
            if s:
                for stat in ("mean", "std", "sem", "ci_low", "ci_high", "min", "max"):
                    vals[f"{metric}_{stat}"] = s[stat]
        t = summary["significance"]["tests"].get(n) or {}
        for k in ("p", "t", "df", "delta_nats", "delta_bpb", "holm_p", "required_improvement_nats"):
            if k in t:
                vals[f"test_{k}"] = t[k]
        if "significant" in t:
            vals["test_significant"] = float(t.get("holm_significant", t["significant"]))
        for k, x in vals.items():
            if _num(x) is not None:
                for p in prefixes:
                    out[p + k] = float(x)
    return out


# --------------------------------------------------------------------------------------------------
# the command


@dataclass
class Invocation:
    """One `pgolf validate`/`tune` call after planning: what to run and where it is recorded."""
    kind: str
    exp: Experiment
    seeds: list[int]
    plan: Plan
    uri: str
    experiment_id: str
    parent_id: str
    ctx: TrialContext
    runs_dir: str
    stamp: str

    @property
    def searcher(self) -> bool:
        return self.kind == "sweep" and self.exp.sweep.search == "optuna"

    @property
    def early_stop_ok(self) -> bool:
        # In a sweep with ASHA, stopping weak configs early is the point, not a failure.
        return self.kind == "sweep" and self.exp.sweep.scheduler == "asha"


def run(args, kind: str) -> int:
    """`pgolf validate` (kind="validation") and `pgolf tune` (kind="sweep")."""
    t_start = time.time()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    inv = prepare(args, kind)
    try:
        grid = execute(inv, args)
    except KeyboardInterrupt:
        print("pgolf: interrupted; running trials were recorded as KILLED. Re-run with --resume to finish "
              "the missing seeds.", file=sys.stderr)
        _end_parent(inv, "KILLED", "interrupted")
        return 130
    except RayUnavailable as exc:
        print(f"pgolf: {exc}", file=sys.stderr)
        _end_parent(inv, "FAILED", str(exc))
        return 1
    except capacity.Unschedulable as exc:
        print(f"pgolf: {exc}", file=sys.stderr)
        _end_parent(inv, "FAILED", str(exc))
        return capacity.EXIT_CODE
    except Exception as exc:
        _end_parent(inv, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    return summarize_invocation(inv, grid, time.time() - t_start)


def prepare(args, kind: str) -> Invocation:
    """Everything that can fail on a bad file happens here, before Ray or MLflow is touched; then the
    MLflow experiment and parent run are created and --resume is planned."""
    exp = load_experiment(args.experiment, overrides=args.set, smoke=args.smoke)
    seeds = list(args.seeds) if getattr(args, "seeds", None) else list(exp.meta.seeds)
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"--seeds {seeds}: each seed may appear once")
    check_sweep(exp, kind)
    check_baseline(exp)
    from pgolf.datasets import default_data_dir

    data_root = os.path.abspath(args.data_dir) if args.data_dir else str(default_data_dir())
    if kind == "sweep" and exp.sweep.search == "optuna":
        specs = []  # points come from the searcher; build one config now so a bad axis fails before Ray
        build_spec(exp, None, seeds[0], _probe_point(exp), data_root)
    elif kind == "sweep":
        specs = sweep_specs(exp, seeds, data_root)
    else:
        specs = validate_specs(exp, seeds, data_root)

    uri, artifact_root = tracking.resolve_tracking_uri(args.tracking_uri)
    experiment_id = tracking.get_or_create_experiment(uri, exp.meta.name, artifact_root)
    plan = make_plan(specs, tracking.finished_trials(uri, experiment_id) if args.resume else None)
    git_sha, dirty = tracking.git_state()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_dir = os.path.abspath(args.runs_dir or "runs")
    trial_root = os.path.join(runs_dir, exp.meta.name, f"{kind}-{stamp}")
    parent_tags = {
        "pgolf.kind": kind, "git_sha": git_sha, "git_dirty": str(dirty), "experiment_file": exp.path,
        "lineage": " -> ".join(exp.lineage), "seeds": ",".join(map(str, seeds)), "smoke": str(bool(args.smoke)),
        "resume": str(bool(args.resume)), "trainer": exp.meta.trainer, "runs_dir": trial_root,
        "overrides": json.dumps(args.set or []),
    }
    if specs:
        parent_tags["base_config_hash"] = specs[0].config_hash
    submission = _job_submission_id()
    if submission:
        parent_tags["ray_job_submission_id"] = submission
    parent_params = {"experiment.seeds": seeds, "budget.train_seconds": exp.budget.train_seconds,
                     "budget.eval_seconds": exp.budget.eval_seconds, "budget.artifact_bytes": exp.budget.artifact_bytes,
                     "budget.trial_timeout_seconds": deadline_for(exp.budget),
                     "resources.gpus": exp.resources.gpus, "resources.cpus": exp.resources.cpus}
    if kind == "sweep":
        parent_params.update({f"sweep.{k}": v for k, v in vars(exp.sweep).items()})
    parent_id = tracking.start_parent_run(uri, experiment_id, run_name=f"{kind}-{stamp}", tags=parent_tags,
                                          params=parent_params)
    ctx = TrialContext(
        tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_id, git_sha=git_sha,
        trainer=exp.meta.trainer, runs_dir=trial_root, gpus=exp.resources.gpus, cpus=exp.resources.cpus,
        deadline_seconds=deadline_for(exp.budget),
        demo_root=os.path.join(data_root, "demo") if exp.meta.data == "demo" else None,
        specs={s.key: s for s in plan.to_run}, kind=kind, seeds=seeds, data_root=data_root,
        resume=bool(args.resume), experiment=exp if not specs else None,
        caps={"artifact_bytes": exp.budget.artifact_bytes, "train_seconds": exp.budget.train_seconds,
              "eval_seconds": exp.budget.eval_seconds})
    inv = Invocation(kind=kind, exp=exp, seeds=seeds, plan=plan, uri=uri, experiment_id=experiment_id,
                     parent_id=parent_id, ctx=ctx, runs_dir=runs_dir, stamp=stamp)

    n = len(specs) if specs else exp.sweep.num_samples * len(seeds)
    print(f"pgolf {'validate' if kind == 'validation' else 'tune'}: {exp.meta.name} ({n} trials, seeds {seeds})",
          flush=True)
    print(f"  MLflow {uri}  experiment {exp.meta.name!r}  parent run {parent_id}", flush=True)
    for key, src in plan.duplicate_of.items():
        print(f"  skip {key}: same config hash and seed as {src}", flush=True)
    for key, r in plan.resumed.items():
        print(f"  skip {key}: finished earlier in MLflow run {r.info.run_id} (--resume)", flush=True)
    return inv


def execute(inv: Invocation, args) -> Any:
    """Run the planned trials through Ray Tune; returns the ResultGrid (None when nothing had to run)."""
    if not inv.plan.to_run and not inv.searcher:
        return None
    import ray

    interrupted = False
    owned = False
    try:
        owned = connect_ray(args.address)
        res = ray.cluster_resources()
        tracking.set_tags(tracking.client(inv.uri), inv.parent_id, {
            "ray_job_id": ray.get_runtime_context().get_job_id(),
            "ray_address": args.address or os.environ.get("RAY_ADDRESS") or "local"})
        exp = inv.exp
        capacity.ensure_schedulable(capacity.trial_demand(exp.resources.gpus, exp.resources.cpus),
                                    start_timeout=getattr(args, "start_timeout", capacity.DEFAULT_START_TIMEOUT_S))
        mc = args.max_concurrent or (exp.sweep.max_concurrent_trials if inv.kind == "sweep" else 0) \
            or default_concurrency(exp.resources.gpus, exp.resources.cpus)
        print(f"  Ray: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; {mc} trial(s) at a time, "
              f"{exp.resources.gpus} GPU(s) + {exp.resources.cpus} CPU(s) each; "
              f"deadline {inv.ctx.deadline_seconds:g} s per trial", flush=True)
        return run_tuner(inv.ctx, exp, inv.plan, kind=inv.kind, max_concurrent=mc,
                         storage_path=os.path.abspath(args.storage_path or os.path.join(inv.runs_dir, "tune")),
                         run_name=f"{exp.meta.name}-{inv.kind}-{inv.stamp}")
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        tracking.mark_stale_children(
            inv.uri, inv.experiment_id, inv.parent_id,
            "interrupted: the invocation was stopped before this trial finished" if interrupted
            else "stopped by Ray Tune before the trial could record its end (scheduler decision or a lost worker)")
        if owned:
            ray.shutdown()


def _end_parent(inv: Invocation, status: str, reason: str) -> None:
    try:
        tracking.set_tags(tracking.client(inv.uri), inv.parent_id, {"status_reason": reason})
    finally:
        tracking.finish_run(inv.uri, inv.parent_id, status)


def summarize_invocation(inv: Invocation, grid: Any, wall: float) -> int:
    """Results from MLflow -> table, statistics, parent run metrics and artifacts; the exit code."""
    exp, kind = inv.exp, inv.kind
    extra_specs = _optuna_specs(grid, inv.ctx, inv.plan, inv.uri) if grid is not None and inv.searcher else []
    errors = [r for r in (grid or []) if r.error is not None]
    records = collect(inv.uri, inv.experiment_id, inv.parent_id, inv.plan, extra_specs)
    early_ok = inv.early_stop_ok
    summary = aggregate(exp, records, inv.uri, inv.experiment_id, kind=kind,
                        overrides={s.variant: s.overrides for s in inv.plan.specs + extra_specs})
    n_bad = sum(not r.ok and not (early_ok and r.early_stopped) for r in records)
    all_ok = n_bad == 0 and not errors and bool(records)
    summary.update({"experiment": exp.meta.name, "experiment_file": exp.path, "kind": kind, "seeds": inv.seeds,
                    "parent_run_id": inv.parent_id, "tracking_uri": inv.uri, "all_ok": all_ok,
                    "trial_errors": [str(r.error).splitlines()[0][:500] for r in errors],
                    "wall_seconds": round(wall, 1)})
    order = list(summary["variants"])
    if kind == "sweep":
        def score(name: str) -> tuple[bool, float]:
            s = summary["variants"][name]["final/val_bpb"]
            return (s is None, s["mean"] if s else 0.0)
        order = sorted(order, key=score)
        summary["ranking"] = order

    table, details = format_table(summary, order), format_details(summary)
    print()
    print(table)
    if details:
        print(details)
    if kind == "sweep" and order and summary["variants"][order[0]]["final/val_bpb"]:
        best = summary["variants"][order[0]]
        print(f"best: {order[0]} (config {best['config_hash']}) final/val_bpb {best['final/val_bpb']['mean']:.4f} "
              f"over {best['n_ok']} seed(s); re-validate it on fresh seeds before claiming a record")
    for e in summary["trial_errors"]:
        print(f"  trial error: {e}", file=sys.stderr)

    c = tracking.client(inv.uri)
    tracking.log_metrics(c, inv.parent_id, [(k, v, 0) for k, v in parent_metrics(summary).items()])
    c.log_dict(inv.parent_id, json.loads(json.dumps(summary, default=str)), "validation_summary.json")
    c.log_text(inv.parent_id, table + "\n" + details + "\n", "validation_table.txt")
    _end_parent(inv, "FINISHED" if all_ok else "FAILED",
                "ok" if all_ok else f"{n_bad} of {len(records)} requested seed(s) did not finish OK")
    n_early = sum(r.early_stopped for r in records) if early_ok else 0
    early = f" ({n_early} stopped early by ASHA)" if n_early else ""
    print(f"{'all' if all_ok else 'NOT all'} {len(records)} requested seed(s) finished OK{early}; "
          f"parent run {inv.parent_id} ({wall:.0f} s)", flush=True)
    return 0 if all_ok else 1


def _job_submission_id() -> str | None:
    """The `ray job submit` id (raysubmit_...), which the Jobs API passes to the driver only inside its
    job config JSON."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None


def _optuna_specs(grid, ctx: TrialContext, plan: Plan, uri: str) -> list[TrialSpec]:
    """Searcher mode has no specs up front: rebuild one per finished trial from its config. Trials that
    --resume answered from an earlier run point at that run, which is not a child of this parent."""
    from pgolf.trial import spec_from_sample

    specs, seen = [], {}
    c = tracking.client(uri)
    for r in grid:
        spec = spec_from_sample(ctx, r.config)
        pair = (spec.config_hash, spec.seed)
        if pair in seen:
            if spec.key != seen[pair]:
                plan.duplicate_of[spec.key] = seen[pair]
                specs.append(spec)
            continue
        seen[pair] = spec.key
        specs.append(spec)
        metrics = r.metrics or {}
        if metrics.get("resumed") and metrics.get("mlflow_run_id"):
            plan.resumed[spec.key] = c.get_run(metrics["mlflow_run_id"])
    return specs
