"""pgolf plan EXPERIMENT.toml: what `validate` (or `tune` with --tune) would run and what it would cost,
without starting anything: trials after --resume skips, GPUs each, worst-case GPU-hours (the trials'
deadlines), expected GPU-hours (the budget caps), dollars when a price is set, wall time at the
concurrency the cluster allows, and what --max-gpu-hours / --max-usd would leave unstarted."""
from __future__ import annotations

import os
import shutil
import subprocess

from pgolf.commands._orchestration import add_cost_args


def add_arguments(p) -> None:
    p.add_argument("experiment", help="experiment TOML file")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                   help="seeds (default: [experiment] seeds of the file)")
    p.add_argument("--tune", action="store_true", help="plan `pgolf tune` (the [sweep]) instead of `validate`")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any key of the file")
    p.add_argument("--smoke", action="store_true", help="plan the --smoke version")
    p.add_argument("--resume", action="store_true", help="leave out (config hash, seed) pairs already FINISHED in MLflow")
    p.add_argument("--tracking-uri", default=None, help="MLflow store for --resume (default as for validate)")
    p.add_argument("--address", default=None,
                   help="read GPUs/CPUs from this running Ray cluster (default: this machine's GPUs and CPUs)")
    p.add_argument("--max-concurrent", type=int, default=0, metavar="N", help="trials at a time (as for validate)")
    p.add_argument("--data-dir", default=None, help="data root (default: $PGOLF_DATA_DIR or ./data)")
    add_cost_args(p)


def _local_resources() -> tuple[float, float, str]:
    cpus = float(os.cpu_count() or 1)
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return float(len([d for d in vis.split(",") if d.strip() and d.strip() != "-1"])), cpus, "this machine"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
            return float(sum(line.startswith("GPU ") for line in out.splitlines())), cpus, "this machine"
        except (OSError, subprocess.SubprocessError):
            pass
    return 0.0, cpus, "this machine"


def _cluster(address: str) -> tuple[float, float, str]:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        res = ray.cluster_resources()
        return float(res.get("GPU", 0)), float(res.get("CPU", 0)), f"Ray cluster {address}"
    finally:
        ray.shutdown()


def build_plan(args) -> dict:
    """The trials validate/tune would run, resolved and hashed exactly as they would resolve them. Reads
    MLflow only for --resume and only if the store and experiment exist; creates nothing."""
    from pgolf import cost, tracking
    from pgolf.experiment import ExperimentError, load_experiment
    from pgolf.specs import check_sweep, make_plan, sweep_specs, validate_specs
    from pgolf.trial import deadline_for

    kind = "sweep" if args.tune else "validation"
    exp = load_experiment(args.experiment, overrides=args.set, smoke=args.smoke)
    seeds = list(args.seeds) if args.seeds else list(exp.meta.seeds)
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"--seeds {seeds}: each seed may appear once")
    check_sweep(exp, kind)
    prices = cost.resolve_prices(exp.resources, gpu_hour_usd=args.gpu_hour_usd, cpu_hour_usd=args.cpu_hour_usd,
                                 file=exp.path)
    cost.Ledger(args.max_gpu_hours, args.max_usd)  # a bad cap fails here
    from pgolf.datasets import default_data_dir

    data_root = os.path.abspath(args.data_dir) if args.data_dir else str(default_data_dir())
    notes = []
    if kind == "sweep" and exp.sweep.search == "optuna":
        keys = [f"sample {i + 1}-s{s}" for i in range(exp.sweep.num_samples) for s in seeds]
        notes.append("optuna picks the points while it runs: --resume skips cannot be known in advance")
    else:
        specs = sweep_specs(exp, seeds, data_root) if kind == "sweep" else validate_specs(exp, seeds, data_root)
        finished = None
        if args.resume:
            uri, _ = tracking.resolve_tracking_uri(args.tracking_uri)
            finished = _finished(uri, exp.meta.name)
        p = make_plan(specs, finished)
        keys = [s.key for s in p.to_run]
        notes += [f"skip {k}: finished earlier in MLflow run {r.info.run_id} (--resume)" for k, r in p.resumed.items()]
        notes += [f"skip {k}: same config hash and seed as {src}" for k, src in p.duplicate_of.items()]
    deadline = deadline_for(exp.budget)
    g, c = exp.resources.gpus, max(exp.resources.cpus, 1)
    return {"experiment": exp, "kind": kind, "seeds": seeds, "keys": keys, "notes": notes, "prices": prices,
            "deadline": deadline, "gpus": g, "cpus": c,
            "worst": cost.TrialCost.of(g, c, cost.worst_seconds(deadline), prices),
            "expected": cost.TrialCost.of(g, c, cost.expected_seconds(exp.budget), prices),
            "worst_s": cost.worst_seconds(deadline), "expected_s": cost.expected_seconds(exp.budget)}


