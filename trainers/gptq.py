"""Full-Hessian GPTQ (techniques.md 3.24) for the linear layers of chosen categories.

For a linear layer y = W x the quantization error of the outputs over calibration inputs is
tr(E H E^T) with E = W - Q*s and H = sum x x^T. GPTQ rounds one input column at a time and pushes
the rounding error onto the columns not yet rounded, weighted by the upper Cholesky factor U of
H^-1, which is the closed-form optimal update for that objective. Rows never interact, so several
scale candidates are solved at once by stacking them as extra rows, and the best candidate is chosen
per matrix (or per row) by the same Hessian-weighted error.

Calibration reads training batches, so it counts against the training cap: the loop stops
`gptq_reserve_seconds` early (see posttrain.train_schedule) and calibration stops taking batches
as soon as the next one would cross the cap.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .config import QuantConfig
from .evaluate import autocast_for
from .distributed import all_reduce_max, all_reduce_sum
from .quant import INT_FORMATS, IntFormat, candidate_scales, pick_best, plan_state_dict


def gptq_targets(model: nn.Module, cfg: QuantConfig) -> dict[str, nn.Module]:
    """Weight name -> the module whose input is that weight's x, for the weights the plan quantizes to
    an integer format in a GPTQ category: every such Linear, and the tied embedding (#1394), whose x
    is the final hidden state entering the output head (`model.head_input`)."""
    plans = plan_state_dict(dict(model.state_dict()), cfg)

    def wanted(wname: str) -> bool:
        plan = plans.get(wname)
        return plan is not None and plan.kind == "int" and plan.category in cfg.gptq_categories

    out: dict[str, nn.Module] = {}
    for mname, module in model.named_modules():
        if isinstance(module, nn.Linear) and wanted(f"{mname}.weight"):
            out[f"{mname}.weight"] = module
    head_input = getattr(model, "head_input", None)
    if head_input is not None and getattr(model, "lm_head", 0) is None and wanted("tok_emb.weight"):
        out["tok_emb.weight"] = head_input
    return out


@torch.no_grad()
def collect_hessians(model: nn.Module, targets: dict[str, nn.Linear], batches, device: torch.device,
                     max_batches: int, deadline_s: float | None, clock_start_s: float) -> tuple[dict, int]:
    """Sum of x x^T of every target layer's input over up to `max_batches` batches from `batches`
    (an iterator of input id tensors). `deadline_s` is the remaining training budget when the phase
    started: a batch is only taken if the elapsed time plus the slowest batch so far stays inside it
    on every rank. Returns (hessians summed over ranks, batches used)."""
    hess: dict[str, torch.Tensor] = {}
    hooks = []

    def make_hook(name: str):
        def hook(module, inputs):
            x = inputs[0].detach()
            x = x.reshape(-1, x.size(-1)).float()
            h = hess.get(name)
            if h is None:
                h = hess[name] = torch.zeros(x.size(1), x.size(1), dtype=torch.float32, device=x.device)
            h.addmm_(x.t(), x)
        return hook

    for name, module in targets.items():
        hooks.append(module.register_forward_pre_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    used, slowest = 0, 0.0
    try:
        for _ in range(max_batches):
            if deadline_s is not None and all_reduce_max(time.perf_counter() - clock_start_s + slowest,
                                                         device) > deadline_s:
                break
            t0 = time.perf_counter()
            x = next(batches)
            with autocast_for(device):
                model.logits(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            slowest = max(slowest, time.perf_counter() - t0)
            used += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # A rank that never saw a layer (zero batches) still has to join the reduction.
    state = model.state_dict()
    for name in targets:
        if name not in hess:
            n = state[name].size(1)
            hess[name] = torch.zeros(n, n, dtype=torch.float32, device=state[name].device)
        all_reduce_sum(hess[name])
    return hess, used


def _upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:
    # float64 for the factorisations: they are tiny (cols x cols) next to the column loop
    hd = h.double()
    try:
        low = torch.linalg.cholesky(hd)
    except RuntimeError:
        # An ill-conditioned Hessian: more damping until it factorises.
        eye = torch.eye(hd.size(0), dtype=hd.dtype, device=hd.device)
        bump = 0.1 * float(hd.diagonal().mean().clamp_min(1e-12))
        while True:
            try:
                low = torch.linalg.cholesky(hd + bump * eye)
                break
            except RuntimeError:
                bump *= 10.0
    hinv = torch.cholesky_inverse(low)
    return torch.linalg.cholesky(hinv, upper=True).float()


def gptq_solve(w: torch.Tensor, scales: torch.Tensor, h: torch.Tensor, fmt: IntFormat, *, block_size: int,
               damp: float, act_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes for W [rows, cols] given per-row scales [k, rows] (k candidates solved together).
    Returns (codes int8 [k, rows, cols], error [k, rows] = diag(E H E^T))."""
    k, rows = scales.shape
    cols = w.size(1)
    w = w.float().clone()
    h = h.float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols, device=w.device)
    inv_perm = torch.argsort(perm)
    wp = w[:, perm].repeat(k, 1)  # [k*rows, cols]
    hp = h[perm][:, perm]
    u = _upper_cholesky_of_inverse(hp)
    s = scales.reshape(-1).float()
    codes = torch.zeros(k * rows, cols, dtype=torch.int8, device=w.device)
    work = wp.clone()
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = work[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            q = torch.clamp(torch.round(col / s), fmt.lo, fmt.hi)
            codes[:, i1 + i] = q.to(torch.int8)
            e = (col - q * s) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        if i2 < cols:
            work[:, i2:] -= err1 @ u[i1:i2, i2:]
    recon_err = wp - codes.float() * s[:, None]
    err = ((recon_err @ hp) * recon_err).sum(dim=1).reshape(k, rows)
    return codes[:, inv_perm].reshape(k, rows, cols), err


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, fmt: IntFormat, category: str, cfg: QuantConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    rows = w.detach().float().reshape(w.size(0), -1)
    cands = candidate_scales(rows, fmt, category, cfg)
    scales = torch.stack([c[0] for c in cands]).to(rows.device)
    codes, err = gptq_solve(rows, scales.float(), h.to(rows.device), fmt, block_size=cfg.gptq_block_size,
                            damp=cfg.gptq_damp, act_order=cfg.gptq_act_order)
    pairs = [(codes[i], scales[i]) for i in range(len(cands))]
    if cfg.gptq_pick == "mse":  # #1019/#1218: plain weight reconstruction error
        err = [((rows - q.float() * s.float()[:, None]) ** 2).sum(dim=1) for q, s in pairs]
    q, scale = pick_best(rows, pairs, list(err), cfg.clip_search == "per_row")
    return q.reshape(w.shape), scale.to(torch.float16)


def solve_all(model: nn.Module, hessians: dict[str, torch.Tensor], cfg: QuantConfig
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """GPTQ codes for every calibrated weight (on the model's device), moved to CPU."""
    state = dict(model.state_dict())
    plans = plan_state_dict(state, cfg)
    out = {}
    for name, h in hessians.items():
        plan = plans[name]
        w = state[name].detach()
        q, s = gptq_quantize(w.to(h.device), h, INT_FORMATS[plan.fmt], plan.category, cfg)
        out[name] = (q.cpu(), s.cpu())
    return out
