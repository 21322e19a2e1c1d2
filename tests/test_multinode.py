"""Several nodes on one machine: a Ray head with no trial resources, two worker nodes (separate raylets,
1 CPU + 1 logical GPU each), one `mlflow server`, and `pgolf validate` submitted through the Jobs API.

What a real multi-node cluster changes, and what is checked here:
- trials run only on workers (the head has 0 CPUs and 0 GPUs), and each child run says on which node;
- trials log over HTTP only: nothing but the server's own file is an sqlite store, and every artifact
  (train log, metrics, blob, counted code, TTT trace) is in the server's artifact store;
- `pgolf report` and `pgolf submission` work from the server alone, with the trial directories gone;
- a trial that needs a node bigger than any worker fails in seconds, though the cluster's *total* fits it;
- a worker node lost mid-trial: that seed is recorded, the others finish, `--resume` re-runs only it.

Started once per module (about 25 s of startup on 2 cores). Every port is given explicitly, the Ray
temp dir is private, and teardown ends process groups and then, by PID, whatever still names this
module's directories: never `ray stop`. Ordered last with the other `ray_cluster` tests, after the
session's local Ray is shut down.
"""
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import SimpleNamespace

import pytest

from orch_helpers import SMOKE, run_cli, tiny_args

pytestmark = pytest.mark.ray_cluster

PY = sys.executable
RAY_CLI = [PY, "-m", "ray.scripts.scripts"]  # the venv's own interpreter: no PATH lookup
WORKERS = 2
# 2 steps and a score-first TTT pass: every artifact kind a submission needs, in a few seconds per trial.
TINY = ["config.schedule.iterations=2", "config.schedule.warmdown_iters=1", "config.eval.val_loss_every=0",
        "config.ttt.mode=score_first", "config.ttt.chunk_tokens=1024", "config.ttt.epochs=1",
        "config.ttt.batch_seqs=2", "resources.gpus=1"]
HEAD_PORTS = ["port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
              "runtime-env-agent-port"]
