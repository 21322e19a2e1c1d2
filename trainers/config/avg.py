"""Weight averaging and late training-time shaping: EMA, SWA / Tight SWA, late QAT, magnitude pruning.
All off by default (the baseline has none); record numbers (#N) as in techniques.md §3.18-§3.21."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._base import choices, need


@dataclass(kw_only=True)
class AvgConfig:
    def validate(self) -> None:
        choices(self, "avg")
        need(0.0 <= self.ema_decay < 1.0, f"avg.ema_decay must be in [0, 1), got {self.ema_decay}")
        need(not (self.ema_decay > 0 and self.swa_apply and self.swa_every > 0),
             "avg.ema_decay > 0 and avg.swa_apply = true both replace the final weights; pick one "
             "(to collect SWA next to EMA as #414 does, leave swa_apply = false)")
        need(self.swa_every >= 0 and self.ema_start_step >= 0, "avg.swa_every and avg.ema_start_step must be >= 0")
        need(0.0 <= self.prune_frac < 1.0, f"avg.prune_frac must be in [0, 1), got {self.prune_frac}")
        need(self.late_qat_threshold >= 0, f"avg.late_qat_threshold must be >= 0, got {self.late_qat_threshold}")

    ema_decay: float = 0.0  # EMA of the whole state dict (fp32, on the device), replaces the weights before quantization; 0 = off; 0.997 #287..#691, #366
    ema_start_step: int = 0  # EMA starts (copying the weights) after this many steps; 0 = from the initial weights; 50 in #366
    swa_every: int = 0  # SWA: add a checkpoint every N steps while the LR scale < swa_start_frac; 0 = off; 50 #162/#180/#264/#414, 200 #198
    swa_start_frac: float = 0.5  # SWA collects while the LR scale is below this; 0.5 #162/#198/#264, 0.4 #180, 0.2 Tight SWA #374/#414/#691
    swa_apply: bool = False  # replace the weights by the mean of >= 2 checkpoints; #162/#180/#198/#264 apply, #414/#549/#691 collect and discard
    swa_sum_dtype: Literal["fp32", "native"] = "fp32"  # SWA running sum: fp32 | native (each tensor's own dtype, as #264 sums its state dict: the bf16 embedding/bigram tables in bf16)
    late_qat_threshold: float = 0.0  # int6 straight-through fake quant in every linear once the LR scale < threshold; 0 = off; 0.15 #414/#549/#691
    prune_frac: float = 0.0  # after averaging: zero the smallest fraction of |w| in each 2-D param with > prune_min_numel elements; 0 = off; 0.03 #180/#366
    prune_min_numel: int = 65_536  # only 2-D params with more elements than this are pruned (#180)
