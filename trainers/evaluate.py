"""Validation loss and exact bits per byte on the (truncated) validation stream.

Sums are float64 and all-reduced before the division (techniques.md 2.4). Each rank scores a
contiguous share of the non-overlapping sequences.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .bpb import ByteLUTs, bpb_from_sums, token_bytes


@dataclass
class EvalResult:
    val_loss: float  # nats per token
    val_bpb: float  # bits per byte
    tokens: float
    bytes: float


def _all_reduce_sums(sums: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return sums


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, *, seq_len: int,
             batch_tokens: int, device: torch.device, rank: int = 0, world_size: int = 1) -> EvalResult:
    """Non-overlapping evaluation: sequences [i*T, (i+1)*T] predict their next token."""
    total_seqs = (val_tokens.numel() - 1) // seq_len
    first = total_seqs * rank // world_size
    last = total_seqs * (rank + 1) // world_size
    batch_seqs = max(batch_tokens // (seq_len * world_size), 1)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, tokens, bytes
    was_training = model.training
    model.eval()
    for s in range(first, last, batch_seqs):
        e = min(s + batch_seqs, last)
        chunk = val_tokens[s * seq_len: e * seq_len + 1].to(device=device, dtype=torch.int64)
        x = chunk[:-1].view(-1, seq_len)
        y = chunk[1:].view(-1, seq_len)
        with autocast_for(device):
            nll = model(x, y, reduction="none")
        sums[0] += nll.double().sum()
        sums[1] += y.numel()
        sums[2] += token_bytes(x, y, luts).double().sum()
    model.train(was_training)
    sums = _all_reduce_sums(sums)
    loss_sum, ntok, nbytes = (float(v) for v in sums.tolist())
    val_loss, val_bpb = bpb_from_sums(loss_sum, ntok, nbytes)
    return EvalResult(val_loss, val_bpb, ntok, nbytes)
