"""Builders for the MLflow stores the report, plot and submission tests read.

Synthetic stores are written with the plain MLflow client, with the tag, metric and artifact names of
design.md / pgolf.tracking, so the tests pin the contract the dashboards read. Real stores come from
tiny CPU trainings on the demo corpus, logged through pgolf.tracking.TrialRecorder (what a trial does).
"""
from __future__ import annotations

import json
import math
import os
import shutil

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TOKENS_PER_BYTE = 0.41


_TEMPLATE: list[str] = []


def template_db() -> str:
    """A migrated, empty sqlite store, made once per test process; copying it costs milliseconds where
    migrating a fresh one costs seconds."""
    import atexit
    import tempfile

    from mlflow.tracking import MlflowClient

    if not _TEMPLATE:
        tmp = tempfile.mkdtemp(prefix="pgolf_mlflow_template_")
        atexit.register(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "template.db")
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


def new_store(template: str, where) -> tuple[str, str]:
    """(tracking URI, artifact root) of a fresh store in `where`."""
    os.makedirs(str(where), exist_ok=True)
    db = os.path.join(str(where), "mlflow.db")
    shutil.copyfile(template, db)
    return f"sqlite:///{db}", os.path.join(str(where), "mlartifacts")


def store_with_parent(where, name: str, *, kind: str = "validation") -> tuple[str, str, str]:
    """(tracking URI, experiment id, parent run id) of a fresh store in `where` with one experiment
    `name` and one parent run."""
    uri, root = new_store(template_db(), where)
    exp = experiment(uri, root, name)
    return uri, exp, parent(uri, exp, kind=kind)


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment(uri: str, root: str, name: str) -> str:
    from pathlib import Path

    return client(uri).create_experiment(name, artifact_location=Path(root, name).resolve().as_uri())


def parent(uri: str, exp_id: str, *, kind: str = "validation", name: str = "validation-20260101-000000",
           summary: dict | None = None, budget: tuple[int, float, float] = (16_000_000, 600.0, 600.0),
           status: str = "FINISHED") -> str:
    c = client(uri)
    run = c.create_run(exp_id, run_name=name, tags={"pgolf.kind": kind, "git_sha": "abc123", "status_reason": "ok",
                                                     "experiment_file": "/x/experiments/demo.toml"})
    rid = run.info.run_id
    for k, v in zip(("budget.artifact_bytes", "budget.train_seconds", "budget.eval_seconds"), budget):
        c.log_param(rid, k, v)
    if summary is not None:
        c.log_dict(rid, summary, "validation_summary.json")
    c.set_terminated(rid, status=status)
    return rid


def synthetic_result(*, seed: int, config_hash: str, bpb: float, artifact_bytes: int = 15_000_000,
                     train_s: float = 590.0, eval_s: float = 300.0, steps: int = 5000, step_ms: float = 118.0,
                     ttt: str = "off", gpus: int = 8) -> dict:
    loss = bpb * math.log(2) / TOKENS_PER_BYTE
    code = 60_000
    phases = {"warmup": 12.0, "train": train_s - 5.0, "gptq_calibration": 5.0, "quantize": 3.0, "compress": 20.0,
              "dequantize": 1.0, "roundtrip_eval": eval_s * 0.2, "sliding_eval": eval_s * 0.8 - 1.0}
    return {
        "seed": seed, "config_hash": config_hash, "status": "ok", "steps": steps,
        "final/val_bpb": bpb, "final/val_loss": loss, "prequant/val_bpb": bpb - 0.01, "quant/val_bpb": bpb + 0.002,
        "sliding/val_bpb": bpb, "artifact/bytes": artifact_bytes, "artifact/code_bytes": code,
        "artifact/model_bytes": artifact_bytes - code, "artifact/headroom_bytes": 16_000_000 - artifact_bytes,
        "time/train_s": train_s, "time/eval_s": eval_s, "train/step_ms": step_ms,
        "data/tokens_per_byte": TOKENS_PER_BYTE,
        **{f"time/{k}_s": v for k, v in phases.items() if k != "train"},
        "phases": phases,
        "env": {"gpu_name": "NVIDIA H100 80GB HBM3" if gpus else "", "gpu_count": gpus,
                "device": "cuda" if gpus else "cpu", "torch": "2.9.1+cu128", "node_class": "8xH100" if gpus else "cpu"},
        "data": {"val_in_train": False, "val_tokens": 62_021_632},
        "ttt": {"mode": ttt, **({"trace_verdict": {"compliant": True}} if ttt != "off" else {})},
    }


