"""The trainer's watchdog: `python -m pgolf.watchdog PARENT_PID -- CMD...` runs CMD as its child and
ends CMD's process group when PARENT_PID (the trial actor that started it) is gone.

Why: the trainer runs in its own process group (so a trial can stop torchrun and every rank at once),
which also means nothing stops it when its actor dies without cleaning up: a lost raylet, a driver
killed on another node. Locally the driver stops trainers it finds under its runs dir; on a worker node
only this process can. Stdlib only, so it starts in milliseconds.

Exit status is the child's: its exit code, or the same signal re-raised, so the trial classifies a
watched trainer exactly as an unwatched one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_SECONDS = 1.0
GRACE_SECONDS = 10.0  # SIGTERM to SIGKILL: the trainer's own handler writes its log and exits
EXIT_ORPHANED = 143  # what a SIGTERMed trainer exits with; the trial is gone and records nothing


def _stop_group(grace: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's signal is for the trainer, not for us
    os.killpg(os.getpgrp(), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.1)
        except ChildProcessError:
            break
    os.killpg(os.getpgrp(), signal.SIGKILL)  # ends us too


def _die_with_us() -> None:
    """In the child before exec: SIGKILL it when this process dies. Ray SIGKILLs the direct children of
    a worker that exits (this watchdog), which would otherwise orphan the trainer."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: the parent poll below still applies


def watch(parent: int, cmd: list[str], poll: float = POLL_SECONDS, grace: float = GRACE_SECONDS) -> int:
    # In our process group: the trial signals the group, the child gets it. preexec_fn is safe here: this
    # process has one thread.
    child = subprocess.Popen(cmd, preexec_fn=_die_with_us)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # the child got the same signal; wait for it to exit
    while True:
        try:
            rc = child.wait(timeout=poll)
            break
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:
            print(f"pgolf watchdog: the trial process {parent} is gone; stopping the trainer (pid {child.pid})",
                  file=sys.stderr, flush=True)
            _stop_group(grace)
            return EXIT_ORPHANED
    if rc < 0:
        if -rc != signal.SIGKILL:  # SIGKILL has no handler to reset (and needs none)
            signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


def command(parent: int, cmd: list[str]) -> list[str]:
    return [sys.executable, "-m", "pgolf.watchdog", str(parent), "--", *cmd]


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: python -m pgolf.watchdog PARENT_PID -- CMD...")
    sys.exit(watch(int(sys.argv[1]), sys.argv[3:]))
