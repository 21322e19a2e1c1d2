"""Validation during and after training, and the scored evaluation pipeline after the artifact is
written (round trip -> sliding window -> TTT)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class EvalConfig:
    val_loss_every: int = 1000  # periodic pre-quant validation; 0 = only at the end
    val_batch_size: int = 524_288  # tokens per validation batch (global)
    train_log_every: int = 200
    # Sliding-window eval (#50): windows of train_seq_len every `sliding_stride` tokens, only the last
    # stride positions scored (the first window fully). 0 = off (baseline). Also the TTT scoring stride.
    sliding_stride: int = 0
    sliding_batch_seqs: int = 32  # windows per forward, per rank
    sliding_pass: bool = True  # run the standalone sliding phase (records with TTT sometimes skip it)
