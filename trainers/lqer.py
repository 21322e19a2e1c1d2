"""LQER (#1797, in #1855): a low-rank correction of the quantization error of the worst tensors.

For every int-quantized matrix the error E = W - deq(q) is measured; the `lqer_top_k` with the largest
Frobenius norm get E's best rank-r approximation A @ B (A = U_r S_r, B = V_r^T from the SVD), stored
quantized next to the codes and added back at load: W' = deq(q) + deq(A) @ deq(B).

Factor formats: asymmetric (#1855 default) keeps A on a 2-bit grid {-2..1} with one fp16 scale
|A|max / 1.5, and B on a 4-bit grid {-8..7} in groups of `lqer_group` consecutive values (row-major
flattened) with scale |group|max / 7.5; when B's size is not a multiple of the group, or with
`lqer_asym` off, both factors use `lqer_factor_bits`-bit symmetric per-row scales. The factors are
ordinary blob tensors, so their bytes are counted in the artifact like every other tensor.
"""
from __future__ import annotations

import torch

SUFFIXES = (".lqA", ".lqAs", ".lqB", ".lqBs")


def _sym_rows(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = 2 ** (bits - 1) - 1
    s = (x.abs().amax(dim=1).clamp_min(1e-10) / top).to(torch.float16)
    return torch.clamp(torch.round(x / s.float()[:, None]), -top, top).to(torch.int8), s


def pack_factors(a: torch.Tensor, b: torch.Tensor, *, asym: bool, group: int, bits: int
                 ) -> tuple[dict[str, torch.Tensor], str]:
    """Quantized (A, B) as blob tensors keyed by suffix, and the format name stored in the metadata."""
    if asym and b.numel() % group == 0:
        sa = (a.abs().amax().clamp_min(1e-10) / 1.5).to(torch.float16)
        qa = torch.clamp(torch.round(a / sa.float()), -2, 1).to(torch.int8)
        groups = b.reshape(-1, group)
        sb = (groups.abs().amax(dim=1).clamp_min(1e-10) / 7.5).to(torch.float16)
        qb = torch.clamp(torch.round(groups / sb.float()[:, None]), -8, 7).to(torch.int8).reshape(b.shape)
        return {".lqA": qa, ".lqAs": sa.reshape(1), ".lqB": qb, ".lqBs": sb}, "asym"
    qa, sa = _sym_rows(a, bits)
    qb, sb = _sym_rows(b, bits)
    return {".lqA": qa, ".lqAs": sa, ".lqB": qb, ".lqBs": sb}, f"sym{bits}"


def correction(tensors: dict[str, torch.Tensor], name: str, fmt: str) -> torch.Tensor:
    """deq(A) @ deq(B) of tensor `name` (float32)."""
    qa, sa = tensors[name + ".lqA"].float(), tensors[name + ".lqAs"].float()
    qb, sb = tensors[name + ".lqB"].float(), tensors[name + ".lqBs"].float()
    if fmt == "asym":
        a = qa * sa
        b = (qb.reshape(sb.numel(), -1) * sb[:, None]).reshape(qb.shape)
    else:
        a, b = qa * sa[:, None], qb * sb[:, None]
    return a @ b


def add_corrections(state: dict[str, torch.Tensor], out: dict[str, torch.Tensor], meta: dict[str, dict],
                    dequantized: dict[str, torch.Tensor], *, rank: int, top_k: int, asym: bool, group: int,
                    bits: int) -> list[str]:
    """Pick the top_k int tensors by quantization-error norm and add their factors to `out` (in
    place); returns the chosen names, worst first. `dequantized` maps each int tensor to deq(q)."""
    errors = {}
    for name, w_hat in dequantized.items():
        w = state[name].detach().float().cpu()
        if w.ndim != 2:
            continue
        errors[name] = w - w_hat.reshape(w.shape)
    chosen = sorted(errors, key=lambda n: -float(errors[n].norm()))[:top_k]
    for name in chosen:
        u, s, vh = torch.linalg.svd(errors[name], full_matrices=False)
        r = min(rank, s.numel())
        parts, fmt = pack_factors((u[:, :r] * s[:r]).contiguous(), vh[:r].contiguous(), asym=asym,
                                  group=group, bits=bits)
        for suffix, t in parts.items():
            out[name + suffix] = t.contiguous()
        meta[name]["lqer"] = fmt
        meta[name]["lqer_rank"] = r
    return chosen
