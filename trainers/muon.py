"""Muon: momentum + Newton-Schulz orthogonalisation of each 2-D update (from modded-nanogpt), with the
record options: decoupled weight decay scaled by the scheduled LR, MuonEq-R row normalisation and
Polar Express per-iteration coefficients (techniques.md §3.15).

Under DDP the gradients are already averaged; each rank orthogonalises the parameters with
index % world_size == rank into one flat buffer and a single all-reduce(SUM) shares the results.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

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
    """Approximate the orthogonal polar factor U V^T of g (2-D) with `steps` quintic iterations."""
    compute_dtype = torch.bfloat16 if g.is_cuda else torch.float32
    x = g.to(compute_dtype)
    x = x / (x.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        m = x @ x.T
        x = a * x + (b * m + c * (m @ m)) @ x
    return x.T if transposed else x


def row_normalize(g: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: equalise row norms before NS so no output unit dominates the polar factor."""
    return g / (g.norm(dim=1, keepdim=True) + eps)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True,
                 weight_decay: float = 0.0, row_norm: bool = False, ns_coeffs: str = "quintic"):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                                      weight_decay=weight_decay, row_norm=row_norm,
                                      ns_coeffs=ns_coefficients(ns_coeffs)))

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            total = sum(p.numel() for p in params)
            flat = torch.zeros(total, device=params[0].device, dtype=torch.bfloat16 if params[0].is_cuda else torch.float32)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank and p.grad is not None:
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=group["momentum"])
                    else:
                        g = buf
                    if group["row_norm"]:
                        g = row_normalize(g)
                    u = newton_schulz(g, steps=group["backend_steps"], coeffs=group["ns_coeffs"])
                    # Scale so tall matrices get updates of comparable RMS to square ones.
                    u = u * max(1.0, g.size(0) / g.size(1)) ** 0.5
                    flat[offset:offset + p.numel()] = u.reshape(-1).to(flat.dtype)
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            lr, wd = group["lr"], group["weight_decay"]
            offset = 0
            for p in params:
                if wd > 0:
                    # Decoupled and tied to the scheduled LR, so the decay fades out with the warmdown.
                    p.mul_(1.0 - lr * wd)
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-lr)
                offset += p.numel()