def trial(uri: str, exp_id: str, parent_id: str | None, *, variant: str, seed: int, config_hash: str,
          result: dict | None = None, status: str = "FINISHED", reason: str = "ok", params: dict | None = None,
          overrides: dict | None = None, curve_steps: int = 5, files: dict[str, str] | None = None) -> str:
    """One child run the way pgolf.tracking.TrialRecorder writes it."""
    from mlflow.entities import Metric, Param

    c = client(uri)
    tags = {"pgolf.kind": "trial", "config_hash": config_hash, "seed": str(seed), "variant": variant,
            "git_sha": "abc123", "trainer": "gpt", "ray_trial_id": f"t_{variant}_{seed}", "node_class": "8xH100",
            "status_reason": reason}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    if overrides:
        tags["overrides"] = json.dumps(overrides, sort_keys=True)
    run = c.create_run(exp_id, run_name=f"{variant}-s{seed}", tags=tags)
    rid = run.info.run_id
    p = {"model.num_layers": 11, "optim.matrix_lr": 0.04, "run.seed": seed, "data.data_path": f"/data/{seed}"}
    p.update(params or {})
    c.log_batch(rid, params=[Param(k, str(v)) for k, v in p.items()])
    metrics = []
    if result is not None:
        last = int(result.get("steps", curve_steps))
        for i in range(curve_steps + 1):
            step = int(last * i / curve_steps)
            decay = math.exp(-3 * i / curve_steps)
            metrics.append(Metric("train/loss", result["final/val_loss"] + 4 * decay + 0.01 * (seed % 3), 0, step))
            metrics.append(Metric("val/bpb", result["final/val_bpb"] + 2 * decay + 0.002 * (seed % 3), 0, step))
        metrics += [Metric(k, float(v), 0, last) for k, v in result.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"]
        c.log_batch(rid, metrics=metrics)
        c.log_dict(rid, result, "result.json")
        c.log_text(rid, f"pgolf trainer: resolved config\nseed {seed}\nfinal/val_bpb={result['final/val_bpb']}\n", "train.log")
    for name, text in (files or {}).items():
        if isinstance(text, bytes):  # binary-safe, as TrialRecorder uploads run files
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, name), "wb") as fh:
                    fh.write(text)
                c.log_artifact(rid, os.path.join(tmp, name))
        else:
            c.log_text(rid, text, name)
    c.set_terminated(rid, status=status)
    return rid


def summary_for(variants: dict[str, tuple[str, list[tuple[int, float]]]], tests: dict[str, dict] | None = None,
                baseline: str = "published record 1.2 bpb") -> dict:
    """A validation_summary.json like pgolf.orchestrate writes (only the fields the report reads)."""
    return {"variants": {n: {"config_hash": h, "seeds": {str(s): {"final/val_bpb": v} for s, v in seeds}}
                         for n, (h, seeds) in variants.items()},
            "significance": {"baseline": baseline, "margin_nats": 0.005, "alpha": 0.01, "tests": tests or {}}}


# --------------------------------------------------------------------------------------------------
# real runs


def tiny_config(demo, run_dir: str, seed: int, iterations: int = 6):
    """test_train's tiny model, with no warm-up and frequent validation so curves have points."""
    from test_train import tiny_config as base

    cfg = base(demo, run_dir, seed=seed, iterations=iterations)
    cfg.schedule.warmdown_iters, cfg.schedule.warmup_steps = 2, 0
    cfg.eval.val_loss_every, cfg.eval.train_log_every = 3, 1
    return cfg


def real_runs(demo, where, seeds=(1, 2, 3), iterations: int = 6) -> list[tuple[str, dict, dict]]:
    """(run_dir, result, resolved config dict) of tiny real trainings, one per seed."""
    import contextlib
    import io

    from pgolf.trainers.train import run_training

    out = []
    for seed in seeds:
        run_dir = os.path.join(str(where), f"seed{seed}")
        cfg = tiny_config(demo, run_dir, seed, iterations)
        with contextlib.redirect_stdout(io.StringIO()):
            result = run_training(cfg)
        cfg.write_json(os.path.join(run_dir, "resolved_config.json"))
        out.append((run_dir, result, cfg.to_dict()))
    return out


def log_real_runs(uri: str, exp_id: str, runs, *, variant: str = "tiny", config_hash: str | None = None,
                  kind: str = "validation") -> tuple[str, list[str]]:
    """A parent run and one child per real run, written by pgolf.tracking.TrialRecorder."""
    from pgolf import tracking

    pid = tracking.start_parent_run(uri, exp_id, run_name=f"{kind}-20260101-000000",
                                    tags={"pgolf.kind": kind, "git_sha": "abc123"},
                                    params={"budget.train_seconds": 600, "budget.eval_seconds": 600,
                                            "budget.artifact_bytes": 16_000_000})
    ids = []
    for run_dir, result, cfg in runs:
        h = config_hash or result["config_hash"]
        params = tracking.flatten(cfg)
        params.pop("run.run_dir", None)
        rec = tracking.TrialRecorder(uri, exp_id, pid, variant=variant, seed=result["seed"], config_hash=h,
                                     git_sha="abc123", trainer="gpt", ray_trial_id=f"local_{result['seed']}",
                                     params=params)
        with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
            rec.log_events([json.loads(line) for line in fh if line.strip()])
        rec.finish(status="FINISHED", reason="ok", run_dir=run_dir, result=result)
        ids.append(rec.run_id)
    tracking.finish_run(uri, pid, "FINISHED")
    return pid, ids
