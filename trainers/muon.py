"""Muon: momentum + Newton-Schulz orthogonalisation of each 2-D update (from modded-nanogpt).

Under DDP the gradients are already averaged; each rank orthogonalises the parameters with
index % world_size == rank into one flat bf16 buffer and a single all-reduce(SUM) shares the results.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

# Quintic coefficients (a, b, c) tuned so the iteration drives singular values towards ~1 fast.
NS_QUINTIC = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of g (2-D) with `steps` quintic iterations."""
    a, b, c = NS_QUINTIC
    compute_dtype = torch.bfloat16 if g.is_cuda else torch.float32
    x = g.to(compute_dtype)
    x = x / (x.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * (m @ m)) @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov))

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
                    u = newton_schulz(g, steps=group["backend_steps"])
                    # Scale so tall matrices get updates of comparable RMS to square ones.
                    u = u * max(1.0, g.size(0) / g.size(1)) ** 0.5
                    flat[offset:offset + p.numel()] = u.reshape(-1).to(flat.dtype)
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()
