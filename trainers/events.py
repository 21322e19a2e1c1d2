"""The run directory's two logs: `metrics.jsonl` (one JSON event per line, machine-read by the
platform) and `train.log` (human-readable, starts with the resolved config and fingerprint)."""
from __future__ import annotations

import json
import math
import os
import sys
import time

from .contract import METRICS_FILE, TRAIN_LOG


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible instead of crashing the writer
    return value


class EventLog:
    def __init__(self, run_dir: str, enabled: bool = True, echo: bool = True):
        self.enabled = enabled
        self.echo = echo
        self.run_dir = run_dir
        self._events = self._log = None
        if enabled:
            os.makedirs(run_dir, exist_ok=True)
            self._events = open(os.path.join(run_dir, METRICS_FILE), "a", encoding="utf-8")
            self._log = open(os.path.join(run_dir, TRAIN_LOG), "a", encoding="utf-8")

    def event(self, kind: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": kind, "time": round(time.time(), 3), **{k: _clean(v) for k, v in fields.items()}}
        self._events.write(json.dumps(record, sort_keys=False) + "\n")
        self._events.flush()  # the platform tails this file while the run is alive

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        self._log.write(message + "\n")
        self._log.flush()
        if self.echo:
            print(message, file=sys.stdout, flush=True)

    def close(self) -> None:
        for fh in (self._events, self._log):
            if fh is not None:
                fh.close()