def _finished(uri: str, name: str) -> dict:
    from pgolf import tracking

    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        return {}
    e = tracking.client(uri).get_experiment_by_name(name)
    return tracking.finished_trials(uri, e.experiment_id) if e is not None else {}


def budget_starts(n: int, worst, actual, ledger) -> int:
    """Trials that start under the caps, one after another, if each is admitted on `worst` and spends
    `actual`."""
    started = 0
    for i in range(n):
        if ledger.check(worst) != "start":
            break
        ledger.finish(str(i), actual.gpu_seconds, actual.usd)
        started += 1
    return started


def format_plan(plan: dict, *, cluster_gpus: float, cluster_cpus: float, where: str, max_concurrent: int = 0,
                ledger=None) -> str:
    from pgolf import cost

    exp, keys, worst, expd = plan["experiment"], plan["keys"], plan["worst"], plan["expected"]
    n, g, c = len(keys), plan["gpus"], plan["cpus"]
    verb = "tune" if plan["kind"] == "sweep" else "validate"
    lines = [f"pgolf plan: {verb} {exp.meta.name} ({n} trial(s) to run, seeds {plan['seeds']}); nothing is started",
             f"  per trial: {g} GPU(s) + {c} CPU(s); worst case {plan['worst_s']:g} s (deadline "
             f"{plan['deadline']:g} s + kill grace), expected {plan['expected_s']:g} s (train + eval caps)",
             f"  {plan['prices'].describe()}"]
    lines += [f"  {note}" for note in plan["notes"]]
    priced = plan["prices"].priced
    head = ["trial", "GPUs", "worst GPU-h", "expected GPU-h"] + (["worst $", "expected $"] if priced else [])
    rows = [[k, str(g), cost.fmt_hours(worst.gpu_seconds), cost.fmt_hours(expd.gpu_seconds)]
            + ([cost.fmt_usd(worst.usd), cost.fmt_usd(expd.usd)] if priced else []) for k in keys]
    tot = [f"total ({n})", "", cost.fmt_hours(worst.gpu_seconds * n), cost.fmt_hours(expd.gpu_seconds * n)]
    if priced:
        tot += [cost.fmt_usd((worst.usd or 0) * n), cost.fmt_usd((expd.usd or 0) * n)]
    rows.append(tot)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines += ["  " + "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head] + rows]
    if max_concurrent:
        conc, why = max_concurrent, "--max-concurrent"
    elif g > 0:
        conc, why = int(cluster_gpus // g), f"{where}: {cluster_gpus:g} GPUs // {g} per trial"
    else:
        conc, why = max(1, int(cluster_cpus // c)), f"{where}: {cluster_cpus:g} CPUs // {c} per trial"
    if conc < 1:
        lines.append(f"  {where} has {cluster_gpus:g} GPU(s): a {g}-GPU trial cannot start there "
                     f"(pass --address for a Ray cluster); wall time shown for one trial at a time")
        conc, why = 1, f"one {g}-GPU node"
    lines.append(f"  wall time at {conc} trial(s) at a time ({why}): worst "
                 f"{cost.fmt_wall(cost.wall_seconds(n, conc, plan['worst_s']))}, expected "
                 f"{cost.fmt_wall(cost.wall_seconds(n, conc, plan['expected_s']))}")
    if ledger is not None and ledger.capped:
        if ledger.max_usd is not None and not priced:
            raise cost.PriceError("--max-usd needs a price: set [resources] gpu_hour_usd / cpu_hour_usd, "
                                  f"${cost.GPU_ENV} or --gpu-hour-usd")
        caps = ", ".join(x for x in (f"{ledger.max_gpu_hours:g} GPU-hours" if ledger.max_gpu_hours is not None else "",
                                     f"${ledger.max_usd:,.2f}" if ledger.max_usd is not None else "") if x)
        sure = budget_starts(n, worst, worst, cost.Ledger(ledger.max_gpu_hours, ledger.max_usd))
        likely = budget_starts(n, worst, expd, cost.Ledger(ledger.max_gpu_hours, ledger.max_usd))
        lines.append(f"  budget cap {caps}: at least {sure} of {n} trial(s) start even if every one runs to its "
                     f"deadline; about {likely} if they take the expected time; the rest would "
                     f"be NOT STARTED (budget) until --resume")
    return "\n".join(lines)


def run(args) -> int:
    from pgolf import cost

    plan = build_plan(args)
    gpus, cpus, where = _cluster(args.address) if args.address else _local_resources()
    print(format_plan(plan, cluster_gpus=gpus, cluster_cpus=cpus, where=where, max_concurrent=args.max_concurrent,
                      ledger=cost.Ledger(args.max_gpu_hours, args.max_usd)))
    return 0
