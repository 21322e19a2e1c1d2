"""Hooks that realise FaultConfig. Cheap no-ops unless a test switched a fault on."""
from __future__ import annotations

import os
import signal
import time

from .config.faults import FaultConfig


def after_step(step: int, faults: FaultConfig) -> None:
    if faults.raise_at_step and step == faults.raise_at_step:
        raise RuntimeError(f"injected fault: exception at step {step}")
    if faults.sigkill_at_step and step == faults.sigkill_at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    if faults.hang_at_step and step == faults.hang_at_step:
        while True:
            time.sleep(3600)

