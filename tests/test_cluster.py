"""A real Ray head node (`ray start --head`) and `pgolf validate` submitted through the Ray Jobs API.

Why this runs last and moves every port: two Ray clusters on one machine collide on the dashboard
agent's fixed port 52365, which `ray.init` (the session's cluster) cannot move. This test gives its
head node explicit free ports for everything, is ordered after all other tests (`ray_cluster` marker,
see conftest.py) and shuts the session cluster down first (`stop_session_ray`).

Teardown does not call `ray stop`: that kills every Ray process of the user on the machine, including
clusters of other test sessions. It ends the `ray start --block` process group and then, by PID, the
Ray processes whose command line names this test's own temp dir.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from orch_helpers import SMOKE, children, tiny_args

VENV_BIN = os.path.dirname(sys.executable)


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _processes_mentioning(text):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(name))
    return out


def _stop_head(head, temp):
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            pass
        for pid in _processes_mentioning(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and (head.poll() is None or _processes_mentioning(temp)):
            time.sleep(0.2)
    head.wait(timeout=5)


@pytest.fixture
def head_node(stop_session_ray, tmp_path):
    from ray.job_submission import JobSubmissionClient

    names = ["port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "runtime-env-agent-port"]
    ports = dict(zip(names, _free_ports(len(names))))
    temp = tempfile.mkdtemp(prefix="pgrc", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    # The job's entrypoint runs with the PATH of the `ray start` process: start it from the venv.
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
           *[f"--{k}={v}" for k, v in ports.items()]]
    log = open(tmp_path / "ray_start.log", "wb")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=str(tmp_path))
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        client = None
        deadline = time.time() + 120
        while client is None:
            if head.poll() is not None:
                pytest.fail(f"ray start exited with {head.returncode}:\n{(tmp_path / 'ray_start.log').read_text()}")
            try:
                client = JobSubmissionClient(address)
            except Exception:  # noqa: BLE001 - the job server is still starting
                if time.time() > deadline:
                    raise
                time.sleep(1)
        yield client
    finally:
        _stop_head(head, temp)
        log.close()
        assert _processes_mentioning(temp) == []


@pytest.mark.ray_cluster
def test_validate_submitted_as_a_ray_job(head_node, data_root, tmp_path):
    from ray.job_submission import JobStatus

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    entrypoint = " ".join([
        sys.executable, "-m", "pgolf.cli", "validate", SMOKE, "--data-dir", str(data_root),
        "--tracking-uri", uri, "--runs-dir", str(tmp_path / "runs"), *tiny_args(),
    ])
    job_id = head_node.submit_job(entrypoint=entrypoint, entrypoint_num_cpus=0,
                                  runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}})
    deadline = time.time() + 400
    status = head_node.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(2)
        status = head_node.get_job_status(job_id)
    logs = head_node.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert "all 3 requested seed(s) finished OK" in logs

    parents, kids = children(uri, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert tags["ray_job_submission_id"] == job_id and tags["ray_job_id"] and tags["ray_address"] != "local"
    assert sorted(r.info.run_name for r in kids) == ["smoke-s1", "smoke-s2", "smoke-s3"]
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert all("final/val_bpb" in r.data.metrics for r in kids)


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    """What `ray up` checks first: Ray's own schema, and the defaults it fills in."""
    import json

    import jsonschema
    import ray.autoscaler
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    import pgolf

    path = os.path.join(os.path.dirname(pgolf.__file__), "cluster", "cluster.yaml")
    cfg = yaml.safe_load(open(path))
    schema = json.load(open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")))
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(cfg))

    nodes = cfg["available_node_types"]
    gpu_nodes = [n for n in nodes.values() if n["resources"].get("GPU", 0) == 8]
    assert cfg["head_node_type"] in nodes and gpu_nodes
    setup = " ".join(cfg["setup_commands"] + cfg["worker_setup_commands"])
    assert "pip install" in setup and "pgolf data fineweb" in setup
    assert any("mlflow server" in c for c in cfg["head_start_ray_commands"])
