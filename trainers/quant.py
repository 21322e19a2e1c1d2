"""Post-training quantization of the state dict into int codes + scales, and back.

Baseline scheme (root train_gpt.py): per-row symmetric int8 with the row's 99.99984th percentile of
|w| as clip, fp16 scales; float tensors with <= passthrough_max_numel elements stay as fp16, control
tensors as fp32; non-float tensors pass through unchanged.
"""
from __future__ import annotations

import torch

from .config import QuantConfig
from .model import is_control


def quantize_int8_rows(w: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    rows = w.reshape(w.size(0), -1) if w.ndim >= 2 else w.reshape(1, -1)
    clip = torch.quantile(rows.abs(), percentile / 100.0, dim=1) if rows.size(1) > 1 else rows.abs()[:, 0]
    scale = (clip / 127.0).clamp_min(1.0 / 127.0).to(torch.float16)
    s = scale.float()[:, None]
    q = torch.clamp(torch.round(torch.clamp(rows, -clip[:, None], clip[:, None]) / s), -127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


def quantize_state_dict(state: dict[str, torch.Tensor], cfg: QuantConfig) -> tuple[dict[str, torch.Tensor], dict]:
    if cfg.scheme != "int8":
        raise ValueError(f"unknown quant.scheme '{cfg.scheme}' (expected int8)")
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if not t.is_floating_point():
            out[name] = t
            meta[name] = {"kind": "raw"}
        elif is_control(name):
            out[name] = t.float()
            meta[name] = {"kind": "fp32", "dtype": str(t.dtype).removeprefix("torch.")}
        elif t.numel() <= cfg.passthrough_max_numel:
            out[name] = t.to(torch.float16)
            meta[name] = {"kind": "fp16", "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            q, scale = quantize_int8_rows(t, cfg.int8_clip_percentile)
            out[name + ".q"] = q
            out[name + ".scale"] = scale
            meta[name] = {"kind": "int8", "dtype": str(t.dtype).removeprefix("torch.")}
    return out, {"scheme": cfg.scheme, "tensors": meta}


def dequantize_state_dict(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, info in meta["tensors"].items():
        dtype = getattr(torch, info.get("dtype", "float32"))
        kind = info["kind"]
        if kind == "raw":
            state[name] = tensors[name]
        elif kind in ("fp32", "fp16"):
            state[name] = tensors[name].to(dtype)
        elif kind == "int8":
            q = tensors[name + ".q"].float()
            scale = tensors[name + ".scale"].float()
            rows = q.reshape(q.size(0), -1) if q.ndim >= 2 else q.reshape(1, -1)
            state[name] = (rows * scale[:, None]).reshape(q.shape).to(dtype)
        else:
            raise ValueError(f"tensor {name}: unknown quantization kind '{kind}'")
    return state
