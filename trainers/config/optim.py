"""Optimizer fields: Muon for block matrices, Adam(W) for token/scalar/head groups. Baseline defaults;
record numbers (#N) as in techniques.md §3.15/§3.16."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._base import choices, need


@dataclass(kw_only=True)
class OptimConfig:
    def validate(self) -> None:
        choices(self, "optim")
        for key in ("matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr", "muon_wd", "adam_wd",
                    "grad_clip_norm", "adam_eps"):
            need(getattr(self, key) >= 0, f"optim.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("muon_momentum", "muon_momentum_warmup_start", "beta1", "beta2"):
            need(0 <= getattr(self, key) < 1, f"optim.{key} must be in [0, 1), got {getattr(self, key)}")
        need(self.muon_backend_steps >= 1 and self.muon_momentum_warmup_steps >= 0,
             "optim.muon_backend_steps must be >= 1 and optim.muon_momentum_warmup_steps >= 0")
        need(0 <= self.wd_taper_start_frac <= 1 and self.wd_taper_final_mult >= 0,
             f"optim.wd_taper_start_frac must be in [0, 1] (1 = off) and optim.wd_taper_final_mult >= 0, got "
             f"{self.wd_taper_start_frac} / {self.wd_taper_final_mult}")

    matrix_lr: float = 0.04  # Muon group (2-D block weights + BigramHash/VE proj); 0.02 #162/#180, 0.025 #198..#691
    scalar_lr: float = 0.04  # Adam group: vectors, scalars, control tensors, skip weights; 0.02 #162, 0.025 #198..#691
    tied_embed_lr: float = 0.05  # Adam token group (tied embedding + BigramHash/VE tables); 0.03 #162/#180, 0.035 #198..#691
    embed_lr: float = 0.6  # untied embedding only
    head_lr: float = 0.008  # untied head only
    muon_momentum: float = 0.95  # 0.99 from #102/#162 on
    muon_momentum_warmup_start: float = 0.85  # momentum ramps linearly from here; 0.92 from #102/#162 on
    muon_momentum_warmup_steps: int = 500  # 1500 from #102/#162 on
    muon_backend_steps: int = 5  # Newton-Schulz iterations
    muon_wd: float = 0.0  # decoupled Muon WD: W *= 1 - lr_t*wd before each update (lr_t scheduled); 0 baseline, 0.04 #162..#691
    muon_row_norm: bool = False  # MuonEq-R: divide each row of the Nesterov update by its L2 norm before NS; off; #1217/#1285
    muon_ns_coeffs: Literal["quintic", "polar_express"] = "quintic"  # quintic (3.4445, -4.7750, 2.0315; baseline) | polar_express (5 per-iteration tuples; #1344/#1787)
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    adam_wd: float = 0.0  # AdamW decoupled WD of the token and scalar groups; 0 baseline, 0.01 #162, 0.04 #180..#691
    token_wd: float = -1.0  # token-group WD override (tok_emb, BigramHash/VE tables); < 0 = adam_wd; 0.085 at SP4096+ (#1218)
    scalar_wd: float = -1.0  # scalar-group WD override; < 0 = adam_wd; 0.02 at SP4096+
    # Muon WD taper (#1729): past this training fraction the Muon WD falls linearly to
    # wd_taper_final_mult x muon_wd at the end of training; 1 = off. 0.70 / 0.50 in #1729.
    wd_taper_start_frac: float = 1.0
    wd_taper_final_mult: float = 1.0
    grad_clip_norm: float = 0.0  # global norm clip; 0 = off (baseline); 0.3 from #135/#162 on
