"""Test-time training on the validation stream (off in the baseline)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class TTTConfig:
    mode: str = "off"  # off (baseline); further modes arrive with the TTT implementation
