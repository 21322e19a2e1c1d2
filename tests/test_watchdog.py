"""The trainer's watchdog (pgolf.watchdog): the trainer outlives nothing that started it, and a watched
trainer exits exactly as an unwatched one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from orch_helpers import alive

SLEEPER = [sys.executable, "-c", "import time, os; print(os.getpid(), flush=True); time.sleep(600)"]


def test_trainer_is_stopped_when_the_process_that_started_it_dies(tmp_path):
    # A stand-in for the trial actor: it starts the watched trainer in a new process group (as trial.py
    # does), says the pids, and is then SIGKILLed, as a lost node or a killed driver would end it.
    actor = subprocess.Popen([sys.executable, "-c", f"""
import os, subprocess, sys
from pgolf import watchdog
cmd = watchdog.command(os.getpid(), {SLEEPER!r})
p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=open({str(tmp_path / 'w.log')!r}, 'w'), text=True)
print(p.pid, p.stdout.readline().strip(), flush=True)
import time; time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    watcher, trainer = map(int, actor.stdout.readline().split())
    try:
        assert alive(watcher) and alive(trainer)
        actor.kill()
        actor.wait()
        deadline = time.time() + 30
        while (alive(watcher) or alive(trainer)) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(trainer) and not alive(watcher)
    finally:
        for pid in (trainer, watcher):  # only if the assertion failed: never leave them running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert f"the trial process {actor.pid} is gone" in (tmp_path / "w.log").read_text()


def test_trainer_dies_with_a_sigkilled_watchdog():
    """Ray SIGKILLs the direct children of a worker that exits: that is the watchdog, and the trainer
    below it must not be orphaned."""
    p = subprocess.Popen([sys.executable, "-m", "pgolf.watchdog", str(os.getpid()), "--", *SLEEPER],
                         start_new_session=True, stdout=subprocess.PIPE, text=True)
    trainer = int(p.stdout.readline())
    try:
        p.kill()
        p.wait(timeout=30)
        deadline = time.time() + 30
        while alive(trainer) and time.time() < deadline:
            time.sleep(0.1)
        assert not alive(trainer)
    finally:
        try:
            os.kill(trainer, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _watched(cmd):
    return subprocess.Popen([sys.executable, "-m", "pgolf.watchdog", str(os.getpid()), "--", *cmd],
                            start_new_session=True)


def test_exit_code_and_signals_are_the_trainers():
    assert _watched([sys.executable, "-c", "raise SystemExit(3)"]).wait(timeout=60) == 3
    assert _watched([sys.executable, "-c", "pass"]).wait(timeout=60) == 0
    # a trainer killed alone (the kernel's OOM killer, a fault injected at a step): its signal, not an error
    for sig in (signal.SIGKILL, signal.SIGTERM):
        code = f"import os; os.kill(os.getpid(), {int(sig)})"
        assert _watched([sys.executable, "-c", code]).wait(timeout=60) == -sig
    # the trial stops a trainer by signalling its process group: the watchdog's exit says how it ended
    for sig in (signal.SIGTERM, signal.SIGKILL):
        p = _watched(SLEEPER)
        time.sleep(1.0)
        os.killpg(p.pid, sig)
        assert p.wait(timeout=60) == -sig
