"""Validation during and after training, and the scored evaluation pipeline after the artifact is
written (round trip -> sliding window -> TTT)."""
from __future__ import annotations

from dataclasses import dataclass
from ._base import need


@dataclass(kw_only=True)
class EvalConfig:
    def validate(self) -> None:
        need(self.val_loss_every >= 0 and self.train_log_every >= 0,
             "eval.val_loss_every and eval.train_log_every must be >= 0")
        need(self.val_batch_size >= 1, f"eval.val_batch_size must be >= 1, got {self.val_batch_size}")
        need(self.sliding_stride >= 0, f"eval.sliding_stride must be >= 0 (0 = off), got {self.sliding_stride}")
        need(self.sliding_batch_seqs >= 1, "eval.sliding_batch_seqs must be >= 1")

    val_loss_every: int = 1000  # periodic pre-quant validation; 0 = only at the end
    val_batch_size: int = 524_288  # tokens per validation batch (global)
    train_log_every: int = 200
    # Sliding-window eval (#50): windows of train_seq_len every `sliding_stride` tokens, only the last
    # stride positions scored (the first window fully). 0 = off (baseline). Also the TTT scoring stride.
    sliding_stride: int = 0
    sliding_batch_seqs: int = 32  # windows per forward, per rank
    sliding_pass: bool = True  # run the standalone sliding phase (records with TTT sometimes skip it)
