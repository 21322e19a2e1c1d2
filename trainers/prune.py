"""Magnitude pruning before quantization (#180, #366; techniques.md §3.21): in every 2-D parameter
with more than `min_numel` elements, zero the entries whose |w| is below the `frac` quantile of |w|.
Runs after weight averaging so the zeros survive into the quantized blob, where they help zstd."""
from __future__ import annotations

import torch
from torch import nn

_QUANTILE_MAX = 1 << 24  # torch.quantile refuses larger inputs; kthvalue is exact there too


def magnitude_threshold(w: torch.Tensor, frac: float) -> torch.Tensor:
    a = w.detach().abs().float().flatten()
    if a.numel() <= _QUANTILE_MAX:
        return torch.quantile(a, frac)
    k = max(1, int(round(frac * (a.numel() - 1))) + 1)
    return a.kthvalue(k).values


@torch.no_grad()
def magnitude_prune(model: nn.Module, frac: float, min_numel: int = 65_536) -> dict[str, int]:
    """Returns {param name: zeros written} for the pruned tensors."""
    pruned: dict[str, int] = {}
    if frac <= 0:
        return pruned
    for name, p in model.named_parameters():
        if p.ndim != 2 or p.numel() <= min_numel:
            continue
        mask = p.abs() < magnitude_threshold(p, frac).to(p.dtype)
        p.masked_fill_(mask, 0)
        pruned[name] = int(mask.sum())
    return pruned
