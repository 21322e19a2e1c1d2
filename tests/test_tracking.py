"""MLflow tracking: store resolution, limits, the trial recorder, lookups and concurrent writers."""
import json
import multiprocessing as mp
import os

import pytest

from pgolf import tracking


def test_default_uri_is_absolute_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("PGOLF_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri, artifacts = tracking.resolve_tracking_uri()
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert artifacts == str(tmp_path / "mlartifacts")


def test_uri_precedence_and_relative_sqlite(tmp_path, monkeypatch):
    monkeypatch.setenv("PGOLF_TRACKING_URI", "sqlite:///rel/store.db")
    uri, artifacts = tracking.resolve_tracking_uri(cwd=str(tmp_path))
    assert uri == f"sqlite:///{tmp_path}/rel/store.db"  # trials run elsewhere: never relative
    assert artifacts == str(tmp_path / "rel" / "mlartifacts")
    uri, artifacts = tracking.resolve_tracking_uri("http://127.0.0.1:5000", cwd=str(tmp_path))
    assert (uri, artifacts) == ("http://127.0.0.1:5000", None)


def test_file_store_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="sqlite:///ABSOLUTE/PATH"):
        tracking.resolve_tracking_uri("./mlruns", cwd=str(tmp_path))


def test_experiment_created_once_with_artifact_location(tracking_uri, tmp_path):
    root = str(tmp_path / "mlartifacts")
    a = tracking.get_or_create_experiment(tracking_uri, "exp one", root)
    b = tracking.get_or_create_experiment(tracking_uri, "exp one", root)
    assert a == b
    exp = tracking.client(tracking_uri).get_experiment(a)
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "exp_one").as_uri()


def test_metric_key_sanitizes_variant_names():
    assert tracking.metric_key("muon_wd=0.02,matrix_lr=0.04/final") == "muon_wd_0.02_matrix_lr_0.04/final"
    assert tracking.metric_key("../x") == "_/x"


def test_params_respect_batch_and_length_limits(tracking_uri):
    exp_id = tracking.get_or_create_experiment(tracking_uri, "limits", None)
    run_id = tracking.start_parent_run(tracking_uri, exp_id, run_name="p", tags={},
                                       params={f"k{i:03d}": i for i in range(250)} | {"long": "x" * 7000})
    params = tracking.client(tracking_uri).get_run(run_id).data.params
    assert len(params) == 251
    assert len(params["long"]) == tracking.MAX_PARAM_VALUE and params["long"].endswith("[truncated]")


def _fake_run_dir(path, seed=1, status="ok"):
    os.makedirs(path, exist_ok=True)
    events = [{"event": "train", "step": s, "train/loss": 5.0 - s * 0.1} for s in range(1, 6)]
    events += [{"event": "val", "step": 5, "val/loss": 4.2, "val/bpb": 2.4}, {"event": "phase", "name": "train", "seconds": 1.5}]
    with open(os.path.join(path, "metrics.jsonl"), "w") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)
    result = {"status": status, "config_hash": "abc123", "seed": seed, "steps": 5, "final/val_bpb": 2.5,
              "final/val_loss": 4.3, "artifact/bytes": 1200, "artifact/model_bytes": 1000, "artifact/code_bytes": 200,
              "artifact/headroom_bytes": 16_000_000 - 1200, "artifact/blob": "final_model.int8.zlib.ptz",
              "env": {"python": "3.11", "node_class": "cpu2"}, "data": {"val_sha256": "f00", "val_in_train": False},
              "ttt": {"mode": "off"}}
    with open(os.path.join(path, "result.json"), "w") as fh:
        json.dump(result, fh)
    for name, size in (("train_gpt.py", 200), ("final_model.int8.zlib.ptz", 1000)):
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(b"x" * size)
    return events, result


