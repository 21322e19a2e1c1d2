"""Late quantization-aware training: int6 straight-through fake quant inside every linear's forward.

The switch is a per-linear buffer tensor used arithmetically (w + flag * stopgrad(q(w) - w)), never a
Python attribute read in forward: #315's class-level boolean was constant-folded by torch.compile, so
its late QAT never ran (techniques.md §3.20, §8.1). A buffer is a graph input, so flipping it after
compilation changes the compiled forward without a recompile. `arm` (a Python bool) only decides
whether the fake-quant branch exists at all; it is set once before compiling.
"""
from __future__ import annotations

import torch
from torch import nn

INT6_LEVELS = 31  # symmetric int6 per row: codes clamp to [-32, 31], scale = row max / 31


def fake_quant_int6(w: torch.Tensor) -> torch.Tensor:
    """Per-row int6 quantize-dequantize of a 2-D weight (the §3.20 rule, scale floored at 1/31)."""
    w32 = w.float()
    scale = (w32.abs().amax(dim=1, keepdim=True) / INT6_LEVELS).clamp_min(1.0 / INT6_LEVELS)
    return (torch.round(w32 / scale).clamp(-INT6_LEVELS - 1, INT6_LEVELS) * scale).to(w.dtype)


def ste_weight(w: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    """flag = 0: w exactly; flag = 1: the fake-quantized w in the forward, identity gradient."""
    return w + flag.to(w.dtype) * (fake_quant_int6(w) - w).detach()


def _qat_modules(model: nn.Module):
    return [m for m in model.modules() if hasattr(m, "qat_flag") and hasattr(m, "qat_armed")]


def arm(model: nn.Module) -> int:
    """Give every linear the fake-quant branch (flag still 0). Call before torch.compile."""
    mods = _qat_modules(model)
    for m in mods:
        m.qat_armed = True
    return len(mods)


def set_enabled(model: nn.Module, enabled: bool) -> None:
    for m in _qat_modules(model):
        m.qat_flag.fill_(1.0 if enabled else 0.0)


def is_enabled(model: nn.Module) -> bool:
    mods = _qat_modules(model)
    return bool(mods) and all(m.qat_armed and float(m.qat_flag) == 1.0 for m in mods)
