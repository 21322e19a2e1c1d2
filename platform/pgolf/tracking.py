"""MLflow tracking for pgolf: parent and child runs, what a trial logs, the (config_hash, seed) lookup
that `--resume` uses and closing runs whose driver is gone. Where the store is and the batched writes
live in pgolf.store (re-exported here).

Everything goes through an explicit `MlflowClient(tracking_uri)`, never the fluent API: trials of one
Ray worker process would otherwise share mlflow's global active-run stack, and a stray `MLFLOW_RUN_ID`
in the environment would silently override `parent_run_id` (mlflow#15713).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from pgolf.experiment import flatten  # one flattening for params, tags and variants
from pgolf.store import (ARTIFACTS_DIR, DB_NAME, ENV_TRACKING_URI, MAX_METRICS_PER_BATCH,  # noqa: F401 - re-exported
                         MAX_PARAM_VALUE, MAX_PARAMS_PER_BATCH, MAX_TAG_VALUE, TrackingError, _as_text, _num,
                         check_writable_store, client, get_or_create_experiment, log_metrics, log_params,
                         metric_key, resolve_tracking_uri, set_tags)
from pgolf.trainers.contract import ARTIFACT_BYTES, HEADROOM_BYTES

# Tag keys (design.md "MLflow structure"). `pgolf.kind` separates trial runs from parents in searches.
KIND = "pgolf.kind"
KIND_TRIAL = "trial"
TRIAL_TAGS = ("config_hash", "seed", "variant", "git_sha", "trainer", "ray_trial_id", "node_class", "status_reason")

# Files of a trainer run directory that become artifacts of the child run, when present.
RUN_FILES = ("resolved_config.json", "train.log", "result.json", "metrics.jsonl", "byte_report.json",
             "ttt_trace.jsonl", "train_gpt.py", "trainer_output.log", "log_tail.txt")


# --------------------------------------------------------------------------------------------------
# provenance


def git_state(cwd: str | None = None) -> tuple[str, bool]:
    """(commit sha, dirty). Computed on the driver and handed to trials: a Ray job's working_dir copy
    has no .git, so trials cannot find it themselves."""
    where = cwd or os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown", False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


# --------------------------------------------------------------------------------------------------
# parent run


def start_parent_run(uri: str, experiment_id: str, *, run_name: str, tags: Mapping[str, Any],
                     params: Mapping[str, Any] | None = None) -> str:
    c = client(uri)
    tags = {**driver_identity(), **tags}
    run = c.create_run(experiment_id, run_name=run_name, tags={k: _as_text(v) for k, v in tags.items()})
    if params:
        log_params(c, run.info.run_id, params)
    return run.info.run_id


def finish_run(uri: str, run_id: str, status: str) -> None:
    client(uri).set_terminated(run_id, status=status)


# --------------------------------------------------------------------------------------------------
# child (trial) runs


def trial_run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


class TrialRecorder:
    """The MLflow side of one trial: created before the trainer starts (so even a trial that dies at
    once leaves a run), fed step metrics while it runs, closed with a status and a reason."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, *, variant: str, seed: int,
                 config_hash: str, git_sha: str, trainer: str, ray_trial_id: str, params: Mapping[str, Any],
                 extra_tags: Mapping[str, Any] | None = None):
        self.uri = uri
        self.c = client(uri)
        self.config_hash = config_hash
        tags = {
            "mlflow.parentRunId": parent_run_id, KIND: KIND_TRIAL, "config_hash": config_hash,
            "seed": str(seed), "variant": variant, "git_sha": git_sha, "trainer": trainer,
            "ray_trial_id": ray_trial_id, "node_class": "unknown", "status_reason": "running",
            **(extra_tags or {}),
        }
        run = self.c.create_run(experiment_id, run_name=trial_run_name(variant, seed),
                                tags={k: _as_text(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        log_params(self.c, self.run_id, params)
        self._fingerprinted = False
        self._pending: list[tuple[str, Any, int]] = []

    def log_events(self, events: list[dict]) -> int:
        """Step-wise metrics from metrics.jsonl events (train, val, phase). The final event is logged by
        `finish` from result.json, which is the authoritative copy. Metrics that the store refused (a
        locked sqlite file under many writers) stay queued and go with the next call."""
        for ev in events:
            kind = ev.get("event")
            if kind in ("train", "val"):
                step = int(ev.get("step", 0))
                self._pending.extend((k, v, step) for k, v in ev.items() if k not in ("event", "time", "step"))
            elif kind == "phase" and "name" in ev:
                self._pending.append((f"time/{ev['name']}_s", ev.get("seconds"), 0))
        return self.flush()

    def flush(self, attempts: int = 1) -> int:
        for i in range(attempts):
            if not self._pending:
                return 0
            try:
                n = log_metrics(self.c, self.run_id, self._pending)
                self._pending = []
                return n
            except Exception:
                if i == attempts - 1:
                    raise
                time.sleep(0.5 * (i + 1))
        return 0

    def fingerprint(self, env: Mapping[str, Any] | None, data: Mapping[str, Any] | None) -> None:
        """Environment and data fingerprints as tags (`env.*`, `data.*`), node_class from the env."""
        if self._fingerprinted or not (env or data):
            return
        tags: dict[str, Any] = {}
        if env:
            tags.update({f"env.{k}": v for k, v in env.items()})
            if env.get("node_class"):
                tags["node_class"] = env["node_class"]
        if data:
            tags.update({f"data.{k}": v for k, v in flatten(data).items()})
        set_tags(self.c, self.run_id, tags)
        self._fingerprinted = bool(env)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        set_tags(self.c, self.run_id, tags)

    def finish(self, *, status: str, reason: str, run_dir: str, result: Mapping[str, Any] | None,
               extra_metrics: Mapping[str, Any] | None = None) -> None:
        """Final metrics, artifacts, status. Every step is attempted even when an earlier one fails, so a
        broken artifact upload cannot leave the run RUNNING."""
        errors = []
        try:
            self.flush(attempts=5)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"step metrics: {exc}")
        try:
            if result:
                step = int(result.get("steps", 0) or 0)
                finals = [(k, v, step) for k, v in result.items() if _num(v) is not None and k not in ("seed",)]
                finals += [(k, v, step) for k, v in (extra_metrics or {}).items()]
                log_metrics(self.c, self.run_id, finals)
                self.fingerprint(result.get("env"), result.get("data"))
                if isinstance(result.get("ttt"), Mapping):
                    set_tags(self.c, self.run_id, {f"ttt.{k}": v for k, v in flatten(result["ttt"]).items()})
            elif extra_metrics:
                log_metrics(self.c, self.run_id, [(k, v, 0) for k, v in extra_metrics.items()])
        except Exception as exc:  # noqa: BLE001 - recorded below; the run must still be closed
            errors.append(f"metrics: {exc}")
        try:
            self.log_run_files(run_dir, result)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"artifacts: {exc}")
        lost = [e for e in errors if not e.startswith("step metrics")]
        if status == "FINISHED" and lost:
            # The score, the blob or the logs did not reach the store: a FINISHED run here would be a
            # claim without evidence, and --resume would skip the seed.
            status, reason = "FAILED", f"tracking: the run's evidence did not reach the store ({'; '.join(lost)[:500]})"
        tags = {"status_reason": reason}
        if errors:
            tags["tracking_errors"] = "; ".join(errors)
        try:
            set_tags(self.c, self.run_id, tags)
        except Exception:  # noqa: BLE001 - closing the run matters more than its reason tag
            pass
        self.c.set_terminated(self.run_id, status=status)
        self.status = status

    def log_run_files(self, run_dir: str, result: Mapping[str, Any] | None) -> None:
        if not run_dir or not os.path.isdir(run_dir):
            return
        if result and not os.path.exists(os.path.join(run_dir, "byte_report.json")):
            write_byte_report(run_dir, result)
        for name in RUN_FILES:
            path = os.path.join(run_dir, name)
            if os.path.isfile(path):
                self.c.log_artifact(self.run_id, path)
        for name in sorted(os.listdir(run_dir)):
            if name.startswith("final_model.") and name.endswith(".ptz"):
                self.c.log_artifact(self.run_id, os.path.join(run_dir, name))


def write_byte_report(run_dir: str, result: Mapping[str, Any]) -> str:
    """What the 16,000,000-byte cap counts, from the files on disk (not only the trainer's numbers)."""
    files = {}
    blob = result.get("artifact/blob")
    for name in ("train_gpt.py", blob):
        if name and os.path.isfile(os.path.join(run_dir, name)):
            files[name] = os.path.getsize(os.path.join(run_dir, name))
    total, headroom = _num(result.get(ARTIFACT_BYTES)), _num(result.get(HEADROOM_BYTES))
    cap = int(total + headroom) if total is not None and headroom is not None else None
    report = {
        "files": files,
        "total_bytes_on_disk": sum(files.values()),
        ARTIFACT_BYTES: result.get(ARTIFACT_BYTES),
        "artifact/model_bytes": result.get("artifact/model_bytes"),
        "artifact/code_bytes": result.get("artifact/code_bytes"),
        "artifact/code_raw_bytes": result.get("artifact/code_raw_bytes"),
        HEADROOM_BYTES: result.get(HEADROOM_BYTES),
        "cap_bytes": cap,
        "under_cap": headroom >= 0 if headroom is not None else None,
    }
    path = os.path.join(run_dir, "byte_report.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
    return path


# --------------------------------------------------------------------------------------------------
# lookups


def _runs(c, experiment_ids: list[str], filter_string: str) -> list:
    out, token = [], None
    while True:
        page = c.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def finished_trials(uri: str, experiment_id: str) -> dict[tuple[str, int], Any]:
    """(config_hash, seed) -> the newest FINISHED trial run. `--resume` skips these pairs."""
    c = client(uri)
    found: dict[tuple[str, int], Any] = {}
    runs = _runs(c, [experiment_id], f"tags.`{KIND}` = '{KIND_TRIAL}' and attributes.status = 'FINISHED'")
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        if any(part.strip().startswith(("metrics", "artifacts")) for part in tags.get("tracking_errors", "").split(";")):
            continue  # closed FINISHED by an older pgolf without its evidence: run the seed again
        try:
            found[(tags["config_hash"], int(tags["seed"]))] = run
        except (KeyError, ValueError):
            continue
    return found


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    c = client(uri)
    return _runs(c, [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def runs_of_hash(uri: str, experiment_id: str, config_hash: str) -> list:
    return _runs(client(uri), [experiment_id],
                 f"tags.`{KIND}` = '{KIND_TRIAL}' and tags.config_hash = '{config_hash}' "
                 f"and attributes.status = 'FINISHED'")


def load_result(uri: str, run) -> dict | None:
    """The run's result.json artifact (compliance needs its nested env/data/phases/ttt), or a dict
    rebuilt from metrics and tags when the artifact is missing."""
    import tempfile

    c = client(uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = c.download_artifacts(run.info.run_id, "result.json", tmp)
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
    except Exception:  # noqa: BLE001 - no artifact: fall back to what the run itself holds
        if not run.data.metrics:
            return None
        out: dict[str, Any] = dict(run.data.metrics)
        out["seed"] = int(run.data.tags.get("seed", -1))
        out["config_hash"] = run.data.tags.get("config_hash")
        return out


def mark_stale_children(uri: str, experiment_id: str, parent_run_id: str, reason: str) -> list[str]:
    """Children of a parent still RUNNING after Tune returned were stopped from outside (scheduler,
    Ctrl-C, a killed worker) before they could close themselves; record them as KILLED."""
    c = client(uri)
    stale = [r for r in child_runs(uri, experiment_id, parent_run_id) if r.info.status == "RUNNING"]
    for r in stale:
        try:
            _log_what_is_left(c, r.info.run_id, r.data.tags.get("pgolf.run_dir", ""))
        except Exception:  # noqa: BLE001 - the run is closed below whatever the store says
            pass
        set_tags(c, r.info.run_id, {"status_reason": reason})
        c.set_terminated(r.info.run_id, status="KILLED")
    return [r.info.run_id for r in stale]


def _log_what_is_left(c, run_id: str, run_dir: str, lines: int = 50) -> None:
    """A trial stopped from outside never ran its own close: its run directory (when it is on this
    node) still holds the trainer's output and logs; they become the run's artifacts, with a log tail."""
    if not run_dir or not os.path.isdir(run_dir):
        return
    out = os.path.join(run_dir, "trainer_output.log")
    if os.path.isfile(out):
        with open(out, encoding="utf-8", errors="replace") as fh:
            tail = fh.read().splitlines()[-lines:]
        with open(os.path.join(run_dir, "log_tail.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(tail) + "\n")
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            c.log_artifact(run_id, path)


# --------------------------------------------------------------------------------------------------
# invocations whose driver died (SIGKILL, a lost node): closed by the next validate / --resume / report

DRIVER_HOST, DRIVER_PID, DRIVER_START = "pgolf.driver_host", "pgolf.driver_pid", "pgolf.driver_start"
DRIVER_LOST = "driver lost: the pgolf process that ran this invocation ended without closing it"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None when no such process runs.
    Together with the pid it names one process: a recycled pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def driver_identity() -> dict[str, str]:
    import socket

    pid = os.getpid()
    return {DRIVER_HOST: socket.gethostname(), DRIVER_PID: str(pid), DRIVER_START: _process_start(pid) or ""}


def _driver_dead(tags: Mapping[str, str]) -> bool:
    import socket

    if tags.get(DRIVER_HOST) != socket.gethostname() or not tags.get(DRIVER_PID, "").isdigit():
        return False  # another machine's driver (or an older pgolf): nothing here can tell
    start = _process_start(int(tags[DRIVER_PID]))
    return start is None or (bool(tags.get(DRIVER_START)) and start != tags[DRIVER_START])


def close_dead_invocations(uri: str, experiment_ids: list[str] | None = None, reason: str = DRIVER_LOST) -> list[str]:
    """Close RUNNING parents whose driver on this host is gone, and RUNNING trials of any parent that is
    no longer running (FAILED, with `reason`). Returns the run ids closed."""
    c = client(uri)
    ids = experiment_ids if experiment_ids is not None else [e.experiment_id for e in c.search_experiments()]
    if not ids:
        return []
    running = _runs(c, ids, "attributes.status = 'RUNNING'")
    parents = [r for r in running if r.data.tags.get(KIND) not in (None, KIND_TRIAL)]
    closed = []
    for r in parents:
        if _driver_dead(r.data.tags):
            set_tags(c, r.info.run_id, {"status_reason": reason})
            c.set_terminated(r.info.run_id, status="FAILED")
            closed.append(r.info.run_id)
    live = {r.info.run_id for r in parents} - set(closed)
    for r in running:
        tags = r.data.tags
        if tags.get(KIND) != KIND_TRIAL or tags.get("mlflow.parentRunId") in live:
            continue
        set_tags(c, r.info.run_id, {"status_reason": reason})
        c.set_terminated(r.info.run_id, status="FAILED")
        closed.append(r.info.run_id)
    return closed
