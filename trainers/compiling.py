"""When and how the trainer compiles: one rule for the training model and the scoring model."""
from __future__ import annotations

import torch

from .config import TrainConfig



def wants_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """Inductor only on CUDA (on the CPU it compiles for minutes to run slower); the dynamo-only
    backends anywhere, since they exist to check the compiled path on machines without a GPU."""
    return cfg.run.compile and (device.type == "cuda" or cfg.run.compile_backend != "inductor")


def compile_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """`model` compiled with static shapes (every pass keeps one shape; see evaluate.score_batch),
    or `model` itself when the run does not compile."""
    if not wants_compile(cfg, device):
        return model
    return torch.compile(model, dynamic=False, backend=cfg.run.compile_backend)
