"""Sliding-window evaluation (#50, techniques.md 3.26) without the tail double count (2.5).

Positions: position p (0 <= p < n_pos, n_pos = len(val_tokens) - 1) predicts token p + 1 from tokens
0..p. A window starting at ws feeds tokens [ws, ws + len) and predicts positions [ws, ws + len). The
first window scores all its positions; every later window scores only its last `stride` positions, so
each scored token sees at least seq_len - stride tokens of context. Starts are kept only while
ws + seq_len - stride < n_pos: the records' rule (every multiple of the stride while tokens remain)
re-scores the final positions once per partial tail window. At most the last window is short.

With stride == seq_len the windows are exactly the non-overlapping sequences of `evaluate`, batched
and split across ranks the same way, so the two give bit-identical sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .bpb import ByteLUTs, bpb_from_sums
from .distributed import all_reduce_sum
from .evaluate import EvalResult, is_compiled, score_batch


@dataclass
class WindowPlan:
    starts: torch.Tensor  # int64 [W]: first input position of each window
    lengths: torch.Tensor  # int64 [W]: input length (seq_len except possibly the last window)
    score_from: torch.Tensor  # int64 [W]: offset in the window of its first scored position
    n_pos: int
    seq_len: int
    stride: int

    def __len__(self) -> int:
        return int(self.starts.numel())

    def first_scored(self) -> torch.Tensor:
        return self.starts + self.score_from

    def scored_positions(self, a: int, b: int) -> tuple[int, int]:
        """Positions [lo, hi) scored by windows a..b-1 (contiguous by construction)."""
        if b <= a:
            return (0, 0)
        return int(self.starts[a] + self.score_from[a]), int(self.starts[b - 1] + self.lengths[b - 1])


def plan_windows(n_pos: int, seq_len: int, stride: int) -> WindowPlan:
    if n_pos < 1:
        raise ValueError(f"nothing to score: n_pos = {n_pos}")
    if not 0 < stride <= seq_len:
        raise ValueError(f"sliding stride must be in [1, seq_len={seq_len}], got {stride}")
    if seq_len - stride >= n_pos:
        starts = torch.zeros(1, dtype=torch.int64)
    else:
        # ws + seq_len - stride < n_pos  <=>  ws < n_pos - seq_len + stride
        starts = torch.arange(0, n_pos - seq_len + stride, stride, dtype=torch.int64)
    lengths = torch.clamp(n_pos - starts, max=seq_len)
    score_from = torch.full_like(starts, seq_len - stride)
    score_from[0] = 0
    return WindowPlan(starts, lengths, score_from, n_pos, seq_len, stride)


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous share of n items (the same formula as the non-overlapping eval)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def score_windows(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, plan: WindowPlan,
                  a: int, b: int, batch_seqs: int, device: torch.device) -> torch.Tensor:
    """Float64 [loss_sum, tokens, bytes] of windows a..b-1 scored with the model as it is now.

    The short final window is padded to seq_len (as the records do), so RoPE's NTK base, which
    depends on the input length, is the one every other window gets; appended positions never change
    earlier ones (attention is causal, SmearGate/BigramHash look only backwards). A compiled model also gets its
    last batch padded to `batch_seqs` rows: every call then has one shape and one graph."""
    rows = batch_seqs if is_compiled(model) else 0
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    ar = torch.arange(plan.seq_len + 1, dtype=torch.int64)
    last = int(val_tokens.numel()) - 1
    for i in range(a, b, batch_seqs):
        j = min(i + batch_seqs, b)
        # Positions past the stream's end (only in the short final window) read its last token and
        # are masked out below.
        idx = torch.clamp(plan.starts[i:j, None] + ar[None, :], max=last)
        chunk = val_tokens[idx.to(val_tokens.device)].to(device=device, dtype=torch.int64)
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        offs = ar[None, :-1]
        mask = ((offs >= plan.score_from[i:j, None]) & (offs < plan.lengths[i:j, None])).to(device)
        sums += score_batch(model, x, y, mask, luts, rows=rows, pos=idx[:, 1:])
    return sums


def evaluate_sliding(model: torch.nn.Module, val_tokens: torch.Tensor, luts: ByteLUTs, *, seq_len: int,
                     stride: int, batch_seqs: int, device: torch.device, rank: int = 0,
                     world_size: int = 1) -> EvalResult:
    plan = plan_windows(val_tokens.numel() - 1, seq_len, stride)
    a, b = rank_slice(len(plan), rank, world_size)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        sums = score_windows(model, val_tokens, luts, plan, a, b, max(batch_seqs, 1), device)
    model.train(was_training)
    sums = all_reduce_sum(sums)
    loss_sum, ntok, nbytes = (float(v) for v in sums.tolist())
    val_loss, val_bpb = bpb_from_sums(loss_sum, ntok, nbytes)
    return EvalResult(val_loss, val_bpb, ntok, nbytes)
