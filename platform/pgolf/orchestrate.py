"""The driver behind `pgolf validate` and `pgolf tune`.

Order of work, and why:
1. Load the experiment and build every trial's resolved config and hash (pgolf.specs). A bad file fails
   here, before Ray or MLflow is touched.
2. Get or create the MLflow experiment and the parent run (once, on the driver: concurrent first use of
   a fresh sqlite store races on migrations), look up finished (config_hash, seed) pairs for --resume.
3. Run the remaining trials through Ray Tune (pgolf.tuner; one function trial per (config, seed)).
4. Read the results back from MLflow (pgolf.summary; not from trial directories, which may sit on other
   nodes), print the per-variant table and the significance test, write both onto the parent run.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any

from pgolf import capacity, cost, tracking
from pgolf.experiment import Experiment, ExperimentError, load_experiment
from pgolf.specs import (TrialPlan, TrialSpec, _probe_point, build_spec, check_sweep, make_plan, spec_from_sample,
                         sweep_specs, validate_specs)
from pgolf.summary import aggregate, collect, format_details, format_table, parent_metrics
from pgolf.trial import TrialContext, deadline_for
from pgolf.tuner import RayUnavailable, execute


@dataclass
class Invocation:
    """One `pgolf validate`/`tune` call after planning: what to run and where it is recorded."""
    kind: str
    exp: Experiment
    seeds: list[int]
    plan: TrialPlan
    uri: str
    experiment_id: str
    parent_id: str
    ctx: TrialContext
    runs_dir: str
    stamp: str
    gate: dict[str, Any] | None = None  # budget caps / --stop-futile: pgolf.gate.make_searcher kwargs
    gate_state: Any = None  # the gate's decisions, after Tune returns
    prices: cost.Prices = cost.Prices()

    @property
    def searcher(self) -> bool:
        return self.kind == "sweep" and self.exp.sweep.search == "optuna"

    @property
    def early_stop_ok(self) -> bool:
        # In a sweep with ASHA, stopping weak configs early is the point, not a failure.
        return self.kind == "sweep" and self.exp.sweep.scheduler == "asha"


def run(args, kind: str) -> int:
    """`pgolf validate` (kind="validation") and `pgolf tune` (kind="sweep")."""
    from pgolf.interrupts import exit_code, reason, terminate_as_interrupt

    t_start = time.time()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with terminate_as_interrupt():  # SIGTERM/SIGHUP like Ctrl-C; Tune's own SIGINT handler off
        inv = prepare(args, kind)
        platform_error = None
        try:
            grid = execute(inv, args)
        except KeyboardInterrupt as exc:
            command = "validate" if kind == "validation" else "tune"
            print(f"pgolf: {reason(exc)}; running trials were recorded as KILLED. Finish the missing seeds "
                  f"with: pgolf {command} {args.experiment} --resume (same --set/--seeds)", file=sys.stderr)
            _end_parent(inv, "KILLED", reason(exc))
            return exit_code(exc)
        except RayUnavailable as exc:
            print(f"pgolf: {exc}", file=sys.stderr)
            _end_parent(inv, "FAILED", str(exc))
            return 1
        except capacity.Unschedulable as exc:
            print(f"pgolf: {exc}", file=sys.stderr)
            _end_parent(inv, "FAILED", str(exc))
            return capacity.EXIT_CODE
        except Exception as exc:  # noqa: BLE001 - e.g. Tune's ResultGrid on a full runs dir
            # The trials' records live in MLflow, not in Tune's state: summarise them anyway.
            platform_error = f"Ray Tune failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"pgolf: {platform_error}; summarising the trials from MLflow", file=sys.stderr)
            grid = None
        return summarize_invocation(inv, grid, time.time() - t_start, platform_error=platform_error)


def prepare(args, kind: str) -> Invocation:
    """Everything that can fail on a bad file happens here, before Ray or MLflow is touched; then the
    MLflow experiment and parent run are created and --resume is planned."""
    exp = load_experiment(args.experiment, overrides=args.set, smoke=args.smoke)
    seeds = list(args.seeds) if getattr(args, "seeds", None) else list(exp.meta.seeds)
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"--seeds {seeds}: each seed may appear once")
    check_sweep(exp, kind)
    prices = cost.resolve_prices(exp.resources, gpu_hour_usd=getattr(args, "gpu_hour_usd", None),
                                 cpu_hour_usd=getattr(args, "cpu_hour_usd", None), file=exp.path)
    ledger = cost.Ledger(getattr(args, "max_gpu_hours", None), getattr(args, "max_usd", None))
    if ledger.max_usd is not None and not prices.priced:
        raise cost.PriceError(f"--max-usd needs a price: set [resources] gpu_hour_usd / cpu_hour_usd in {exp.path}, "
                              f"${cost.GPU_ENV} / ${cost.CPU_ENV} or --gpu-hour-usd / --cpu-hour-usd")
    stop_futile = bool(getattr(args, "stop_futile", False))
    power_below, std = float(getattr(args, "stop_power_below", 0.0) or 0.0), float(getattr(args, "seed_std_nats", 0.0) or 0.0)
    if power_below and not (stop_futile and 0 < power_below < 1 and std > 0):
        raise ExperimentError(f"--stop-power-below {power_below:g}: needs --stop-futile, a value in (0, 1) and "
                              f"--seed-std-nats > 0 (got {std:g})")
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
    for run_id in tracking.close_dead_invocations(uri, [experiment_id]):
        print(f"  closed run {run_id}: FAILED ({tracking.DRIVER_LOST})", flush=True)
    plan = make_plan(specs, tracking.finished_trials(uri, experiment_id) if args.resume else None)
    git_sha, dirty = tracking.git_state()
    # Second-resolution time plus a random part: two drivers started together never share a trial root,
    # a Tune run name or a parent run name.
    stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    runs_dir = os.path.abspath(args.runs_dir or "runs")
    from pgolf.safety import path_under

    trial_root = path_under(runs_dir, exp.meta.name, f"{kind}-{stamp}")
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
                     "resources.gpus": exp.resources.gpus, "resources.cpus": exp.resources.cpus,
                     "cost.gpu_hour_usd": prices.gpu_hour_usd, "cost.cpu_hour_usd": prices.cpu_hour_usd,
                     "cost.max_gpu_hours": ledger.max_gpu_hours, "cost.max_usd": ledger.max_usd,
                     "stop_futile": stop_futile}
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
              "eval_seconds": exp.budget.eval_seconds}, prices=prices)
    gate = (dict(ledger=ledger, stop_futile=stop_futile, prices=prices, power_below=power_below, seed_std_nats=std)
            if (ledger.capped or stop_futile) else None)
    inv = Invocation(kind=kind, exp=exp, seeds=seeds, plan=plan, uri=uri, experiment_id=experiment_id,
                     parent_id=parent_id, ctx=ctx, runs_dir=runs_dir, stamp=stamp, gate=gate, prices=prices)

    n = len(specs) if specs else exp.sweep.num_samples * len(seeds)
    print(f"pgolf {'validate' if kind == 'validation' else 'tune'}: {exp.meta.name} ({n} trials, seeds {seeds})",
          flush=True)
    print(f"  MLflow {uri}  experiment {exp.meta.name!r}  parent run {parent_id}", flush=True)
    for key, src in plan.duplicate_of.items():
        print(f"  skip {key}: same config hash and seed as {src}", flush=True)
    for key, r in plan.resumed.items():
        print(f"  skip {key}: finished earlier in MLflow run {r.info.run_id} (--resume)", flush=True)
    if prices.priced or ledger.capped or stop_futile:
        w = cost.TrialCost.of(exp.resources.gpus, exp.resources.cpus, cost.worst_seconds(ctx.deadline_seconds), prices)
        caps = f"; cap {ledger.left_text()}" if ledger.capped else ""
        print(f"  cost: {prices.describe()}; worst case per trial {cost.fmt_hours(w.gpu_seconds)} GPU-hours"
              f"{', ' + cost.fmt_usd(w.usd) if w.usd is not None else ''}{caps}", flush=True)
    if stop_futile and not (exp.baseline.config_hash or exp.baseline.per_seed or exp.baseline.record):
        print(f"  --stop-futile: no [baseline] in {exp.path}: no variant can be judged futile", flush=True)
    return inv


def _end_parent(inv: Invocation, status: str, reason: str) -> None:
    try:
        tracking.set_tags(tracking.client(inv.uri), inv.parent_id, {"status_reason": reason})
    finally:
        tracking.finish_run(inv.uri, inv.parent_id, status)


def summarize_invocation(inv: Invocation, grid: Any, wall: float, platform_error: str | None = None) -> int:
    """Results from MLflow -> table, statistics, parent run metrics and artifacts; the exit code."""
    exp, kind = inv.exp, inv.kind
    extra_specs = _optuna_specs(grid, inv.ctx, inv.plan, inv.uri) if grid is not None and inv.searcher else []
    errors = [str(r.error).splitlines()[0][:500] for r in (grid or []) if r.error is not None]
    errors += [platform_error] if platform_error else []
    records = collect(inv.uri, inv.experiment_id, inv.parent_id, inv.plan, extra_specs)
    early_ok = inv.early_stop_ok
    summary = aggregate(exp, records, inv.uri, inv.experiment_id, kind=kind,
                        overrides={s.variant: s.overrides for s in inv.plan.specs + extra_specs})
    # optuna samples the budget gate never started have no child run: they still count as requested
    unrun = len(inv.gate_state.outcomes) if inv.searcher and inv.gate_state is not None else 0
    n_bad = sum(not r.ok and not (early_ok and r.early_stopped) for r in records) + unrun
    n_req = len(records) + unrun
    all_ok = n_bad == 0 and not errors and bool(records)
    summary.update({"experiment": exp.meta.name, "experiment_file": exp.path, "kind": kind, "seeds": inv.seeds,
                    "parent_run_id": inv.parent_id, "tracking_uri": inv.uri, "all_ok": all_ok,
                    "trial_errors": errors,
                    "wall_seconds": round(wall, 1)})
    order = list(summary["variants"])
    if kind == "sweep":
        def score(name: str) -> tuple[bool, float]:
            s = summary["variants"][name][exp.meta.metric]
            return (s is None, s["mean"] if s else 0.0)
        order = sorted(order, key=score)
        summary["ranking"] = order

    spend = _costs(inv, summary)
    table, details = format_table(summary, order), format_details(summary)
    print()
    print(table)
    if details:
        print(details)
    metric = exp.meta.metric
    if kind == "sweep" and order and summary["variants"][order[0]][metric]:
        best = summary["variants"][order[0]]
        print(f"best: {order[0]} (config {best['config_hash']}) {metric} {best[metric]['mean']:.4f} "
              f"over {best['n_ok']} seed(s); re-validate it on fresh seeds before claiming a record")
    for e in summary["trial_errors"]:
        print(f"  trial error: {e}", file=sys.stderr)

    stored = _store_summary(inv, summary, table + "\n" + details + "\n", spend)
    end_reason = "ok" if all_ok else "; ".join(
        ([f"{n_bad} of {n_req} requested seed(s) did not finish OK"] if n_bad or not records else [])
        + ([platform_error] if platform_error else [])) or "trial errors (see trial_errors)"
    if stored is not True:
        all_ok = False
        end_reason = f"{end_reason}; summary not stored in MLflow ({stored})"
    _end_parent(inv, "FINISHED" if all_ok else "FAILED", end_reason)
    n_early = sum(r.early_stopped for r in records) if early_ok else 0
    early = f" ({n_early} stopped early by ASHA)" if n_early else ""
    print(f"{'all' if all_ok else 'NOT all'} {n_req} requested seed(s) finished OK{early}; "
          f"parent run {inv.parent_id} ({wall:.0f} s)", flush=True)
    return 0 if all_ok else 1


def _costs(inv: Invocation, summary: dict[str, Any]) -> dict[str, float]:
    """Every child run's cost/* metrics: per variant into the summary, summed (useful vs failed/killed)
    for the parent run, plus what the gate saved; prints one cost line."""
    from pgolf import gate as gate_mod

    runs = tracking.child_runs(inv.uri, inv.experiment_id, inv.parent_id)
    variant_of = {s.key: s.variant for s in inv.plan.specs}
    rows = []
    for r in runs:
        m = r.data.metrics
        row = {"status": r.info.status, "cost/gpu_seconds": m.get("cost/gpu_seconds"),
               "cost/cpu_seconds": m.get("cost/cpu_seconds"), "cost/usd": m.get("cost/usd")}
        rows.append(row)
        v = summary["variants"].get(variant_of.get(r.data.tags.get("pgolf.spec_key", ""), ""))
        if v is not None:
            v["cost_gpu_seconds"] = (v.get("cost_gpu_seconds") or 0.0) + float(row["cost/gpu_seconds"] or 0.0)
            if row["cost/usd"] is not None:
                v["cost_usd"] = (v.get("cost_usd") or 0.0) + float(row["cost/usd"])
    out = cost.sum_costs(rows)
    state = inv.gate_state
    if state is not None:
        out.update(gate_mod.saved_metrics(state))
        summary["gate"] = {"outcomes": {k: list(o) for k, o in state.outcomes.items()},
                           "futility": state.decisions, "ledger": inv.gate["ledger"].left_text()}
    summary["cost"] = out
    usd = f", {cost.fmt_usd(out['cost/usd'])}" if "cost/usd" in out else ""
    failed = f"{cost.fmt_hours(out['cost/gpu_seconds_failed'])} GPU-hours on failed/killed trials"
    line = f"cost: {cost.fmt_hours(out['cost/gpu_seconds'])} GPU-hours{usd} spent ({failed})"
    if out.get("futility/cancelled"):
        saved_usd = f", {cost.fmt_usd(out['cost/saved_usd_expected'])}" if "cost/saved_usd_expected" in out else ""
        line += (f"; --stop-futile cancelled {int(out['futility/cancelled'])} seed(s), saving "
                 f"{cost.fmt_hours(out['cost/saved_gpu_seconds_expected'])} GPU-hours{saved_usd} expected "
                 f"({cost.fmt_hours(out['cost/saved_gpu_seconds_worst'])} worst case)")
    if out.get("budget/not_started"):
        line += (f"; {int(out['budget/not_started'])} seed(s) NOT STARTED (budget): "
                 + ("a larger cap samples them" if inv.searcher else "--resume runs them"))
    if out["cost/gpu_seconds"] > 0 or "cost/usd" in out or state is not None:  # CPU runs without a price: nothing to say
        print(line, flush=True)
    return out


def _store_summary(inv: Invocation, summary: dict, table: str, spend: dict[str, float]) -> bool | str:
    """The summary and table onto the parent run; True, or why not. A copy always goes to the
    invocation's trial root too, so a full artifact store never loses the summary."""
    doc = json.loads(json.dumps(summary, default=str))
    local = None
    try:
        os.makedirs(inv.ctx.runs_dir, exist_ok=True)
        local = os.path.join(inv.ctx.runs_dir, "validation_summary.json")
        with open(local, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        with open(os.path.join(inv.ctx.runs_dir, "validation_table.txt"), "w", encoding="utf-8") as fh:
            fh.write(table)
    except OSError as exc:
        print(f"pgolf: could not write the summary under {inv.ctx.runs_dir}: {exc}", file=sys.stderr)
        local = None
    try:
        c = tracking.client(inv.uri)
        tracking.log_metrics(c, inv.parent_id, [(k, v, 0) for k, v in {**parent_metrics(summary), **spend}.items()])
        c.log_dict(inv.parent_id, doc, "validation_summary.json")
        c.log_text(inv.parent_id, table, "validation_table.txt")
        return True
    except Exception as exc:  # noqa: BLE001 - a full or unreachable store: say so, keep the local copy
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        where = f"; local copy {local}" if local else ""
        print(f"pgolf: the summary did not reach MLflow ({why}){where}", file=sys.stderr)
        return why + where


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


def _optuna_specs(grid, ctx: TrialContext, plan: TrialPlan, uri: str) -> list[TrialSpec]:
    """Searcher mode has no specs up front: rebuild one per finished trial from its config. Trials that
    --resume answered from an earlier run point at that run, which is not a child of this parent."""
    specs, seen = [], {}
    c = tracking.client(uri)
    for r in grid:
        spec = spec_from_sample(ctx.experiment, ctx.seeds, ctx.data_root, r.config)
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
