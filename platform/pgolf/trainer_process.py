"""The trainer subprocess as a trial sees it: the metrics.jsonl it appends to, its process group
(stopped as a whole, also after the trial actor is gone), its log and fingerprints, and what its exit
means (MLflow status and reason)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from pgolf.trainers.contract import EXIT_OVER_BUDGET, EXIT_REASONS

TERM_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 60




class MetricsTail:
    """Reads the complete lines appended to metrics.jsonl since the last call (the trainer flushes
    after every event; a half-written last line waits for the next call)."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.buffer = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.buffer + chunk
        lines = data.split(b"\n")
        self.buffer = lines.pop()  # incomplete (or empty) tail
        events = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a corrupt line must not kill the trial; the raw file is kept as an artifact
            if isinstance(ev, dict):
                events.append(ev)
        return events


def kill_group(proc: subprocess.Popen, grace: float = TERM_GRACE_SECONDS) -> None:
    """SIGTERM the trainer's whole process group (torchrun and its ranks), SIGKILL what is left after
    `grace` seconds. Safe to call on a finished process: it also reaps stragglers of the group."""
    try:
        pgid = os.getpgid(proc.pid) if proc.poll() is None else proc.pid
    except ProcessLookupError:
        pgid = proc.pid
    if proc.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def stop_trainers_below(root: str, grace: float = 2.0) -> list[int]:
    """Trainer process groups recorded in `root/*/trainer.pid` that still run (their trial actor is gone,
    e.g. after Ctrl-C): SIGTERM, then SIGKILL after `grace` s. Returns the groups signalled."""
    groups = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        try:
            with open(os.path.join(root, name, "trainer.pid"), encoding="ascii") as fh:
                pid = int(fh.read().strip())
            if os.getpgid(pid) == pid:  # still the leader of its own group: our trainer, not a reused pid
                groups.append(pid)
        except ProcessLookupError:  # the leader (the watchdog) is gone; members of its group may not be
            if _group_alive(pid):
                groups.append(pid)
        except (OSError, ValueError):
            continue
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.1)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    return groups


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: str, n: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()[-n:]
    except OSError:
        return []


def fingerprints_from_log(path: str) -> tuple[dict | None, dict | None]:
    """The trainer writes its environment and data fingerprints near the top of train.log; a run that
    died before result.json still gets them this way."""
    env = data = None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for _, line in zip(range(400), fh):
                if line.startswith("environment: "):
                    env = json.loads(line[len("environment: "):])
                elif line.startswith("data: "):
                    data = json.loads(line[len("data: "):])
    except (OSError, ValueError):
        pass
    return env, data


def load_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            out = json.load(fh)
        return out if isinstance(out, dict) else None
    except (OSError, ValueError):
        return None


def classify(returncode: int | None, result: dict | None, *, timed_out: bool, stopped: bool,
             deadline: float, output_tail: list[str], last_step: int | None) -> tuple[str, str]:
    """(MLflow status, status_reason). KILLED: the platform ended the run (deadline, scheduler, Ctrl-C);
    FAILED: the trainer failed or finished outside the rules."""
    at = f" after step {last_step}" if last_step is not None else ""
    if stopped:
        return "KILLED", f"stopped by Ray Tune (scheduler decision or shutdown){at}"
    if timed_out:
        return "KILLED", (f"timed out: no result within the trial deadline of {deadline:g} s{at}; the trainer's "
                          f"process group was killed (raise budget.trial_timeout_seconds if the run is legitimately slower)")
    last = next((line.strip() for line in reversed(output_tail) if line.strip()), "")
    if returncode == 0:
        if result and result.get("status") == "ok":
            return "FINISHED", "ok"
        if result and result.get("status") == "over_budget":
            return "FAILED", f"over budget: {result.get('status_reason', '')}".rstrip(": ")
        return "FAILED", "trainer exited 0 but wrote no result.json with status ok"
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return "FAILED", f"trainer killed by {name}{at} (out of memory, or killed from outside)"
    if returncode == EXIT_OVER_BUDGET and result and result.get("status_reason"):
        return "FAILED", f"over budget: {result['status_reason']}"
    label = EXIT_REASONS.get(returncode or 0, "trainer failed")
    return "FAILED", f"{label} (exit {returncode}){at}: {last}" if last else f"{label} (exit {returncode}){at}"
