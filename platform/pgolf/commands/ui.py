"""pgolf ui: the MLflow UI on the project's tracking store, bound to 127.0.0.1."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys


def add_arguments(p) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="default: $PGOLF_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; reach a remote box with ssh -L PORT:localhost:PORT)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of starting it")


def command(uri: str, artifact_root: str | None, host: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if artifact_root:
        # Only for experiments created in the UI itself; pgolf's experiments carry their own location.
        cmd += ["--artifacts-destination", artifact_root]
    return cmd


def run(args) -> int:
    from pgolf.tracking import resolve_tracking_uri

    uri, artifact_root = resolve_tracking_uri(args.tracking_uri)
    if not uri.startswith("sqlite:"):
        return _server(uri, args.dry_run)
    db = uri[len("sqlite:///"):]
    cmd = command(uri, artifact_root, args.host, args.port)
    url = f"http://{args.host}:{args.port}"
    if args.dry_run:
        print(shlex.join(cmd))
        print(f"URL: {url}")
        return 0
    if not os.path.exists(db):
        print(f"pgolf ui: no tracking store at {db} yet; run `pgolf validate` first or pass --tracking-uri",
              file=sys.stderr)
        return 2
    print(f"pgolf ui: MLflow UI for {uri} at {url} (Ctrl-C to stop)", flush=True)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY=os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"))
    from pgolf.interrupts import terminate_as_interrupt

    # Its own process group: the server and its workers stop together when pgolf ui does (Ctrl-C, SIGTERM,
    # SIGHUP), instead of serving on after their parent is gone.
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        with terminate_as_interrupt():
            return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen, grace: float = 5.0) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            server.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; workers of the group may still be stopping
            os.killpg(server.pid, 0)
        except OSError:
            return


def _server(uri: str, dry_run: bool) -> int:
    """A tracking server already serves its UI: check that it answers and say where each experiment's
    runs are, instead of starting a second UI on a store this machine does not hold."""
    url = uri.rstrip("/")
    if dry_run or not uri.startswith(("http://", "https://")):
        print(f"URL: {url}")
        return 0
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server: seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from pgolf.tracking import client

    c = client(uri)
    try:
        exps = c.search_experiments()
        counts = {e.experiment_id: len(c.search_runs([e.experiment_id], max_results=10_000)) for e in exps}
    except Exception as exc:  # noqa: BLE001 - any failure here means the server cannot be used
        print(f"pgolf ui: the tracking server {uri} does not answer ({type(exc).__name__}: {str(exc)[:300]}); "
              f"check that `mlflow server` runs there and that the port is reachable (ssh -L PORT:localhost:PORT)",
              file=sys.stderr)
        return 2
    print(f"pgolf ui: {uri} is an MLflow tracking server; its UI is already running at {url}")
    for e in exps:
        if counts[e.experiment_id]:
            print(f"  {e.name}: {counts[e.experiment_id]} runs  {url}/#/experiments/{e.experiment_id}")
    return 0
