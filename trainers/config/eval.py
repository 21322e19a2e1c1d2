"""Validation during and after training."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class EvalConfig:
    val_loss_every: int = 1000  # periodic pre-quant validation; 0 = only at the end
    val_batch_size: int = 524_288  # tokens per validation batch (global)
    train_log_every: int = 200
