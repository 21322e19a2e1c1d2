"""Weight averaging after the training loop (techniques.md §3.18, §3.19).

EMA: theta_bar <- d * theta_bar + (1 - d) * theta after every optimizer step, over the whole state
dict in fp32 on the training device (#287 lineage; #366 kept it on the CPU, which costs host-device
traffic every step). SWA: every `swa_every` steps while the LR scale is under `swa_start_frac`, add
the weights to a running sum (fp32, or each tensor's own dtype as #162/#180/#198/#264 do); the uniform
mean replaces the weights only when `swa_apply` is set, because #414/#549/#691 collect Tight-SWA
checkpoints and then discard them.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AvgConfig


class WeightAverager:
    """Tracks EMA and SWA state for one model; `apply` writes the configured average into it."""

    def __init__(self, model: nn.Module, cfg: AvgConfig):
        cfg.validate()
        self.cfg = cfg
        self.model = model
        self.ema: dict[str, torch.Tensor] | None = None
        self.swa_sum: dict[str, torch.Tensor] | None = None
        self.swa_count = 0
        self.ema_updates = 0
        # state_dict() tensors alias the parameters, so one lookup serves every step.
        self._live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        if cfg.ema_decay > 0 and cfg.ema_start_step == 0:
            self.ema = self._snapshot()

    def _snapshot(self, native: bool = False) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() if native else v.detach().float().clone() for k, v in self._live.items()}

    @torch.no_grad()
    def after_step(self, step: int, scale: float) -> None:
        """`step`: optimizer steps done so far (1-based); `scale`: the LR multiplier of that step."""
        cfg = self.cfg
        if cfg.ema_decay > 0 and step >= cfg.ema_start_step:
            if self.ema is None:
                self.ema = self._snapshot()
            else:
                d = cfg.ema_decay
                keys = list(self.ema)
                ema = [self.ema[k] for k in keys]
                cur = [self._live[k].float() for k in keys]
                torch._foreach_mul_(ema, d)
                torch._foreach_add_(ema, cur, alpha=1.0 - d)
                self.ema_updates += 1
        if cfg.swa_every > 0 and scale < cfg.swa_start_frac and step % cfg.swa_every == 0:
            if self.swa_sum is None:
                self.swa_sum = self._snapshot(native=cfg.swa_sum_dtype == "native")
            else:
                for k, acc in self.swa_sum.items():
                    acc.add_(self._live[k].to(acc.dtype))
            self.swa_count += 1

    @torch.no_grad()
    def apply(self) -> str:
        """Replace the model's weights by the configured average; returns "ema", "swa" or "none"."""
        if self.cfg.ema_decay > 0 and self.ema is not None:
            self._load(self.ema)
            return "ema"
        if self.cfg.swa_apply and self.swa_sum is not None and self.swa_count >= 2:
            self._load({k: v / self.swa_count for k, v in self.swa_sum.items()})
            return "swa"
        return "none"

    def _load(self, averaged: dict[str, torch.Tensor]) -> None:
        for k, v in averaged.items():
            self._live[k].copy_(v.to(self._live[k].dtype))
