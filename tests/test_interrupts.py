"""Fault scenarios of issue #12 on a real driver: `pgolf validate` in a subprocess with its own local Ray,
stopped by Ctrl-C, SIGTERM or SIGKILL while its one trial trains. Each scenario is one tiny trial (2
layers, d32) that would train for hours; the assertions read the MLflow store afterwards.

Marked `ray_cluster`: the drivers start their own local Ray, which may not overlap the session's (the
dashboard agent's fixed port), so these run last, after `stop_session_ray`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from orch_helpers import alive, children, group_members

EXP = """
[experiment]
name = "interrupts"
seeds = [1]
data = "demo"
[resources]
gpus = 0
cpus = 1
[config.model]
num_layers = 2
model_dim = 32
num_heads = 2
num_kv_heads = 1
[config.data]
train_seq_len = 32
train_batch_tokens = 256
grad_accum_steps = 1
val_tokens_limit = 2048
[config.schedule]
iterations = 1000000
warmdown_iters = 1
warmup_steps = 0
max_wallclock_seconds = 0
[config.eval]
val_loss_every = 0
val_batch_size = 1024
train_log_every = 1
[config.run]
device = "cpu"
threads = 1
"""


def _ray_processes(temp: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if temp.encode() in fh.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def _start_driver(tmp_path, tracking_uri, data_root, *extra, log_name="driver.log"):
    exp = tmp_path / "interrupts.toml"
    exp.write_text(EXP)
    pattern = "interrupts/validation-*/*/metrics.jsonl"
    earlier = set((tmp_path / "runs").glob(pattern))  # an earlier driver's trial has trained already
    temp = tempfile.mkdtemp(prefix="pgint", dir="/tmp")  # every Ray process of this driver names it
    env = dict(os.environ, RAY_TMPDIR=temp, PGOLF_TRACKING_URI=tracking_uri)
    log_path = tmp_path / log_name
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "pgolf.cli", "validate", str(exp), "--runs-dir",
                             str(tmp_path / "runs"), "--data-dir", str(data_root), *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    deadline = time.time() + 240
    while time.time() < deadline:  # until the trainer has logged a training step
        for path in set((tmp_path / "runs").glob(pattern)) - earlier:
            if '"train"' in path.read_text():
                pid = int((path.parent / "trainer.pid").read_text())
                return proc, temp, pid, log
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"the trial never trained:\n{log_path.read_text()[-3000:]}")


def _cleanup(temp: str, trainer_pid: int) -> list[int]:
    """Whatever a killed driver left: returns the Ray processes and trainer-group members still there
    (trainer.pid is the watchdog, the leader of the trainer's process group)."""
    left = _ray_processes(temp) + group_members(trainer_pid)
    for pid in left + [trainer_pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _stop_driver(driver, sig, log_path) -> tuple[int, str]:
    """Sends sig to the driver; its exit code and output, once it and everything it started are gone."""
    proc, temp, trainer_pid, log = driver
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=120)
    finally:
        log.close()
        leftover = _cleanup(temp, trainer_pid)
    out = log_path.read_text()
    assert not alive(trainer_pid) and leftover == [], out[-3000:]
    return rc, out


def _assert_interrupted(tracking_uri, parent, kids):
    from pgolf import tracking

    assert parent.info.status == "KILLED" and parent.data.tags["status_reason"].startswith("interrupted")
    assert [k.info.status for k in kids] == ["KILLED"]
    assert kids[0].data.tags["status_reason"].startswith("interrupted")
    files = {a.path for a in tracking.client(tracking_uri).list_artifacts(kids[0].info.run_id)}
    assert {"trainer_output.log", "log_tail.txt", "metrics.jsonl", "train.log"} <= files


@pytest.mark.ray_cluster
def test_ctrl_c_records_every_run_and_stops_everything(stop_session_ray, tracking_uri, data_root, tmp_path):
    driver = _start_driver(tmp_path, tracking_uri, data_root)
    rc, out = _stop_driver(driver, signal.SIGINT, tmp_path / "driver.log")
    assert rc == 130, out[-3000:]
    assert "--resume" in out and "Tuner.restore" not in out, out[-3000:]
    (parent,), kids = children(tracking_uri, "interrupts")
    _assert_interrupted(tracking_uri, parent, kids)


@pytest.mark.ray_cluster
def test_sigkilled_driver_is_closed_by_resume_and_sigterm_is_recorded(stop_session_ray, tracking_uri, data_root,
                                                                      tmp_path):
    """SIGKILL leaves RUNNING runs behind; `--resume` closes them (FAILED "driver lost"), runs the lost
    seed again, and is itself stopped by SIGTERM: rc 143, recorded like Ctrl-C."""
    proc, temp, trainer_pid, log = _start_driver(tmp_path, tracking_uri, data_root)
    proc.kill()
    proc.wait(timeout=30)
    log.close()
    deadline = time.time() + 30  # Ray's own processes share the driver's fate; give them a moment
    while (_ray_processes(temp) or group_members(trainer_pid)) and time.time() < deadline:
        time.sleep(0.5)
    assert _cleanup(temp, trainer_pid) == []
    (lost,), _ = children(tracking_uri, "interrupts")
    assert lost.info.status == "RUNNING"  # what the driver left

    driver = _start_driver(tmp_path, tracking_uri, data_root, "--resume", log_name="resume.log")
    rc, out = _stop_driver(driver, signal.SIGTERM, tmp_path / "resume.log")
    assert rc == 143, out[-3000:]
    assert f"closed run {lost.info.run_id}: FAILED (driver lost" in out, out[-3000:]
    assert "--resume" in out and "Tuner.restore" not in out, out[-3000:]
    parents, _ = children(tracking_uri, "interrupts")
    by_id = {p.info.run_id: p for p in parents}
    assert by_id[lost.info.run_id].info.status == "FAILED"
    assert by_id[lost.info.run_id].data.tags["status_reason"].startswith("driver lost")
    # The trial actor can outlive its driver for a moment and close its own run (its trainer was killed
    # above); a trial that could not is closed by the next driver. Either way nothing stays RUNNING.
    _, old_kids = children(tracking_uri, "interrupts", lost.info.run_id)
    assert old_kids and all(k.info.status == "FAILED" for k in old_kids)
    (resumed,) = [p for p in parents if p.info.run_id != lost.info.run_id]
    _, kids = children(tracking_uri, "interrupts", resumed.info.run_id)
    _assert_interrupted(tracking_uri, resumed, kids)
