"""Parameter groups, optimizers and the LR / momentum schedules (techniques.md §3.15-§3.17)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig
from .model import GPT, TOKEN_TABLES, is_control
from .muon import Muon


@dataclass
class ParamGroups:
    matrix: list[tuple[str, nn.Parameter]]  # Muon: block matrices + BigramHash/VE projections
    token: list[tuple[str, nn.Parameter]]  # Adam(W) at the tied/embedding LR: tok_emb, BigramHash/VE tables
    scalar: list[tuple[str, nn.Parameter]]  # Adam(W) at the scalar LR: vectors, scalars, control tensors
    head: list[tuple[str, nn.Parameter]]  # Adam at the head LR (untied only)


def split_params(model: GPT) -> ParamGroups:
    groups = ParamGroups([], [], [], [])
    for name, p in model.named_parameters():
        if name in TOKEN_TABLES:
            groups.token.append((name, p))
        elif name.startswith("lm_head."):
            groups.head.append((name, p))
        elif p.ndim == 2 and not is_control(name):
            groups.matrix.append((name, p))
        else:
            groups.scalar.append((name, p))
    return groups


def _wd(override: float, default: float) -> float:
    return default if override < 0 else override


def build_optimizers(model: GPT, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    groups = split_params(model)
    fused = next(model.parameters()).is_cuda
    betas = (cfg.beta1, cfg.beta2)

    def adam(named, lr, wd=0.0):
        params = [p for _, p in named]
        group = [{"params": params, "lr": lr, "base_lr": lr}]
        if wd > 0:
            # AdamW's decay is lr * wd with the scheduled group LR, like Muon WD.
            return torch.optim.AdamW(group, betas=betas, eps=cfg.adam_eps, weight_decay=wd, fused=fused)
        return torch.optim.Adam(group, betas=betas, eps=cfg.adam_eps, fused=fused)

    token_lr = cfg.tied_embed_lr if model.cfg.tie_embeddings else cfg.embed_lr
    optimizers: list[torch.optim.Optimizer] = [adam(groups.token, token_lr, _wd(cfg.token_wd, cfg.adam_wd))]
    muon = Muon([p for _, p in groups.matrix], lr=cfg.matrix_lr, momentum=cfg.muon_momentum,
                backend_steps=cfg.muon_backend_steps, weight_decay=cfg.muon_wd, row_norm=cfg.muon_row_norm,
                ns_coeffs=cfg.muon_ns_coeffs)
    for g in muon.param_groups:
        g["base_lr"] = cfg.matrix_lr
    optimizers.append(muon)
    optimizers.append(adam(groups.scalar, cfg.scalar_lr, _wd(cfg.scalar_wd, cfg.adam_wd)))
    if groups.head:
        optimizers.append(adam(groups.head, cfg.head_lr))
    return optimizers


def warmdown_scale(step: int, elapsed_ms: float, sched: ScheduleConfig, cap_seconds: float | None = None) -> float:
    """1, then a linear warmdown to 0 (before the min_lr floor).

    With a wall-clock cap the warmdown is placed by time (estimated from the mean step time so far),
    as the records do; without one it is placed by step count (deterministic). `warmdown_frac` > 0
    sizes it as a fraction of the iterations / of the cap instead of `warmdown_iters`.
    """
    cap_s = sched.max_wallclock_seconds if cap_seconds is None else cap_seconds
    if sched.warmdown_frac <= 0 and sched.warmdown_iters <= 0:
        return 1.0
    if cap_s <= 0:
        span = sched.warmdown_frac * sched.iterations if sched.warmdown_frac > 0 else float(sched.warmdown_iters)
        start = max(sched.iterations - span, 0.0)
        if step < start:
            return 1.0
        return max((sched.iterations - step) / max(span, 1e-9), 0.0)
    if sched.warmdown_frac > 0:
        warmdown_ms = sched.warmdown_frac * cap_s * 1000.0
    else:
        warmdown_ms = sched.warmdown_iters * elapsed_ms / max(step, 1)
    remaining_ms = max(cap_s * 1000.0 - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def lr_scale(step: int, elapsed_ms: float, sched: ScheduleConfig, cap_seconds: float | None = None) -> float:
    """Multiplier on every base LR: the warmdown, floored at `min_lr` (#1787). Late triggers (SWA,
    late QAT) key off this value."""
    s = warmdown_scale(step, elapsed_ms, sched, cap_seconds)
    return max(s, sched.min_lr) if sched.min_lr > 0 else s


def muon_momentum(step: int, cfg: OptimConfig) -> float:
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1.0 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def wd_taper(frac: float, cfg: OptimConfig) -> float:
    """Multiplier on the Muon WD (#1729): 1 up to wd_taper_start_frac of training, then linear to
    wd_taper_final_mult at the end."""
    start = cfg.wd_taper_start_frac
    if start >= 1.0 or frac <= start:
        return 1.0
    return 1.0 + (cfg.wd_taper_final_mult - 1.0) * min((frac - start) / (1.0 - start), 1.0)


def apply_schedules(optimizers: list[torch.optim.Optimizer], scale: float, momentum: float,
                    wd_mult: float = 1.0) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if isinstance(opt, Muon):
                group["momentum"] = momentum
                # the eager optimizer step reads it each step: no compiled graph to fold it into
                group["weight_decay"] = group.setdefault("base_wd", group["weight_decay"]) * wd_mult
