"""SIGTERM (and SIGHUP) handled like Ctrl-C by the driver processes (`validate`, `tune`, `ui`), so a
scheduler's stop or a closed terminal closes the runs and the servers they started instead of leaving
them RUNNING or serving."""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised where the main thread is; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _signum(exc: KeyboardInterrupt) -> int:
    # Ray Tune re-raises a plain KeyboardInterrupt for the one our handler raised: the signal is
    # remembered here as well.
    if isinstance(exc, Terminated):
        return exc.signum
    return _received[-1] if _received else signal.SIGINT


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + _signum(exc)


def reason(exc: KeyboardInterrupt) -> str:
    n = _signum(exc)
    return "interrupted" if n == signal.SIGINT else f"interrupted ({signal.Signals(n).name})"


_active = False
_received: list[int] = []


def _raise_terminated(signum, frame):
    _received.append(signum)
    raise Terminated(signum)


def reassert() -> None:
    """Ray's core worker installs its own SIGTERM handler in `ray.init` (it logs and aborts: rc 134);
    call this after connecting so SIGTERM stays an interrupt while `terminate_as_interrupt` is active."""
    if _active and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, _raise_terminated)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Terminated in the main thread; SIGINT keeps Python's
    KeyboardInterrupt. Ray Tune's own SIGINT handler (which ends the run quietly and advises
    Tuner.restore) is disabled for the block, so pgolf's handler and --resume hint apply."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    global _active
    _received.clear()
    saved = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    _active = True
    saved_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    env_before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        _active = False
        for s, h in saved.items():
            signal.signal(s, h)
        signal.signal(signal.SIGINT, saved_int)
        if env_before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env_before
