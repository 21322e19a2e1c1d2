"""Fault scenarios of issue #12 that need no Ray: a full artifact store while a trial closes, a driver
that died (SIGKILL) and left its invocation RUNNING, secrets and unsafe names at the platform's edges."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from pgolf import safety, tracking
from test_tracking import _fake_run_dir


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_trial_whose_blob_did_not_reach_a_full_store_is_not_finished(tracking_uri, tmp_path, monkeypatch):
    exp_id = tracking.get_or_create_experiment(tracking_uri, "full", str(tmp_path / "art"))
    parent = tracking.start_parent_run(tracking_uri, exp_id, run_name="validation-x", tags={"pgolf.kind": "validation"})
    _, result = _fake_run_dir(str(tmp_path / "run1"))
    rec = tracking.TrialRecorder(tracking_uri, exp_id, parent, variant="base", seed=1, config_hash="abc123",
                                 git_sha="x", trainer="gpt", ray_trial_id="t1", params={})
    monkeypatch.setattr(rec.c, "log_artifact", _full_disk)
    rec.finish(status="FINISHED", reason="ok", run_dir=str(tmp_path / "run1"), result=result)
    run = tracking.client(tracking_uri).get_run(rec.run_id)
    assert run.info.status == "FAILED" and rec.status == "FAILED"
    assert "evidence did not reach the store" in run.data.tags["status_reason"]
    assert "No space left on device" in run.data.tags["tracking_errors"]
    assert tracking.finished_trials(tracking_uri, exp_id) == {}  # --resume runs this seed again


def test_resume_reruns_seeds_an_older_pgolf_closed_finished_without_evidence(tracking_uri):
    exp_id = tracking.get_or_create_experiment(tracking_uri, "old", None)
    parent = tracking.start_parent_run(tracking_uri, exp_id, run_name="p", tags={"pgolf.kind": "validation"})
    common = dict(variant="v", config_hash="h", git_sha="x", trainer="gpt", ray_trial_id="t", params={})
    ok = tracking.TrialRecorder(tracking_uri, exp_id, parent, seed=1, **common)
    ok.finish(status="FINISHED", reason="ok", run_dir="", result={"steps": 1, "final/val_bpb": 1.0})
    lost = tracking.TrialRecorder(tracking_uri, exp_id, parent, seed=2, **common)
    lost.finish(status="FINISHED", reason="ok", run_dir="", result={"steps": 1, "final/val_bpb": 1.0})
    tracking.set_tags(lost.c, lost.run_id, {"tracking_errors": "artifacts: [Errno 28] No space left on device"})
    assert set(tracking.finished_trials(tracking_uri, exp_id)) == {("h", 1)}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_invocations_of_a_dead_driver_are_closed_and_live_ones_kept(tracking_uri):
    exp_id = tracking.get_or_create_experiment(tracking_uri, "lost", None)
    common = dict(variant="v", config_hash="h", git_sha="x", trainer="gpt", ray_trial_id="t", params={})
    dead = tracking.start_parent_run(tracking_uri, exp_id, run_name="dead", tags={"pgolf.kind": "validation"})
    c = tracking.client(tracking_uri)
    c.set_tag(dead, tracking.DRIVER_PID, str(_dead_pid()))
    dead_kids = [tracking.TrialRecorder(tracking_uri, exp_id, dead, seed=s, **common).run_id for s in (1, 2)]
    recycled = tracking.start_parent_run(tracking_uri, exp_id, run_name="recycled", tags={"pgolf.kind": "validation"})
    c.set_tag(recycled, tracking.DRIVER_START, "1")  # this pid, but another process's start time
    live = tracking.start_parent_run(tracking_uri, exp_id, run_name="live", tags={"pgolf.kind": "validation"})
    live_kid = tracking.TrialRecorder(tracking_uri, exp_id, live, seed=3, **common).run_id
    elsewhere = tracking.start_parent_run(tracking_uri, exp_id, run_name="remote", tags={"pgolf.kind": "sweep"})
    c.set_tag(elsewhere, tracking.DRIVER_HOST, "another-node")
    c.set_tag(elsewhere, tracking.DRIVER_PID, str(_dead_pid()))
    ended = tracking.start_parent_run(tracking_uri, exp_id, run_name="ended", tags={"pgolf.kind": "validation"})
    orphan = tracking.TrialRecorder(tracking_uri, exp_id, ended, seed=4, **common).run_id
    tracking.finish_run(tracking_uri, ended, "KILLED")

    closed = tracking.close_dead_invocations(tracking_uri, [exp_id])
    assert set(closed) == {dead, recycled, orphan, *dead_kids}
    for rid in closed:
        run = c.get_run(rid)
        assert run.info.status == "FAILED" and run.data.tags["status_reason"].startswith("driver lost")
    for rid in (live, live_kid, elsewhere):
        assert c.get_run(rid).info.status == "RUNNING"
    assert tracking.close_dead_invocations(tracking_uri, [exp_id]) == []  # idempotent


# --------------------------------------------------------------------------------------------------
# names and secrets (pure)


@pytest.mark.parametrize("name", ["smoke", "pr691", "sweep-ttt", "a.b", "A_1-b.c", "x" * 100])
def test_safe_names_pass(name):
    assert safety.check_name("variant name", name) == name


@pytest.mark.parametrize("name", ["a/b", "../x", "..", "a..b", ".hidden", "-x", "my exp", "", "x" * 101, "a\\b",
                                  "tab\there", "nl\n", "/abs", "é", 5, None])
def test_unsafe_names_are_refused_with_the_key(name):
    with pytest.raises(safety.UnsafeName, match="variant name .* is not a safe name"):
        safety.check_name("variant name", name, "exp.toml [variants.x]")


def test_slug_and_path_under(tmp_path):
    assert safety.slug("epochs=1,lr=0.001") == "epochs=1,lr=0.001"
    assert "/" not in safety.slug("a/../b c") and ".." not in safety.slug("a/../b c")
    assert safety.path_under(str(tmp_path), "exp", "v-s1") == str(tmp_path.resolve() / "exp" / "v-s1")
    for bad in ("../x", "/etc", "a/../../x"):
        with pytest.raises(safety.UnsafeName, match="leaves"):
            safety.path_under(str(tmp_path), bad)


def test_secrets_never_reach_the_trainer_environment():
    env = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t", "HF_TOKEN": "h",
           "MLFLOW_TRACKING_PASSWORD": "p", "MLFLOW_TRACKING_TOKEN": "t", "GITHUB_TOKEN": "g", "OPENAI_API_KEY": "k",
           "RAY_AUTH_TOKEN": "r", "DATABRICKS_HOST": "d", "GOOGLE_APPLICATION_CREDENTIALS": "/k.json",
           "PATH": "/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "TOKENIZERS_PARALLELISM": "false",
           "TOKENIZER_PATH": "/t.model", "OMP_NUM_THREADS": "1", "NCCL_DEBUG": "WARN", "PYTHONPATH": "/x"}
    kept = safety.without_secrets(env)
    assert sorted(kept) == ["CUDA_VISIBLE_DEVICES", "HOME", "NCCL_DEBUG", "OMP_NUM_THREADS", "PATH", "PYTHONPATH",
                            "TOKENIZERS_PARALLELISM", "TOKENIZER_PATH"]


def test_secrets_hidden_from_ray_tune_for_the_block_and_restored():
    env = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s", "PATH": "/bin"}
    with safety.secrets_hidden(env) as hidden:
        assert hidden == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] and env == {"PATH": "/bin"}
    assert env == {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s", "PATH": "/bin"}
    with pytest.raises(RuntimeError):
        with safety.secrets_hidden(env):
            raise RuntimeError("boom")
    assert env["AWS_SECRET_ACCESS_KEY"] == "s"


# --------------------------------------------------------------------------------------------------
# the driver's own paths without Ray: prepare / run with `execute` replaced


EXP = """
[experiment]
name = "drv"
seeds = [1, 2]
data = "custom"
[config.model]
num_layers = 2
model_dim = 32
num_heads = 2
num_kv_heads = 1
[config.data]
train_seq_len = 32
train_batch_tokens = 256
grad_accum_steps = 1
data_path = "{data}"
tokenizer_path = "{tok}"
[config.run]
device = "cpu"
"""


@pytest.fixture
def driver_args(demo_data, tracking_uri, tmp_path):
    from pgolf import cli

    exp = tmp_path / "drv.toml"
    exp.write_text(EXP.format(data=demo_data.data_path, tok=demo_data.tokenizer_path))
    ap, _ = cli.build_parser()
    return ap.parse_args(["validate", str(exp), "--runs-dir", str(tmp_path / "runs"), "--tracking-uri", tracking_uri])


def test_two_drivers_in_the_same_second_never_share_a_trial_root(driver_args, monkeypatch):
    from pgolf import orchestrate

    monkeypatch.setattr(orchestrate.time, "strftime", lambda fmt, *a: "20261202-014000")  # one second
    a, b = orchestrate.prepare(driver_args, "validation"), orchestrate.prepare(driver_args, "validation")
    assert a.ctx.runs_dir != b.ctx.runs_dir and a.stamp != b.stamp
    assert a.ctx.runs_dir.startswith(os.path.realpath(driver_args.runs_dir))


def _parent(uri, inv):
    return tracking.client(uri).get_run(inv.parent_id)


def test_tune_failure_and_a_full_store_still_close_the_parent_and_write_the_summary(driver_args, tracking_uri,
                                                                                    monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from pgolf import orchestrate

    seen = {}

    def failing_execute(inv, args):
        seen["inv"] = inv
        raise RuntimeError("ResultGrid: [Errno 28] No space left on device")

    monkeypatch.setattr(orchestrate, "execute", failing_execute)
    monkeypatch.setattr(MlflowClient, "log_dict", _full_disk)
    assert orchestrate.run(driver_args, "validation") == 1
    err = capsys.readouterr().err
    assert "Ray Tune failed: RuntimeError: ResultGrid" in err and "summary did not reach MLflow" in err
    inv = seen["inv"]
    run = _parent(tracking_uri, inv)
    assert run.info.status == "FAILED"
    assert "Ray Tune failed" in run.data.tags["status_reason"] and "summary not stored" in run.data.tags["status_reason"]
    summary = os.path.join(inv.ctx.runs_dir, "validation_summary.json")
    assert os.path.isfile(summary) and os.path.isfile(os.path.join(inv.ctx.runs_dir, "validation_table.txt"))


@pytest.mark.parametrize("signum,code,why", [(None, 130, "interrupted"), ("SIGTERM", 143, "interrupted (SIGTERM)"),
                                             ("SIGHUP", 129, "interrupted (SIGHUP)")])
def test_interrupt_exit_codes_and_parent_reason(signum, code, why, driver_args, tracking_uri, monkeypatch, capsys):
    import signal

    from pgolf import orchestrate
    from pgolf.interrupts import Terminated

    seen = {}

    def interrupted(inv, args):
        seen["inv"] = inv
        raise KeyboardInterrupt if signum is None else Terminated(getattr(signal, signum))

    monkeypatch.setattr(orchestrate, "execute", interrupted)
    assert orchestrate.run(driver_args, "validation") == code
    assert f"pgolf validate {driver_args.experiment} --resume" in capsys.readouterr().err
    run = _parent(tracking_uri, seen["inv"])
    assert run.info.status == "KILLED" and run.data.tags["status_reason"] == why
