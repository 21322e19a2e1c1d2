"""Per-run fields: seed, device, output directory, compile, attention backend, and the caps the run
is judged by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._base import choices, need

AttentionChoice = Literal["auto", "fa3", "fa2", "sdpa"]


@dataclass(kw_only=True)
class RunConfig:
    def validate(self) -> None:
        choices(self, "run")
        need(self.threads >= 0, f"run.threads must be >= 0 (0 = torch default), got {self.threads}")
        need(self.artifact_cap_bytes > 0, f"run.artifact_cap_bytes must be > 0, got {self.artifact_cap_bytes}")
        need(self.eval_cap_seconds > 0, f"run.eval_cap_seconds must be > 0, got {self.eval_cap_seconds}")

    seed: int = 1337
    run_dir: str = "runs/latest"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = True  # torch.compile on CUDA; never on CPU with inductor (slower there, see docs)
    # inductor on CUDA. "eager" / "aot_eager" run dynamo alone, also on the CPU: the compiled code
    # path (graph breaks, recompiles, DDP over a compiled module) checked without a GPU.
    compile_backend: Literal["inductor", "eager", "aot_eager"] = "inductor"
    # auto = the first of fa3 (flash_attn_interface, Hopper) -> fa2 (flash_attn) -> sdpa that runs here;
    # an explicit choice that cannot run is a bad config. The chosen one is logged (it moves ms/step).
    attention_backend: AttentionChoice = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch default
    artifact_cap_bytes: int = 16_000_000  # decimal cap on code + compressed model bytes
    eval_cap_seconds: float = 600.0  # eval-side phases (see phases.py) must fit in this
