"""Per-run fields: seed, device, output directory, compile, attention backend, and the caps the run
is judged by."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class RunConfig:
    seed: int = 1337
    run_dir: str = "runs/latest"
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = True  # torch.compile on CUDA; never on CPU with inductor (slower there, see docs)
    # inductor on CUDA. "eager" / "aot_eager" run dynamo alone, also on the CPU: the compiled code
    # path (graph breaks, recompiles, DDP over a compiled module) checked without a GPU.
    compile_backend: str = "inductor"
    # auto = the first of fa3 (flash_attn_interface, Hopper) -> fa2 (flash_attn) -> sdpa that runs here;
    # an explicit choice that cannot run is a bad config. The chosen one is logged (it moves ms/step).
    attention_backend: str = "auto"  # auto | fa3 | fa2 | sdpa
    threads: int = 0  # torch CPU threads; 0 = torch default
    artifact_cap_bytes: int = 16_000_000  # decimal cap on code + compressed model bytes
    eval_cap_seconds: float = 600.0  # eval-side phases (see phases.py) must fit in this
