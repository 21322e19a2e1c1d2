"""Parameter groups, optimizers and the LR / momentum schedules of the baseline."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig
from .model import GPT, is_control
from .muon import Muon


@dataclass
class ParamGroups:
    matrix: list[tuple[str, nn.Parameter]]  # Muon
    token: list[tuple[str, nn.Parameter]]  # Adam at the tied/embedding LR
    scalar: list[tuple[str, nn.Parameter]]  # Adam at the scalar LR
    head: list[tuple[str, nn.Parameter]]  # Adam at the head LR (untied only)


def split_params(model: GPT) -> ParamGroups:
    groups = ParamGroups([], [], [], [])
    for name, p in model.named_parameters():
        if name.startswith("tok_emb."):
            groups.token.append((name, p))
        elif name.startswith("lm_head."):
            groups.head.append((name, p))
        elif name.startswith("blocks.") and p.ndim == 2 and not is_control(name):
            groups.matrix.append((name, p))
        else:
            groups.scalar.append((name, p))
    return groups


def build_optimizers(model: GPT, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    groups = split_params(model)
    fused = next(model.parameters()).is_cuda
    betas = (cfg.beta1, cfg.beta2)

    def adam(named, lr):
        params = [p for _, p in named]
        opt = torch.optim.Adam([{"params": params, "lr": lr, "base_lr": lr}], betas=betas, eps=cfg.adam_eps, fused=fused)
        return opt

    token_lr = cfg.tied_embed_lr if model.cfg.tie_embeddings else cfg.embed_lr
    optimizers: list[torch.optim.Optimizer] = [adam(groups.token, token_lr)]
    muon = Muon([p for _, p in groups.matrix], lr=cfg.matrix_lr, momentum=cfg.muon_momentum,
                backend_steps=cfg.muon_backend_steps)
    for g in muon.param_groups:
        g["base_lr"] = cfg.matrix_lr
    optimizers.append(muon)
    optimizers.append(adam(groups.scalar, cfg.scalar_lr))
    if groups.head:
        optimizers.append(adam(groups.head, cfg.head_lr))
    return optimizers


def lr_scale(step: int, elapsed_ms: float, sched: ScheduleConfig) -> float:
    """Multiplier on every base LR: 1, then a linear warmdown to 0.

    With a wall-clock cap the warmdown is placed by time (estimated from the mean step time so far),
    as the baseline does; without one it is placed by step count (deterministic).
    """
    if sched.warmdown_iters <= 0:
        return 1.0
    if sched.max_wallclock_seconds <= 0:
        start = max(sched.iterations - sched.warmdown_iters, 0)
        if step < start:
            return 1.0
        return max((sched.iterations - step) / sched.warmdown_iters, 0.0)
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = sched.warmdown_iters * step_ms
    remaining_ms = max(sched.max_wallclock_seconds * 1000.0 - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def muon_momentum(step: int, cfg: OptimConfig) -> float:
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1.0 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def apply_schedules(optimizers: list[torch.optim.Optimizer], scale: float, momentum: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if isinstance(opt, Muon):
                group["momentum"] = momentum