def test_trial_recorder_lifecycle_and_lookup(tracking_uri, tmp_path):
    exp_id = tracking.get_or_create_experiment(tracking_uri, "rec", str(tmp_path / "art"))
    parent = tracking.start_parent_run(tracking_uri, exp_id, run_name="validation-x", tags={"pgolf.kind": "validation"})
    events, result = _fake_run_dir(str(tmp_path / "run1"))
    rec = tracking.TrialRecorder(tracking_uri, exp_id, parent, variant="base", seed=1, config_hash="abc123",
                                 git_sha="deadbeef", trainer="gpt", ray_trial_id="t1",
                                 params={"model.num_layers": 2, "optim.matrix_lr": 0.04})
    assert rec.log_events(events) == 5 + 2 + 1
    rec.finish(status="FINISHED", reason="ok", run_dir=str(tmp_path / "run1"), result=result)

    c = tracking.client(tracking_uri)
    run = c.get_run(rec.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "base-s1"
    tags = run.data.tags
    for key in tracking.TRIAL_TAGS:
        assert key in tags, key
    assert tags["mlflow.parentRunId"] == parent and tags["node_class"] == "cpu2" and tags["data.val_sha256"] == "f00"
    assert run.data.params["optim.matrix_lr"] == "0.04"
    assert run.data.metrics["final/val_bpb"] == 2.5
    assert [m.step for m in c.get_metric_history(rec.run_id, "train/loss")] == [1, 2, 3, 4, 5]
    arts = {a.path for a in c.list_artifacts(rec.run_id)}
    assert {"result.json", "metrics.jsonl", "byte_report.json", "train_gpt.py", "final_model.int8.zlib.ptz"} <= arts
    report = json.load(open(tmp_path / "run1" / "byte_report.json"))
    assert report["total_bytes_on_disk"] == 1200 and report["under_cap"] is True

    found = tracking.finished_trials(tracking_uri, exp_id)
    assert list(found) == [("abc123", 1)]
    assert tracking.load_result(tracking_uri, found[("abc123", 1)])["final/val_loss"] == 4.3
    assert [r.info.run_id for r in tracking.child_runs(tracking_uri, exp_id, parent)] == [rec.run_id]


def test_failed_runs_are_not_resumable_and_stale_runs_get_killed(tracking_uri, tmp_path):
    exp_id = tracking.get_or_create_experiment(tracking_uri, "stale", None)
    parent = tracking.start_parent_run(tracking_uri, exp_id, run_name="p", tags={})
    common = dict(variant="v", config_hash="h", git_sha="x", trainer="gpt", ray_trial_id="t", params={})
    failed = tracking.TrialRecorder(tracking_uri, exp_id, parent, seed=1, **common)
    failed.finish(status="FAILED", reason="trainer crashed", run_dir="", result=None)
    running = tracking.TrialRecorder(tracking_uri, exp_id, parent, seed=2, **common)
    assert tracking.finished_trials(tracking_uri, exp_id) == {}
    assert tracking.mark_stale_children(tracking_uri, exp_id, parent, "stopped") == [running.run_id]
    run = tracking.client(tracking_uri).get_run(running.run_id)
    assert run.info.status == "KILLED" and run.data.tags["status_reason"] == "stopped"


def _writer(uri, exp_id, parent, seed, n_steps, barrier):
    from pgolf import tracking as t

    rec = t.TrialRecorder(uri, exp_id, parent, variant="w", seed=seed, config_hash="h", git_sha="x",
                          trainer="gpt", ray_trial_id=f"t{seed}", params={"seed": seed})
    barrier.wait()  # all eight start writing at the same moment
    for step in range(1, n_steps + 1, 5):  # one batch per poll, like a trial following metrics.jsonl
        rec.log_events([{"event": "train", "step": s, "train/loss": float(s), "train/step_ms": 1.0}
                        for s in range(step, step + 5)])
    rec.finish(status="FINISHED", reason="ok", run_dir="", result={"steps": n_steps, "final/val_bpb": 1.0 + seed})


def test_eight_concurrent_writers_lose_no_metric(tracking_uri):
    exp_id = tracking.get_or_create_experiment(tracking_uri, "concurrent", None)
    parent = tracking.start_parent_run(tracking_uri, exp_id, run_name="p", tags={})
    # Separate processes as in real trials. The fork server imports mlflow once and has never opened
    # the store, so children neither pay the import eight times nor inherit a sqlite connection.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "pgolf.tracking"])
    barrier = ctx.Barrier(8)
    n_steps = 100
    procs = [ctx.Process(target=_writer, args=(tracking_uri, exp_id, parent, seed, n_steps, barrier)) for seed in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * 8
    c = tracking.client(tracking_uri)
    runs = tracking.child_runs(tracking_uri, exp_id, parent)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        for key in ("train/loss", "train/step_ms"):
            assert [m.step for m in c.get_metric_history(r.info.run_id, key)] == list(range(1, n_steps + 1))
        assert r.data.metrics["final/val_bpb"] == 1.0 + int(r.data.tags["seed"])
