"""Optimizer fields: Muon for block matrices, Adam for token/scalar/head groups. Baseline defaults."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class OptimConfig:
    matrix_lr: float = 0.04  # Muon group (2-D block weights)
    scalar_lr: float = 0.04  # Adam group: vectors, scalars, control tensors, skip weights
    tied_embed_lr: float = 0.05  # Adam group for the tied embedding
    embed_lr: float = 0.6  # untied embedding only
    head_lr: float = 0.008  # untied head only
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5  # Newton-Schulz iterations
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0  # global norm clip; 0 = off (baseline)
