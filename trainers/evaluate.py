"""Validation loss and exact bits per byte on the (truncated) validation stream.

Sums are float64 and all-reduced before the division (techniques.md 2.4). Each rank scores a
contiguous share of the non-overlapping sequences.

Every scoring forward goes through `score_batch`. For a torch.compile'd model (compiled with
dynamic=False, as the trainer does) it pads a short final batch to the full batch shape with masked
rows, so one graph serves the whole pass: a new shape would recompile (tens of seconds of inductor
time) and, past dynamo's recompile limit, silently fall back to eager.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .bpb import ByteLUTs, bpb_from_sums, token_bytes
from .distributed import all_reduce_sum
from .distributed import all_reduce_sum as _all_reduce_sums  # noqa: F401 - ttt.py imports it from here


@dataclass
class EvalResult:
    val_loss: float  # nats per token
    val_bpb: float  # bits per byte
    tokens: float
    bytes: float


def is_compiled(model: torch.nn.Module) -> bool:
    """A torch.compile'd module (an OptimizedModule wraps the original as `_orig_mod`)."""
    return isinstance(getattr(model, "_orig_mod", None), torch.nn.Module)


def score_batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                luts: ByteLUTs, rows: int = 0, pos: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 [loss_sum, tokens, bytes] of the positions of (x, y) where `mask` is set (all if None).
    With `rows` > len(x), x and y get masked rows of token 0 up to `rows` sequences (one shape for a
    compiled model); rows never interact, so the sums are those of the real rows. `pos`: the val-stream
    positions of y, needed when the bytes come from a sidecar."""
    pad_rows = max(rows - x.size(0), 0)
    if pad_rows:
        if mask is None:
            mask = torch.ones_like(x, dtype=torch.bool)
        x = F.pad(x, (0, 0, 0, pad_rows))
        y = F.pad(y, (0, 0, 0, pad_rows))
        mask = F.pad(mask, (0, 0, 0, pad_rows), value=False)
        if pos is not None:
            pos = F.pad(pos, (0, 0, 0, pad_rows))
    with autocast_for(x.device):
        nll = model(x, y, reduction="none")
    if mask is None:
        count = torch.full((), float(y.numel()), dtype=torch.float64, device=x.device)  # no host-to-device copy
        return torch.stack((nll.double().sum(), count, token_bytes(x, y, luts, pos).double().sum()))
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    return torch.stack((torch.where(mask, nll.double(), zero).sum(), mask.sum().double(),
                        torch.where(mask, token_bytes(x, y, luts, pos).double(), zero).sum()))


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
    rows = batch_seqs if is_compiled(model) else 0
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, tokens, bytes
    was_training = model.training
    model.eval()
    for s in range(first, last, batch_seqs):
        e = min(s + batch_seqs, last)
        chunk = val_tokens[s * seq_len: e * seq_len + 1].to(device=device, dtype=torch.int64)
        x = chunk[:-1].view(-1, seq_len)
        y = chunk[1:].view(-1, seq_len)
        pos = None if luts.val_bytes is None else torch.arange(s * seq_len + 1, e * seq_len + 1).view(-1, seq_len)
        sums += score_batch(model, x, y, None, luts, rows=rows, pos=pos)
    model.train(was_training)
    sums = all_reduce_sum(sums)
    loss_sum, ntok, nbytes = (float(v) for v in sums.tolist())
    val_loss, val_bpb = bpb_from_sums(loss_sum, ntok, nbytes)
    return EvalResult(val_loss, val_bpb, ntok, nbytes)
