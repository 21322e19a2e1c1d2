"""The Ray Tune runner behind `pgolf validate` and `pgolf tune`: connect to Ray, serve the pending
trials to Tune (`pending_trials`), see each finished one (`TrialEvents.finished`), and always leave the
MLflow children of an interrupted or stopped invocation closed. `inv` is an orchestrate.Invocation
(taken as a value, not imported, so the runner does not depend on the command)."""
from __future__ import annotations

import os
from typing import Any

from pgolf import capacity, tracking
from pgolf.specs import optuna_space
from pgolf.trainers.contract import FINAL_BPB, VAL_BPB


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
            _loopback_only()
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


def _loopback_only() -> None:
    """A cluster pgolf starts for itself serves only this machine: GCS, raylet, object manager and the
    unauthenticated metrics endpoints bind 127.0.0.1 instead of every interface. Ray derives every
    bind address from the node IP, which is the loopback address when it believes clusters are off
    (its Windows/macOS default); the processes it starts read the variable, this process the constant."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def default_concurrency(gpus: int, cpus: int) -> int:
    """floor(cluster GPUs / GPUs per trial); CPU-only trials: floor(cluster CPUs / CPUs per trial)."""
    import ray

    res = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(res.get("GPU", 0) // gpus))
    return max(1, int(res.get("CPU", 1) // max(cpus, 1)))


def pending_trials(inv: Any) -> tuple[dict[str, Any], int, int]:
    """The one place the trials still to run are handed to Tune: (param_space, num_samples, total).
    Fixed specs go in as a grid over their keys; a searcher (Optuna) samples axis values itself and
    each suggestion repeats over the seeds."""
    from ray import tune

    exp = inv.exp
    if inv.searcher:
        n = exp.sweep.num_samples * len(inv.seeds)
        return {"axes": optuna_space(exp)}, n, n
    return {"key": tune.grid_search([s.key for s in inv.plan.to_run])}, 1, len(inv.plan.to_run)


def _trial_events(total: int):
    from ray.tune import Callback

    class TrialEvents(Callback):
        """The one place each finished trial is seen (one progress line each, instead of Tune's tables)."""

        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            self.finished(trial, trial.last_result or {})

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            print(f"  [{self.done}/{total}] trial {trial.trial_id} ERROR (platform error; see the Ray logs "
                  f"under {trial.local_path})", flush=True)

        def finished(self, trial, r: dict) -> None:
            key = trial.config.get("key") or f"{r.get('variant', '?')}-s{r.get('seed', '?')}"
            if not r.get("pgolf_done"):
                print(f"  [{self.done}/{total}] {key:<28} {'STOPPED':<9} at step {r.get('step', '?')} "
                      f"({VAL_BPB} {r.get(VAL_BPB, float('nan')):.4f})", flush=True)
                return
            score = r.get(FINAL_BPB)
            tail = f"{FINAL_BPB} {score:.4f}" if isinstance(score, float) else r.get("status_reason", "")
            print(f"  [{self.done}/{total}] {key:<28} {r.get('status', 'done'):<9} {tail}", flush=True)

    return TrialEvents()


def run_tuner(inv: Any, *, max_concurrent: int, storage_path: str, run_name: str) -> Any:
    from ray import tune

    from pgolf.trial import run_trial

    exp, ctx = inv.exp, inv.ctx
    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", "30")  # a stuck trial costs 30 s, not 600 s
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no status tables, our progress lines only
    # Intermediate reports carry val/bpb, the final one final/val_bpb: by design not every report has
    # every metric the searcher or scheduler reads.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    demand = capacity.trial_demand(exp.resources.gpus, exp.resources.cpus)  # what the capacity check checked
    resources = {"cpu": demand["CPU"], "gpu": demand.get("GPU", 0)}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    param_space, num_samples, total = pending_trials(inv)

    search_alg = scheduler = None
    if inv.gate is not None and not inv.searcher:
        # budget caps / futility: the gate serves the trials one at a time instead of a grid
        from pgolf.gate import make_searcher

        search_alg = make_searcher(inv, **inv.gate)
        inv.gate_state = search_alg.state
        param_space, num_samples = {}, max(len(inv.plan.to_run), 1)
    elif inv.searcher:
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        search_alg = Repeater(OptunaSearch(metric=exp.meta.metric, mode="min", seed=exp.sweep.seed),
                              repeat=len(inv.seeds), set_index=True)
        if inv.gate is not None:  # budget caps around the points Optuna picks
            from pgolf.gate import make_budget_searcher

            search_alg = make_budget_searcher(inv, search_alg, **inv.gate)
            inv.gate_state = search_alg.state
    if inv.kind == "sweep" and exp.sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        cfg = exp.config
        # max_t one past the last step: ASHA stops a trial whose time_attr reaches max_t, and the last
        # periodic validation (step == iterations) comes before quantization and the scored evaluation.
        scheduler = ASHAScheduler(time_attr="step", metric=VAL_BPB, mode="min",
                                  max_t=max(cfg.schedule.iterations, 1) + 1,
                                  grace_period=max(cfg.eval.val_loss_every, 1), reduction_factor=2)

    def dirname(trial) -> str:
        key = trial.config.get("key") or f"i{trial.config.get('__trial_index__', 0)}"
        return f"{trial.trial_id}_{tracking.metric_key(key).replace('/', '_')}"[:120]

    # Actor reuse saves an actor start per trial, but with a scheduler that stops trials it once left a
    # grid point never started (CI, 2026-12-02); Ray turned it off by default for such cases (ray#42951).
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=num_samples, max_concurrent_trials=max_concurrent,
                                    search_alg=search_alg, scheduler=scheduler,
                                    trial_dirname_creator=dirname, reuse_actors=scheduler is None),
        run_config=tune.RunConfig(name=run_name, storage_path=storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[_trial_events(total)]),
    )
    from pgolf.safety import secrets_hidden

    with secrets_hidden():  # Tune would copy AWS_* into every trial's runtime env, which Ray logs
        return tuner.fit()


def execute(inv: Any, args) -> Any:
    """Run the planned trials through Ray Tune; returns the ResultGrid (None when nothing had to run)."""
    if not inv.plan.to_run and not inv.searcher:
        return None
    import ray

    interrupted: KeyboardInterrupt | None = None
    owned = False
    try:
        owned = connect_ray(args.address)
        from pgolf.interrupts import reassert

        reassert()  # ray.init replaced the SIGTERM handler with one that aborts
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
        return run_tuner(inv, max_concurrent=mc, storage_path=os.path.abspath(args.storage_path or os.path.join(inv.runs_dir, "tune")),
                         run_name=f"{exp.meta.name}-{inv.kind}-{inv.stamp}")
    except KeyboardInterrupt as exc:
        interrupted = exc
        raise
    finally:
        if interrupted:
            # Actors first (their trial threads must not close runs half-way), then the trainers they
            # started in their own process groups, then the runs, with what the trainers left on disk.
            ray.shutdown()
            from pgolf.trainer_process import stop_trainers_below

            stop_trainers_below(inv.ctx.runs_dir)
        from pgolf.interrupts import reason

        tracking.mark_stale_children(
            inv.uri, inv.experiment_id, inv.parent_id,
            f"{reason(interrupted)}: the invocation was stopped before this trial finished" if interrupted
            else "stopped by Ray Tune before the trial could record its end (scheduler decision or a lost worker)")
        if owned and not interrupted:
            ray.shutdown()