WORKER_PORTS = ["node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port", "metrics-export-port"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pids_mentioning(*texts):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(t in cmd for t in texts):
            out.append(int(name))
    return out


def _stop(procs, texts):
    """SIGTERM then SIGKILL: each started process group, then every process naming our directories."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        for pid in _pids_mentioning(*texts):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while time.time() < deadline and (any(p.poll() is None for p in procs) or _pids_mentioning(*texts)):
            time.sleep(0.2)
    for p in procs:
        p.wait(timeout=5)


def _ray_logs(temp):
    out = []
    for path in sorted(glob.glob(os.path.join(temp, "session_latest", "logs", "raylet*.out"))):
        out.append(f"--- {path}\n" + "".join(open(path, errors="replace").readlines()[-15:]))
    return "\n".join(out)


def _wait(what, check, timeout, procs=(), temp=None):
    deadline = time.time() + timeout
    while True:
        for p, log in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: a process exited with {p.returncode}:\n{open(log).read()[-3000:]}\n"
                            f"{_ray_logs(temp) if temp else ''}")
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline:
                raise
        if time.time() > deadline:
            pytest.fail(f"{what}: not ready after {timeout} s")
        time.sleep(0.5)


def _start(cmd, env, log, cwd):
    return subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=cwd)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    if ray.is_initialized():
        ray.shutdown()  # the session's local Ray (see conftest.py: ray_cluster tests run last)
    base = str(tmp_path_factory.mktemp("multinode"))
    temp = tempfile.mkdtemp(prefix="pgmn", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    env = {k: v for k, v in os.environ.items() if k not in ("PGOLF_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true",
               PATH=os.path.dirname(PY) + os.pathsep + env.get("PATH", ""),
               # a killed raylet is noticed in ~3 s instead of ~15 s
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
               RAY_raylet_start_wait_time_s="120")  # 2 shared cores: a raylet can take a while to register
    procs, logs = [], []
    try:
        hp = dict(zip(HEAD_PORTS, _free_ports(len(HEAD_PORTS))))
        log = os.path.join(base, "head.log")
        procs.append(_start([*RAY_CLI, "start", "--head", "--block", "--num-cpus=0", "--num-gpus=0",
                             "--node-ip-address=127.0.0.1",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
                             "--disable-usage-stats", *[f"--{k}={v}" for k, v in hp.items()]], env, log, base))
        logs.append(log)
        address = f"http://127.0.0.1:{hp['dashboard-port']}"
        gcs = f"127.0.0.1:{hp['port']}"
        client = _wait("head node", lambda: JobSubmissionClient(address), 180, list(zip(procs, logs)), temp)

        def alive(k):
            nodes = [n for n in list_nodes(address=address, detail=True) if n.state == "ALIVE"]
            return nodes if len(nodes) == k else None
        # Workers look the head up in the GCS when they start: it must have registered first.
        _wait("head raylet", lambda: alive(1), 120, list(zip(procs, logs)), temp)
        worker_ports = {}
        for i in range(WORKERS):
            # One at a time: raylets sharing a session dir number their sockets and logs as they start.
            wp = dict(zip(WORKER_PORTS, _free_ports(len(WORKER_PORTS))))
            log = os.path.join(base, f"worker{i}.log")
            procs.append(_start([*RAY_CLI, "start", f"--address={gcs}", "--block", "--num-cpus=1", "--num-gpus=1",
                                 f"--node-name=worker{i}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
                                 "--disable-usage-stats", *[f"--{k}={v}" for k, v in wp.items()]], env, log, base))
            logs.append(log)
            worker_ports[f"worker{i}"] = wp["node-manager-port"]
            nodes = _wait(f"worker node {i}", lambda: alive(i + 2), 180, list(zip(procs, logs)), temp)
        head = next(n for n in nodes if n.is_head_node)
        workers = {}  # node id -> the raylet's node manager port (which names its process)
        for n in nodes:
            if not n.is_head_node:
                assert n.resources_total.get("GPU") == 1 and n.resources_total.get("CPU") == 1
                workers[n.node_id] = worker_ports[n.node_name]
        assert not head.resources_total.get("CPU") and not head.resources_total.get("GPU")

        store = os.path.join(base, "mlflow-server")
        os.makedirs(store)
        (mport,) = _free_ports(1)
        log = os.path.join(base, "mlflow.log")
        mlflow_cmd = [PY, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                      "--artifacts-destination", f"{store}/mlartifacts", "--host", "127.0.0.1",
                      "--port", str(mport), "--workers", "1"]
        procs.append(_start(mlflow_cmd, env, log, store))
        logs.append(log)
        uri = f"http://127.0.0.1:{mport}"
        _wait("mlflow server", lambda: urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200, 120,
              list(zip(procs, logs)))
        yield SimpleNamespace(client=client, address=address, head_id=head.node_id, workers=workers, uri=uri,
                              store=store, base=base, temp=temp)
    finally:
        _stop(procs, (temp, base))
        assert _pids_mentioning(temp, base) == []
        shutil.rmtree(temp, ignore_errors=True)


def _submit(cl, argv):
    entrypoint = shlex.join([PY, "-m", "pgolf.cli", *map(str, argv)])  # the job runs it in a shell
    job_id = cl.client.submit_job(entrypoint=entrypoint, entrypoint_num_cpus=0,
                                  runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}})
    return job_id


def _finish(cl, job_id, timeout=400):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    status = cl.client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(1)
        status = cl.client.get_job_status(job_id)
    return status, cl.client.get_job_logs(job_id)


def _validate_args(cl, data_root, where, *extra):
    return ["validate", SMOKE, "--data-dir", data_root, "--tracking-uri", cl.uri, "--runs-dir", where / "runs",
            "--storage-path", where / "tune", *tiny_args(TINY), *extra]


def _runs_of_job(cl, job_id, experiment="smoke"):
    from pgolf import tracking

    c = tracking.client(cl.uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None, []
    parents = c.search_runs([exp.experiment_id], f"tags.ray_job_submission_id = '{job_id}'")
    if not parents:
        return None, []
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return parents[0], kids


def _local_stores(*roots):
    """Every sqlite file, file store or local artifact folder that MLflow could have made under roots."""
    found = []
    for root in roots:
        for pattern in ("**/*.db", "**/mlruns", "**/mlartifacts"):
            found += glob.glob(os.path.join(root, pattern), recursive=True)
    return found


def test_validate_runs_on_the_workers_and_logs_only_to_the_server(cluster, data_root, tmp_path, capsys):
    from ray.job_submission import JobStatus

    # two seeds, one per worker: one wave (a third seed would only repeat what the first two show)
    job = _submit(cluster, _validate_args(cluster, data_root, tmp_path, "--set", "experiment.seeds=[1,2]"))
    status, logs = _finish(cluster, job)
    assert status == JobStatus.SUCCEEDED, logs
    assert "all 2 requested seed(s) finished OK" in logs and "2 trial(s) at a time" in logs

    parent, kids = _runs_of_job(cluster, job)
    assert parent.info.status == "FINISHED" and parent.data.tags["ray_address"] != "local"
    assert parent.data.tags["ray_job_id"]
    assert sorted(r.info.run_name for r in kids) == ["smoke-s1", "smoke-s2"]
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert all("final/val_bpb" in r.data.metrics for r in kids)
    nodes = [r.data.tags["ray.node_id"] for r in kids]
    assert set(nodes) <= set(cluster.workers) and cluster.head_id not in nodes
    assert all(r.data.tags["ray.node_ip"] for r in kids)

    # Over HTTP only: the server's database is the one store; artifacts went through the server.
    assert _local_stores(str(tmp_path), cluster.temp, data_root) == []
    assert [p for p in _local_stores(cluster.base) if not p.startswith(cluster.store)] == []
    for r in kids:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
        held = os.listdir(os.path.join(cluster.store, "mlartifacts", r.info.experiment_id, r.info.run_id,
                                       "artifacts"))
        for name in ("train.log", "metrics.jsonl", "result.json", "train_gpt.py", "ttt_trace.jsonl", "byte_report.json"):
            assert name in held, (name, held)
        assert any(n.startswith("final_model.") and n.endswith(".ptz") for n in held), held

    # The trial directories are node-local; the record is the server.
    shutil.rmtree(tmp_path / "runs")
    rc, out = run_cli(["report", "--tracking-uri", cluster.uri, "--experiment", "smoke", "--parent",
                       parent.info.run_id, "--out", str(tmp_path / "report")], capsys)
    assert rc == 0, out
    assert os.path.isfile(tmp_path / "report" / "smoke" / "report.html")
    rc, out = run_cli(["submission", parent.info.run_id, "--tracking-uri", cluster.uri, "--out",
                       str(tmp_path / "record"), "--non-record", "--no-self-check", "--author", "ci"], capsys)
    assert rc == 0, out
    folder = tmp_path / "record"
    assert (folder / "train_gpt.py").is_file() and (folder / "submission.json").is_file()
    doc = json.loads((folder / "submission.json").read_text())
    assert sorted(doc["seeds"]) == [1, 2]
    train_logs = [p for p in folder.iterdir() if p.name.endswith(".log")]
    assert len(train_logs) == 2, sorted(p.name for p in folder.iterdir())


def test_ui_points_at_the_same_server(cluster, capsys, monkeypatch):
    from pgolf import tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    c = tracking.client(cluster.uri)
    exp = c.get_experiment_by_name("smoke")
    n = len(c.search_runs([exp.experiment_id], max_results=1000))
    rc, out = run_cli(["ui", "--tracking-uri", cluster.uri], capsys)
    assert rc == 0, out
    page = f"{cluster.uri}/#/experiments/{exp.experiment_id}"
    assert f"smoke: {n} runs  {page}" in out
    with urllib.request.urlopen(cluster.uri, timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read().lower()

    (dead,) = _free_ports(1)
    rc, _ = run_cli(["ui", "--tracking-uri", f"http://127.0.0.1:{dead}"], capsys)
    assert rc == 2


def test_a_trial_bigger_than_every_node_fails_fast(cluster, data_root, tmp_path):
    """2 GPUs per trial: the cluster has 2 GPUs in total, but no node has 2 (and the head has none)."""
    from ray.job_submission import JobStatus

    job = _submit(cluster, _validate_args(cluster, data_root, tmp_path, "--set", "resources.gpus=2"))
    status, logs = _finish(cluster, job, timeout=120)
    assert status == JobStatus.FAILED, logs
    assert "each trial needs 2 GPU, 1 CPU on one node" in logs
    assert "the largest node that can host trials is node" in logs and "1 GPU, 1 CPU (2 such node(s))" in logs
    assert "the head node" in logs and "does not count" in logs
    assert "--smoke" in logs and "--address" in logs and "resources.gpus=N" in logs
    parent, kids = _runs_of_job(cluster, job)
    assert parent.info.status == "FAILED" and kids == []
    assert "each trial needs 2 GPU" in parent.data.tags["status_reason"]


def _raylet_of(port):
    pids = [p for p in _pids_mentioning(f"--node_manager_port={port}")
            if "raylet" in open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0].decode()]
    assert len(pids) == 1, pids
    return pids[0]


def test_a_lost_worker_node_costs_one_seed_and_resume_reruns_it(cluster, data_root, tmp_path):
    """Runs last: it kills one of the two workers for good."""
    from ray.job_submission import JobStatus

    victim_node = sorted(cluster.workers)[0]
    # Its own MLflow experiment: --resume must not find the first test's finished seeds. Two seeds, one
    # per worker: one is lost with its node, the other finishes.
    fault = ("--set", "experiment.name=fault", "--set", "experiment.seeds=[1,2]")
    job = _submit(cluster, _validate_args(cluster, data_root, tmp_path, *fault))

    def victim_running():
        _, kids = _runs_of_job(cluster, job, "fault")
        return next((r for r in kids if r.info.status == "RUNNING" and r.data.tags.get("ray.node_id") == victim_node),
                    None)
    victim = _wait("a trial on the victim node", victim_running, 300)
    os.kill(_raylet_of(cluster.workers[victim_node]), signal.SIGKILL)

    status, logs = _finish(cluster, job)
    assert status == JobStatus.FAILED, logs
    assert "NOT all 2 requested seed(s) finished OK" in logs
    parent, kids = _runs_of_job(cluster, job, "fault")
    by_name = {r.info.run_name: r for r in kids}
    lost = by_name[victim.info.run_name]
    assert lost.info.status in ("KILLED", "FAILED") and lost.data.tags["status_reason"] not in ("", "running")
    ok = [r for r in kids if r.info.run_name != victim.info.run_name]
    assert sorted(r.info.run_name for r in ok + [lost]) == ["fault-s1", "fault-s2"]
    assert {r.info.status for r in ok} == {"FINISHED"}
    assert all(r.data.tags["ray.node_id"] != victim_node for r in ok if r.info.start_time > lost.info.start_time)

    job = _submit(cluster, _validate_args(cluster, data_root, tmp_path, *fault, "--resume"))
    status, logs = _finish(cluster, job)
    assert status == JobStatus.SUCCEEDED, logs
    assert logs.count("finished earlier in MLflow run") == 1
    _, kids = _runs_of_job(cluster, job, "fault")
    assert [r.info.run_name for r in kids] == [victim.info.run_name]
    assert kids[0].info.status == "FINISHED" and kids[0].data.tags["ray.node_id"] != victim_node
