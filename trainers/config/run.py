"""Per-run fields: seed, device, output directory, compile, and the caps the run is judged by."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class RunConfig:
    seed: int = 1337
    run_dir: str = "runs/latest"
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = True  # torch.compile on CUDA; never on CPU (slower there, see docs)
    threads: int = 0  # torch CPU threads; 0 = torch default
    artifact_cap_bytes: int = 16_000_000  # decimal cap on code + compressed model bytes
    eval_cap_seconds: float = 600.0  # eval-side phases (see phases.py) must fit in this
