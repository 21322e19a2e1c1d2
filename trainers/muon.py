"""Muon: momentum + Newton-Schulz orthogonalisation of each 2-D update (from modded-nanogpt), with the
record options: decoupled weight decay scaled by the scheduled LR, MuonEq-R row normalisation and
Polar Express per-iteration coefficients (techniques.md §3.15).

Matrices of one shape are orthogonalised together: their updates are stacked and Newton-Schulz runs
as batched matmuls, one launch per iteration per shape instead of one per matrix (the 11-layer stack
has 66 matrices in 4 shapes). Under DDP the gradients are already averaged; each shape group is cut
into world_size contiguous shares, each rank orthogonalises its share into a flat buffer, and one
all-gather hands every rank every update (Parallel Muon without the parameter banks). The math per
matrix is that of the one-matrix-at-a-time version.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .distributed import is_distributed

# Quintic coefficients (a, b, c) tuned so the iteration drives singular values towards ~1 fast.
NS_QUINTIC = ((3.4445, -4.7750, 2.0315),)
# Polar Express (#1344 -> #1787): one tuple per iteration, aggressive first, converging last. Values
# as listed in techniques.md §3.15 (4 decimals); iterations past the fifth reuse the last tuple.
NS_POLAR_EXPRESS = (
    (8.1566, -22.4833, 15.8788),
    (4.0429, -2.8089, 0.5000),
    (3.8917, -2.7725, 0.5061),
    (3.2858, -2.3681, 0.4645),
    (2.3465, -1.7098, 0.4232),
)
NS_COEFFS = {"quintic": NS_QUINTIC, "polar_express": NS_POLAR_EXPRESS}


def ns_coefficients(name: str) -> tuple[tuple[float, float, float], ...]:
    if name not in NS_COEFFS:
        raise ValueError(f"optim.muon_ns_coeffs must be one of {', '.join(NS_COEFFS)}, got {name!r}")
    return NS_COEFFS[name]


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  coeffs: tuple[tuple[float, float, float], ...] = NS_QUINTIC) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of g ([rows, cols], or a stack [n, rows, cols]
    of same-shaped matrices, each handled on its own) with `steps` quintic iterations."""
    compute_dtype = torch.bfloat16 if g.is_cuda else torch.float32
    x = g.to(compute_dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        m = x @ x.mT
        x = a * x + (b * m + c * (m @ m)) @ x
    return x.mT if transposed else x


def row_normalize(g: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: equalise row norms before NS so no output unit dominates the polar factor."""
    return g / (g.norm(dim=-1, keepdim=True) + eps)


def shape_groups(params: list[torch.Tensor]) -> list[list[int]]:
    """Indices of `params` grouped by shape, groups in order of first appearance (the same on every
    rank, which the gather layout relies on)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(tuple(p.shape), []).append(i)
    return list(groups.values())


def _all_gather(out: torch.Tensor, local: torch.Tensor) -> None:
    """out[r * n:(r + 1) * n] = rank r's `local` (n elements)."""
    if not local.is_cuda:
        # gloo's single-tensor gather is missing from older torch releases; the list form is not
        dist.all_gather(list(out.view(-1, local.numel()).unbind(0)), local)
        return
    gather = getattr(dist, "all_gather_single", None)  # the newer name; all_gather_into_tensor before
    (gather or dist.all_gather_into_tensor)(out, local)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True,
                 weight_decay: float = 0.0, row_norm: bool = False, ns_coeffs: str = "quintic"):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                                      weight_decay=weight_decay, row_norm=row_norm,
                                      ns_coeffs=ns_coefficients(ns_coeffs)))

    def _orthogonalize(self, params: list[torch.Tensor], group: dict) -> torch.Tensor:
        """Momentum step of each param (all one shape, all with grads); their stacked NS updates."""
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            bufs.append(state["momentum_buffer"])
        mu = group["momentum"]
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads)
        u = torch.stack(torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs)
        if group["row_norm"]:
            u = row_normalize(u)
        u = newton_schulz(u, steps=group["backend_steps"], coeffs=group["ns_coeffs"])
        # Scale so tall matrices get updates of comparable RMS to square ones.
        return u * max(1.0, u.size(-2) / u.size(-1)) ** 0.5

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = is_distributed()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            # Per rank: for each shape group, `share` slots of one matrix each; rank r owns members
            # [r*share, (r+1)*share). Every rank's buffer has the same size, as the gather needs.
            layout = []
            size = 0
            for idx in shape_groups(params):
                share = -(-len(idx) // world)
                layout.append((idx, share, size))
                size += share * params[idx[0]].numel()
            dtype = torch.bfloat16 if params[0].is_cuda else torch.float32
            local = torch.zeros(size, device=params[0].device, dtype=dtype)
            for idx, share, off in layout:
                mine = idx[rank * share:(rank + 1) * share]
                slots = [j for j, i in enumerate(mine) if params[i].grad is not None]
                if not slots:
                    continue
                u = self._orthogonalize([params[mine[j]] for j in slots], group)
                out = local[off:off + share * params[idx[0]].numel()].view(share, *params[idx[0]].shape)
                if len(slots) == share:
                    out.copy_(u)
                else:  # a short last share, or params without grads: their slots stay zero (WD only)
                    out[slots] = u.to(dtype)
            if world > 1:
                gathered = torch.empty(world * size, device=local.device, dtype=dtype)
                _all_gather(gathered, local)
                gathered = gathered.view(world, size)
            else:
                gathered = local.view(1, size)
            lr, wd = group["lr"], group["weight_decay"]
            for idx, share, off in layout:
                members = [params[i] for i in idx]
                shape = members[0].shape
                numel = members[0].numel()
                updates = gathered[:, off:off + share * numel].reshape(world * share, *shape)[:len(idx)]
                if wd > 0:
                    # Decoupled and tied to the scheduled LR, so the decay fades out with the warmdown.
                    torch._foreach_mul_(members, 1.0 - lr * wd)
                torch._foreach_add_(members, list(updates.to(members[0].dtype).unbind(0)), alpha=-lr)
        return loss
