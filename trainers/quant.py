"""Post-training quantization of the state dict into integer codes + per-row scales, and back.

Per-row symmetric scheme (techniques.md 3.22): s_r = max(clip_r / Q, floor) stored fp16, q =
clamp(round(w / s_r), lo, hi) stored in int8 containers (unused high bits compress well), w ~= q * s_r.
The narrow formats round with the fp16 scale, the int8 rule (baseline, records) with the fp32 one.
The clip per row is the 99.99984th percentile of |w| for int8 (baseline), the row max for the narrower
formats, k * std of the row with SD-clip, or the best of a few percentiles with the GPTQ-lite search.
Full-Hessian GPTQ (gptq.py) reuses the same scales and grids and only changes how codes are rounded.

Which class a tensor falls into is decided by its name (see config/quant.py); the decision and its
reason are recorded per tensor in the blob's metadata so a reader can audit the artifact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import QuantConfig
from . import lqer
from .serialize import dtype_from_name


@dataclass(frozen=True)
class IntFormat:
    name: str
    lo: int
    hi: int
    q: int  # the clip maps to +-q


INT_FORMATS: dict[str, IntFormat] = {
    "int8": IntFormat("int8", -127, 127, 127),
    "int7": IntFormat("int7", -63, 63, 63),
    "int6": IntFormat("int6", -32, 31, 31),
    "int6_sym": IntFormat("int6_sym", -31, 31, 31),
    "int5": IntFormat("int5", -16, 15, 15),
    "int4": IntFormat("int4", -8, 7, 7),
}


def _is_control(name: str) -> bool:
    # Imported lazily: model.py owns the control patterns and may grow them with new modules.
    from .model import is_control
    return is_control(name)


def category_of(name: str) -> str:
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if "bigram" in name:
        return "bigram"
    if ".mlp." in name:
        return "mlp"
    if ".attn." in name:
        return "attn"
    return "other"


def _late_k_names(cfg: QuantConfig, num_layers: int) -> set[str]:
    out = set()
    for i in cfg.late_k_fp16_layers:
        j = i + num_layers if i < 0 else i
        if 0 <= j < num_layers:
            out.add(f"blocks.{j}.attn.c_k.weight")
    return out


def _num_layers(names) -> int:
    idx = [int(m.group(1)) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))]
    return max(idx) + 1 if idx else 0


@dataclass(frozen=True)
class Plan:
    """What happens to one tensor and why."""
    kind: str  # raw | fp32 | fp16 | int
    category: str
    fmt: str = ""
    reason: str = ""


def plan_tensor(name: str, t: torch.Tensor, cfg: QuantConfig, late_k: set[str]) -> Plan:
    cat = category_of(name)
    if not t.is_floating_point():
        return Plan("raw", cat, reason="not a float tensor")
    if cfg.gate_int8_rows and name.endswith(".attn_gate_w") and t.ndim == 2:
        return Plan("gate_int8", cat, reason="quant.gate_int8_rows")
    small = t.numel() <= cfg.passthrough_max_numel
    if _is_control(name) and not (small and cfg.control_size_first):
        return Plan("fp32", cat, reason="control tensor")
    if small:
        return Plan("fp16", cat, reason=f"numel {t.numel()} <= passthrough {cfg.passthrough_max_numel}")
    if name in late_k or any(frag in name for frag in cfg.fp16_keep):
        return Plan("fp16", cat, reason="fp16 keep-list")
    fmt = getattr(cfg, f"{cat}_format")
    if fmt == "fp16":
        return Plan("fp16", cat, reason=f"{cat}_format = fp16")
    return Plan("int", cat, fmt=fmt, reason=f"{cat}_format")


def plan_state_dict(state: dict[str, torch.Tensor], cfg: QuantConfig) -> dict[str, Plan]:
    late_k = _late_k_names(cfg, _num_layers(state))
    return {name: plan_tensor(name, t, cfg, late_k) for name, t in state.items()}


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.size(0), -1) if w.ndim >= 2 else w.reshape(1, -1)


def _scale_floor(cfg: QuantConfig, fmt: IntFormat) -> float:
    own = getattr(cfg, f"scale_floor_{fmt.name}", None)
    floor = cfg.scale_floor if own is None else own
    return 1.0 / fmt.q if floor < 0 else floor


def sd_clip_k(cfg: QuantConfig, category: str) -> float:
    per_cat = {"embed": cfg.sd_clip_k_embed, "mlp": cfg.sd_clip_k_mlp, "attn": cfg.sd_clip_k_attn}.get(category, 0.0)
    return per_cat or cfg.sd_clip_k


def quantile_rows(a: torch.Tensor, fracs: list[float]) -> list[torch.Tensor]:
    """Per-row quantiles of `a` (torch.quantile's linear interpolation) for several fractions with one
    sort: the clip search needs five of them per matrix, and torch.quantile sorts once per call."""
    n = a.size(1)
    if all(f >= 1.0 for f in fracs) or n == 1:
        return [a.amax(dim=1) for _ in fracs]
    v = a.sort(dim=1).values
    out = []
    for f in fracs:
        if f >= 1.0:
            out.append(v[:, -1])
            continue
        # the rank in the input's dtype, as torch.quantile computes it, so both agree bit for bit
        rank = torch.tensor(f, dtype=a.dtype) * (n - 1)
        lo, hi = int(rank.floor()), int(rank.ceil())
        out.append(torch.lerp(v[:, lo], v[:, hi], (rank - lo).to(a.device)))
    return out


def scale_from_clip(clip: torch.Tensor, fmt: IntFormat, floor: float, *, keep_fp32: bool = False) -> torch.Tensor:
    """Per-row scales s = max(clip / Q, floor) in fp16; the floor keeps all-zero rows finite.
    keep_fp32: the unrounded fp32 scale, for the int8 rule that rounds with it and stores it fp16."""
    s = (clip / fmt.q).clamp_min(floor)
    return s if keep_fp32 else s.to(torch.float16)


def round_to_grid(rows: torch.Tensor, scale: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    return torch.clamp(torch.round(rows / scale.float()[:, None]), fmt.lo, fmt.hi).to(torch.int8)


def candidate_scales(rows: torch.Tensor, fmt: IntFormat, category: str, cfg: QuantConfig
                     ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(scale, pre-clip) pairs to try for one matrix (more than one only with the clip search). The
    pre-clip is set only for the baseline int8 rule, which clamps w to the percentile before dividing:
    it matters when the scale floor kicks in."""
    floor = _scale_floor(cfg, fmt)
    a = rows.abs()
    k = sd_clip_k(cfg, category)
    if k > 0:
        std = rows.std(dim=1) if rows.size(1) > 1 else a[:, 0]  # unbiased, as #1394 computes it
        return [(scale_from_clip(k * std, fmt, floor), None)]
    if fmt.name == "int8":
        (clip,) = quantile_rows(a, [cfg.int8_clip_percentile / 100.0])
        return [(scale_from_clip(clip, fmt, floor, keep_fp32=cfg.int8_round_scale == "fp32"), clip)]
    if cfg.clip_search == "off":
        return [(scale_from_clip(a.amax(dim=1), fmt, floor), None)]
    return [(scale_from_clip(c, fmt, floor), None) for c in quantile_rows(a, cfg.clip_percentiles)]


def pick_best(rows: torch.Tensor, cands: list[tuple[torch.Tensor, torch.Tensor]], errs: list[torch.Tensor],
              per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """cands: (codes, scale) per candidate; errs: per-row error of each. Ties keep the earlier candidate."""
    if len(cands) == 1:
        return cands[0]
    err = torch.stack(errs)  # [n_cand, rows]
    if not per_row:
        best = int(torch.argmin(err.sum(dim=1)))
        return cands[best]
    idx = torch.argmin(err, dim=0)
    q = torch.stack([c[0] for c in cands])[idx, torch.arange(rows.size(0))]
    s = torch.stack([c[1] for c in cands])[idx, torch.arange(rows.size(0))]
    return q, s


def quantize_rows_rtn(w: torch.Tensor, fmt: IntFormat, category: str, cfg: QuantConfig
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes and fp16 row scales of w (any shape; rows = first dim)."""
    rows = _rows(w.detach().float())
    cands, errs = [], []
    for scale, clip in candidate_scales(rows, fmt, category, cfg):
        src = rows if clip is None else torch.maximum(torch.minimum(rows, clip[:, None]), -clip[:, None])
        q = round_to_grid(src, scale, fmt)
        cands.append((q, scale))
        errs.append((q.float() * scale.float()[:, None] - rows).pow(2).sum(dim=1))
    q, scale = pick_best(rows, cands, errs, cfg.clip_search == "per_row")
    return q.reshape(w.shape), scale.to(torch.float16)


def quantize_int8_rows(w: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline int8 rule (kept as a named entry point for the benchmark and tests)."""
    return quantize_rows_rtn(w, INT_FORMATS["int8"], "other", QuantConfig(int8_clip_percentile=percentile))


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def quantize_state_dict(state: dict[str, torch.Tensor], cfg: QuantConfig,
                        gptq_codes: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                        ) -> tuple[dict[str, torch.Tensor], dict]:
    """Codes/scales/passthrough tensors plus metadata. `gptq_codes` maps a tensor name to (codes, scales)
    already solved by GPTQ; those tensors skip round-to-nearest."""
    cfg.validate()
    gptq_codes = gptq_codes or {}
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, plan in plan_state_dict(state, cfg).items():
        t = state[name].detach()  # quantized where it lives (GPU in a real run), stored from the CPU
        info = {"kind": plan.kind, "category": plan.category, "dtype": _dtype_name(t), "reason": plan.reason}
        if plan.kind == "raw":
            out[name] = t.cpu()
        elif plan.kind == "fp32":
            out[name] = t.float().cpu()
        elif plan.kind == "fp16":
            out[name] = t.to(torch.float16).cpu()
        elif cfg.gate_int8_rows and plan.kind == "gate_int8":  # |row|max / 127, no clip (the record's rule);
            # plan_state_dict gives this kind only under gate_int8_rows: the test lets the packer decide it
            scale = (t.float().abs().amax(dim=1).clamp_min(1e-10) / 127).to(torch.float16)
            out[name + ".q"] = torch.clamp(torch.round(t.float() / scale.float()[:, None]), -127, 127).to(torch.int8).cpu()
            out[name + ".scale"] = scale.cpu()
        else:
            fmt = INT_FORMATS[plan.fmt]
            if name in gptq_codes:
                q, scale = gptq_codes[name]
                q, scale = q.cpu().reshape(t.shape), scale.cpu()
                info["method"] = "gptq"
            else:
                q, scale = quantize_rows_rtn(t, fmt, plan.category, cfg)
                info["method"] = "rtn"
            out[name + ".q"] = q.to(torch.int8).cpu().contiguous()
            out[name + ".scale"] = scale.to(torch.float16).cpu().contiguous()
            info["format"] = fmt.name
        meta[name] = info
    if cfg.lqer_rank > 0:
        ints = {n: _dequant(out, n) for n, i in meta.items() if i["kind"] == "int"}
        lqer.add_corrections(state, out, meta, ints, rank=cfg.lqer_rank, top_k=cfg.lqer_top_k, asym=cfg.lqer_asym,
                             group=cfg.lqer_group, bits=cfg.lqer_factor_bits)
    return out, {"scheme": cfg.scheme, "tensors": meta}


def _dequant(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    q = tensors[name + ".q"].float()
    return (_rows(q) * tensors[name + ".scale"].float()[:, None]).reshape(q.shape)


def dequantize_state_dict(tensors: dict[str, torch.Tensor], meta: dict, lqer_on: bool = True) -> dict[str, torch.Tensor]:
    """lqer_on=False: the blob holds no LQER factors (its config had lqer_rank 0), so the packer can
    leave their code out of a run that reads only its own blob."""
    state: dict[str, torch.Tensor] = {}
    for name, info in meta["tensors"].items():
        dtype = dtype_from_name(info.get("dtype", "float32"))
        kind = info["kind"]
        if kind == "raw":
            state[name] = tensors[name]
        elif kind in ("fp32", "fp16"):
            state[name] = tensors[name].to(dtype)
        elif kind in ("int", "int8", "gate_int8"):  # "int8" = blobs written before the mixed formats existed
            w = _dequant(tensors, name)
            if lqer_on and info.get("lqer"):
                w = w + lqer.correction(tensors, name, info["lqer"])
            state[name] = w.to(dtype)
        else:
            raise ValueError(f"tensor {name}: unknown quantization kind '{kind}'")
    return state


def summarize(meta: dict, tensors: dict[str, torch.Tensor], lqer_on: bool = True) -> dict[str, dict]:
    """Per format/kind: tensor count and stored payload bytes (before compression), for the byte report
    (lqer_on as in dequantize_state_dict)."""
    out: dict[str, dict] = {}
    for name, info in meta["tensors"].items():
        key = info.get("format") or info["kind"]
        parts = [name + ".q", name + ".scale"] if info["kind"] in ("int", "gate_int8") else [name]
        if lqer_on and info.get("lqer"):
            parts += [name + sfx for sfx in lqer.SUFFIXES]
        nbytes = sum(tensors[p].numel() * tensors[p].element_size() for p in parts)
        row = out.setdefault(key, {"tensors": 0, "bytes": 0, "params": 0})
        row["tensors"] += 1
        row["bytes"] += int(nbytes)
        row["params"] += int(tensors[parts[0]].numel())
    return out
