"""The trial: following metrics.jsonl, classifying outcomes, process-group cleanup, and whole trials
run without Ray (execute_trial is what the Tune function trainable calls)."""
import json
import os
import subprocess
import time

import pytest

from orch_helpers import SMOKE, TINY, alive as _alive, group_members
from pgolf import tracking
from pgolf.trial import MetricsTail, TrialContext, classify, execute_trial, kill_group


def test_metrics_tail_waits_for_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(str(path))
    assert tail.read() == []  # no file yet
    with open(path, "w") as fh:
        fh.write('{"event": "train", "step": 1}\n{"event": "val", "st')
    assert tail.read() == [{"event": "train", "step": 1}]
    with open(path, "a") as fh:
        fh.write('ep": 2}\nnot json\n')
    assert tail.read() == [{"event": "val", "step": 2}]  # the corrupt line is skipped, not fatal


@pytest.mark.parametrize("rc,result,timed_out,stopped,status,fragment", [
    (0, {"status": "ok"}, False, False, "FINISHED", "ok"),
    (4, {"status": "over_budget", "status_reason": "artifact 17 bytes > cap 16"}, False, False, "FAILED",
     "over budget: artifact 17 bytes > cap 16"),
    (1, None, False, False, "FAILED", "trainer crashed (exit 1) after step 3: RuntimeError: boom"),
    (3, None, False, False, "FAILED", "bad data (exit 3)"),
    (-9, None, False, False, "FAILED", "trainer killed by SIGKILL after step 3"),
    (None, None, True, False, "KILLED", "timed out"),
    (None, None, False, True, "KILLED", "stopped by Ray Tune"),
    (0, None, False, False, "FAILED", "no result.json"),
])
def test_classify(rc, result, timed_out, stopped, status, fragment):
    got_status, reason = classify(rc, result, timed_out=timed_out, stopped=stopped, deadline=30,
                                  output_tail=["Traceback", "RuntimeError: boom", ""], last_step=3)
    assert got_status == status
    assert fragment in reason


def test_kill_group_reaches_grandchildren(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    proc = subprocess.Popen(["bash", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], start_new_session=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    kill_group(proc, grace=2)
    assert proc.poll() is not None
    time.sleep(0.2)
    assert not _alive(grandchild)


_group_members = group_members


def _ctx(uri, tmp_path, name="trial-tests", deadline=120.0):
    exp_id = tracking.get_or_create_experiment(uri, name, str(tmp_path / "mlartifacts"))
    parent = tracking.start_parent_run(uri, exp_id, run_name="validation-test", tags={"pgolf.kind": "validation"})
    return TrialContext(tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent, git_sha="cafe", trainer="gpt",
                        runs_dir=str(tmp_path / "runs"), gpus=0, cpus=1, deadline_seconds=deadline, poll_seconds=0.2)


def _spec(data_root, seed, extra=()):
    from pgolf.experiment import load_experiment
    from pgolf.specs import build_spec

    exp = load_experiment(SMOKE, overrides=TINY + list(extra))
    return build_spec(exp, None, seed, {}, str(data_root))


def _group_gone(run_dir):
    pid = int(open(os.path.join(run_dir, "trainer.pid")).read())
    return _group_members(pid) == []


def test_ok_trial_reports_and_records(tracking_uri, data_root, tmp_path):
    ctx = _ctx(tracking_uri, tmp_path)
    spec = _spec(data_root, seed=5)
    reports = []
    final = execute_trial(spec, ctx, trial_id="t0", report=reports.append)

    assert final["ok"] and final["status"] == "FINISHED" and final["pgolf_done"]
    assert reports[-1] is final
    intermediate = reports[:-1]
    assert [r["step"] for r in intermediate] == [0, 3, 6]  # one report per periodic validation
    assert all("val/bpb" in r for r in intermediate)
    run = tracking.client(tracking_uri).get_run(final["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "smoke-s5"
    ran = json.load(open(os.path.join(run.data.tags["pgolf.run_dir"], "result.json")))["config_hash"]
    assert run.data.tags["config_hash"] == ran  # what ran, even if the sources changed since planning
    assert run.data.tags.get("planned_config_hash", ran) == spec.config_hash
    assert run.data.tags["status_reason"] == "ok" and run.data.tags["compliant"] == "yes"
    assert run.data.tags["env.torch"] and run.data.tags["data.val_sha256"]
    assert run.data.metrics["final/val_bpb"] == pytest.approx(final["final/val_bpb"])
    assert run.data.params["model.model_dim"] == "64"
    history = tracking.client(tracking_uri).get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    arts = {a.path for a in tracking.client(tracking_uri).list_artifacts(run.info.run_id)}
    assert {"resolved_config.json", "train.log", "result.json", "metrics.jsonl", "byte_report.json",
            "train_gpt.py", "trainer_output.log"} <= arts
    assert any(a.startswith("final_model.") for a in arts)
    assert _group_gone(run.data.tags["pgolf.run_dir"])


def test_crashing_trainer_is_recorded_failed_with_log_tail(tracking_uri, data_root, tmp_path):
    ctx = _ctx(tracking_uri, tmp_path)
    spec = _spec(data_root, seed=6, extra=["config.faults.raise_at_step=2"])
    reports = []
    final = execute_trial(spec, ctx, trial_id="t1", report=reports.append)
    assert not final["ok"] and "final/val_bpb" not in final  # a failed run never feeds a searcher a score
    run = tracking.client(tracking_uri).get_run(final["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "injected fault: exception at step 2" in run.data.tags["status_reason"]
    assert "log_tail.txt" in {a.path for a in tracking.client(tracking_uri).list_artifacts(run.info.run_id)}
    assert run.data.metrics["trial/ok"] == 0.0
    assert _group_gone(run.data.tags["pgolf.run_dir"])


def test_deadline_kills_the_process_group(tracking_uri, data_root, tmp_path):
    ctx = _ctx(tracking_uri, tmp_path, deadline=1.0)
    spec = _spec(data_root, seed=7, extra=["config.faults.hang_at_step=1"])
    final = execute_trial(spec, ctx, trial_id="t2")
    run = tracking.client(tracking_uri).get_run(final["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["status_reason"].startswith("timed out")
    assert _group_gone(run.data.tags["pgolf.run_dir"])


def test_setup_failure_still_closes_the_run(tracking_uri, data_root, tmp_path):
    ctx = _ctx(tracking_uri, tmp_path)
    spec = _spec(data_root, seed=8)
    spec.cfg.model.no_such_field = 1  # what a driver/trainer version mismatch looks like
    final = execute_trial(spec, ctx, trial_id="t3")
    run = tracking.client(tracking_uri).get_run(final["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "trial setup failed" in run.data.tags["status_reason"] and "no_such_field" in run.data.tags["status_reason"]


def test_trainer_env_sets_threads_and_drops_mlflow_run_id(monkeypatch):
    from pgolf.trial import _trainer_env

    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = _trainer_env(4)
    assert env["OMP_NUM_THREADS"] == "4" and "MLFLOW_RUN_ID" not in env
