"""One Ray Tune trial: run the trainer for one (config, seed) in its own process group, follow its
metrics.jsonl, report intermediate metrics to Tune, enforce a wall-clock deadline and record everything
in an MLflow child run.

The trainer is a subprocess (torchrun on more than one GPU) rather than code in the Tune actor, so the
trial runs exactly what a submission runs, and a crash, a SIGKILL or a hang of the trainer cannot take
the trial down with it: the trial always closes its MLflow run with a status and a reason and reports a
final result, so the other trials go on.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgolf import tracking
from pgolf.specs import TrialSpec, spec_from_sample
from pgolf.trainers import contract as C
from pgolf.trainer_process import (TERM_GRACE_SECONDS, MetricsTail, classify, fingerprints_from_log, kill_group,
                                   load_json, log_tail)

POLL_SECONDS = 0.5
# Startup (imports, data, compile warm-up), quantization and compression on top of the two caps when
# budget.trial_timeout_seconds is 0.
DEADLINE_SLACK_SECONDS = 300.0



@dataclass
class TrialContext:
    """Shared by every trial of one invocation (put in Ray's object store once)."""
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git_sha: str
    trainer: str
    runs_dir: str  # absolute; trial run dirs go below it
    gpus: int
    cpus: int
    deadline_seconds: float
    demo_root: str | None = None  # set when the data is the demo corpus: built on the trial's node if missing
    specs: dict[str, TrialSpec] = field(default_factory=dict)
    kind: str = "validation"
    # Searcher mode (optuna): trials get sampled axis values, not a spec key, and resolve the spec here.
    experiment: Any = None
    seeds: list[int] = field(default_factory=list)
    data_root: str | None = None
    resume: bool = False
    poll_seconds: float = POLL_SECONDS
    caps: dict[str, float] = field(default_factory=dict)  # compliance.Caps fields from [budget]
    prices: Any = None  # pgolf.cost.Prices: cost/usd is logged only when a price is set


def deadline_for(budget) -> float:
    """The trial's own wall-clock limit: budget.trial_timeout_seconds, or both caps plus slack."""
    if budget.trial_timeout_seconds > 0:
        return float(budget.trial_timeout_seconds)
    return float(budget.train_seconds + budget.eval_seconds + DEADLINE_SLACK_SECONDS)


# --------------------------------------------------------------------------------------------------
# the trial


def _trainer_env(threads: int) -> dict[str, str]:
    from pgolf.safety import without_secrets

    env = without_secrets(os.environ)  # the trainer needs no credential; its env can end up in logs
    # Ray sets OMP_NUM_THREADS to the trial's CPU count (1 unless asked); the trainer's ranks inherit it,
    # so say what is meant instead of relying on that.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(threads, 1))
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    env.setdefault("NCCL_DEBUG", "WARN")
    env.pop("MLFLOW_RUN_ID", None)  # a trainer that imported mlflow must never log into our run
    env["PYTHONUNBUFFERED"] = "1"
    return env


def execute_trial(spec: TrialSpec, ctx: TrialContext, *, trial_id: str = "local",
                  report: Callable[[dict], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, tags: dict[str, str] | None = None) -> dict:
    """Run one trial end to end; returns the final report. Inside Tune, `report` is `tune.report` and
    `should_stop` tells when Tune has decided to stop the trial (ASHA, Ctrl-C); `tags` go on the child
    run from its creation (the Ray node it runs on)."""
    from pgolf.launch import trainer_command, write_run_config

    t_trial = time.monotonic()
    report = report or (lambda metrics: None)
    should_stop = should_stop or (lambda: False)
    from pgolf.safety import path_under, slug

    run_dir = path_under(ctx.runs_dir, slug(tracking.trial_run_name(spec.variant, spec.seed)) + f"-{trial_id}")
    threads = spec.cfg.run.threads or max(ctx.cpus, 1)
    params = tracking.flatten(dataclasses.asdict(spec.cfg))  # lenient: a version mismatch fails in setup below
    params.pop("run.run_dir", None)
    rec = tracking.TrialRecorder(
        ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, variant=spec.variant, seed=spec.seed,
        config_hash=spec.config_hash, git_sha=ctx.git_sha, trainer=ctx.trainer, ray_trial_id=trial_id,
        params=params, extra_tags={"pgolf.run_dir": run_dir, "pgolf.invocation": ctx.kind, "pgolf.spec_key": spec.key,
                                   **({"overrides": json.dumps(spec.overrides, sort_keys=True)} if spec.overrides else {}),
                                   **(tags or {})})
    proc: subprocess.Popen | None = None
    timed_out = stopped = False
    result: dict | None = None
    last: dict[str, Any] = {}
    status, reason = "FAILED", "trial did not start the trainer"
    out_path = os.path.join(run_dir, "trainer_output.log")
    try:
        try:
            if ctx.demo_root:  # the demo of this trial's data.variant, next to the data root's `demo/`
                from pgolf.demo_corpus import ensure_variant_demo
                ensure_variant_demo(os.path.dirname(ctx.demo_root), spec.cfg.data.variant)
            cfg = copy.deepcopy(spec.cfg)
            cfg.run.threads = cfg.run.threads if cfg.run.threads > 0 else threads
            cfg_path = write_run_config(cfg, run_dir)
        except Exception as exc:  # noqa: BLE001 - any setup failure is this trial's failure, not the sweep's
            reason = f"trial setup failed: {type(exc).__name__}: {exc}"
            raise _SetupFailed() from exc
        from pgolf import watchdog
        cmd = watchdog.command(os.getpid(), trainer_command(cfg_path, ctx.gpus))  # ends with this process
        with open(out_path, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=run_dir, env=_trainer_env(threads), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        with open(os.path.join(run_dir, "trainer.pid"), "w") as fh:
            fh.write(f"{proc.pid}\n")
        tail = MetricsTail(os.path.join(run_dir, C.METRICS_FILE))
        started = time.monotonic()
        while True:
            rc = proc.poll()
            events = tail.read()
            if events:
                _follow(events, rec, run_dir, last, report)
            if rc is not None:
                break
            if should_stop():
                stopped = True
                kill_group(proc, grace=1.0)
                break
            if time.monotonic() - started > ctx.deadline_seconds:
                timed_out = True
                kill_group(proc)
                break
            time.sleep(ctx.poll_seconds)
        events = tail.read()
        if events:
            _follow(events, rec, run_dir, last, report=None)
        result = load_json(os.path.join(run_dir, C.RESULT_FILE))
        from pgolf.ttt_audit import audit_ttt
        result = audit_ttt(result, run_dir, cfg)
        status, reason = classify(proc.returncode, result, timed_out=timed_out, stopped=stopped,
                                  deadline=ctx.deadline_seconds, output_tail=log_tail(out_path),
                                  last_step=last.get("step"))
    except _SetupFailed:
        pass
    except (SystemExit, KeyboardInterrupt):
        # tune.report raises SystemExit inside the trial thread when Tune stops the trial (ASHA, Ctrl-C).
        stopped = True
        status, reason = classify(None, None, timed_out=False, stopped=True, deadline=ctx.deadline_seconds,
                                  output_tail=[], last_step=last.get("step"))
        raise
    except Exception as exc:
        status, reason = "FAILED", f"platform error in the trial: {type(exc).__name__}: {exc}"
        raise
    finally:
        if proc is not None:
            kill_group(proc, grace=1.0 if stopped else TERM_GRACE_SECONDS)
        wall = time.monotonic() - t_trial
        # GPUs held x the trial's own wall time, failures included: what the trial cost, whatever its outcome
        from pgolf.cost import Prices, trial_metrics
        spend = trial_metrics(ctx.gpus, ctx.cpus, wall, ctx.prices or Prices())
        _close(rec, status, reason, run_dir, result, out_path, ctx.caps, wall=wall, spend=spend)
    final = {**_final_report(spec, rec.run_id, status, reason, result, last), **spend}
    if not stopped:  # a stopped trial must not report again: Tune would end the thread right there
        report(final)
    return final


class _SetupFailed(Exception):
    pass


def _follow(events: list[dict], rec: tracking.TrialRecorder, run_dir: str, last: dict,
            report: Callable[[dict], None] | None) -> None:
    try:
        rec.log_events(events)
    except Exception:  # noqa: BLE001 - a busy store must not end a healthy run; the events stay queued
        pass
    for ev in events:
        kind = ev.get("event")
        if kind == C.EVENT_START:
            env, data = fingerprints_from_log(os.path.join(run_dir, C.TRAIN_LOG))
            try:
                rec.fingerprint(env, data)
            except Exception:  # noqa: BLE001 - retried from result.json at the end
                pass
        elif kind == C.EVENT_TRAIN:
            last["step"] = ev.get("step")
            if C.TRAIN_LOSS in ev:
                last[C.TRAIN_LOSS] = ev[C.TRAIN_LOSS]
        elif kind == C.EVENT_VAL:
            last["step"] = ev.get("step")
            for k in (C.VAL_LOSS, C.VAL_BPB):
                if k in ev:
                    last[k] = ev[k]
            if report is not None:
                report({k: v for k, v in last.items() if isinstance(v, (int, float))})


def _close(rec: tracking.TrialRecorder, status: str, reason: str, run_dir: str, result: dict | None,
           out_path: str, caps: dict[str, float], wall: float, spend: dict[str, float] | None = None) -> None:
    # trial/wall_s against time/train_s + time/eval_s is the platform's overhead per trial.
    extra = {"trial/ok": 1.0 if status == "FINISHED" else 0.0, "trial/wall_s": wall, **(spend or {})}
    if status != "FINISHED":
        tail = log_tail(out_path)
        if tail and os.path.isdir(run_dir):
            with open(os.path.join(run_dir, "log_tail.txt"), "w", encoding="utf-8") as fh:
                fh.write("\n".join(tail) + "\n")
        env, data = fingerprints_from_log(os.path.join(run_dir, C.TRAIN_LOG))
        try:
            rec.fingerprint(env, data)
        except Exception:  # noqa: BLE001 - fingerprints are best effort; closing the run is not
            pass
    if result is not None and result.get("config_hash") and result["config_hash"] != rec.config_hash:
        # The trainer sources changed between the driver hashing them and the trainer starting: record
        # what actually ran, so --resume and the statistics never mix this run with the planned config.
        rec.set_tags({"config_hash": result["config_hash"], "planned_config_hash": rec.config_hash})
    if result is not None:
        try:
            from pgolf.compliance import Caps, check_seed
            verdict = check_seed(result, caps=Caps(**caps))
            rec.set_tags({"compliant": "yes" if verdict.compliant else "no",
                          "compliance_reasons": "; ".join(verdict.reasons)})
        except Exception:  # noqa: BLE001
            pass
    rec.finish(status=status, reason=reason, run_dir=run_dir, result=result, extra_metrics=extra)


FINAL_KEYS = (C.FINAL_BPB, C.FINAL_LOSS, C.ARTIFACT_BYTES, C.HEADROOM_BYTES, C.TRAIN_SECONDS,
              C.EVAL_SECONDS, C.TOKENS_PER_BYTE, C.STEPS)


def _final_report(spec: TrialSpec, run_id: str, status: str, reason: str, result: dict | None,
                  last: dict) -> dict:
    out: dict[str, Any] = {
        "pgolf_done": True, "ok": status == "FINISHED", "status": status, "status_reason": reason,
        "mlflow_run_id": run_id, "variant": spec.variant, "seed": spec.seed, "config_hash": spec.config_hash,
        "step": int(last.get("step") or 0),
    }
    for k in (C.VAL_BPB, C.VAL_LOSS, C.TRAIN_LOSS):
        if k in last:
            out[k] = last[k]
    if status == "FINISHED" and result:
        # Only an OK run's score reaches the searcher: an over-budget run must not look like a good config.
        out.update({k: result[k] for k in FINAL_KEYS if isinstance(result.get(k), (int, float))})
        out["step"] = int(result.get("steps", out["step"]))
    return out


# --------------------------------------------------------------------------------------------------
# Tune entry point


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The function trainable (`tune.with_parameters(run_trial, ctx=...)`)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id() or "local"
    if "key" in config:
        spec = ctx.specs[config["key"]]
    else:
        spec = spec_from_sample(ctx.experiment, ctx.seeds, ctx.data_root, config)
        if ctx.resume:
            done = tracking.finished_trials(ctx.tracking_uri, ctx.experiment_id).get((spec.config_hash, spec.seed))
            if done is not None:
                tune.report(_resumed_report(spec, done))
                return
    execute_trial(spec, ctx, trial_id=trial_id, report=tune.report, should_stop=_tune_stop_requested,
                  tags=_node_tags())


def _node_tags() -> dict[str, str]:
    """Which Ray node ran the trial: on a cluster, where its run directory and logs are."""
    import ray

    try:
        return {"ray.node_id": ray.get_runtime_context().get_node_id(), "ray.node_ip": ray.util.get_node_ip_address()}
    except Exception:  # noqa: BLE001 - provenance only
        return {}


def _tune_stop_requested() -> bool:
    """Whether Tune has asked this trial to stop. Tune only delivers a stop inside `tune.report`, which
    a trial waiting for its next validation may not call for minutes of GPU time; the session's stop
    event is not public API, so any change to it degrades to "never" (the trial then stops at its next
    report, and Ray kills the trainer with the worker)."""
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        return bool(session is not None and session.stop_event.is_set())
    except Exception:  # noqa: BLE001
        return False


def _resumed_report(spec: TrialSpec, run) -> dict:
    m = run.data.metrics
    out = {"pgolf_done": True, "ok": True, "status": "FINISHED", "status_reason": "resumed: finished earlier",
           "mlflow_run_id": run.info.run_id, "variant": spec.variant, "seed": spec.seed,
           "config_hash": spec.config_hash, "resumed": True, "step": int(m.get("steps", 0))}
    out.update({k: m[k] for k in FINAL_KEYS if k in m})
    return out
