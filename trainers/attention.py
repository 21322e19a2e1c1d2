"""Causal attention kernels: FlashAttention 3 -> FlashAttention 2 -> PyTorch SDPA (techniques.md §3.28,
§8.14), picked once at start-up by `configure` and read by every attention layer through `active()`.

The records ran 84 ms/step with FA3 against 109-116 ms with SDPA, so the backend is part of a run's
fingerprint and is logged. GQA is native in all three (FA takes fewer KV heads; SDPA with enable_gqa),
so repeated K/V is never materialised. FA wants (B, T, H, D) and SDPA (B, H, T, D): each backend names
the axis its heads live on and the model builds q, k, v in that layout, which saves the FA path every
transpose (the projections already produce (B, T, H*D)).

The flash packages are optional: imported lazily here, never at module import, and guarded.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, get_args

import torch
import torch.nn.functional as F

from .config.run import AttentionChoice

CHOICES = get_args(AttentionChoice)
AUTO_ORDER = ("fa3", "fa2", "sdpa")
FA_DTYPES = (torch.bfloat16, torch.float16)
# module, minimum and maximum compute capability (major) of the build: the FA3 kernels are Hopper
# only; FA2 covers Ampere onward.
_FLASH = {"fa3": ("flash_attn_interface", 9, 9), "fa2": ("flash_attn", 8, 99)}


class AttentionBackendError(ValueError):
    """An explicit backend choice that cannot run here, or an unknown name."""


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    heads_dim: int  # axis of the heads in q, k, v and the output: 1 = (B, H, T, D), 2 = (B, T, H, D)
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # causal attention
    version: str = ""
    notes: tuple[str, ...] = ()  # why earlier candidates of "auto" were skipped
    varlen: Callable | None = None  # flash_attn_varlen_func of the flash module (document attention)

    def split_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, T, heads*D) projection output -> this backend's layout (a view for FA)."""
        x = x.unflatten(-1, (heads, -1))
        return x if self.heads_dim == 2 else x.transpose(1, 2)

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output -> (B, T, H*D)."""
        if self.heads_dim == 1:
            y = y.transpose(1, 2)
        return y.flatten(2)

    def rotary_table(self, table: torch.Tensor) -> torch.Tensor:
        """Rotary's [1, 1, T, d] table broadcast over this layout (a view)."""
        return table if self.heads_dim == 1 else table.transpose(1, 2)

    def documents(self, input_ids: torch.Tensor, bos_id: int):
        """What `attend_documents` needs to keep each query inside its document (a document starts at a
        BOS or at the row start): a block-diagonal causal mask [B, 1, T, T] for SDPA, cu_seqlens and
        the longest segment over the flattened batch for varlen FlashAttention."""
        starts = input_ids == bos_id
        if self.varlen is None or self.heads_dim == 1:
            doc = starts.cumsum(1)
            t = input_ids.size(1)
            causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
            return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]
        starts = starts.clone()
        starts[:, 0] = True
        flat = starts.flatten().nonzero().flatten()
        cu = torch.cat((flat, flat.new_tensor([starts.numel()]))).to(torch.int32)
        return cu, int((cu[1:] - cu[:-1]).max())

    def attend_documents(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs) -> torch.Tensor:
        if isinstance(docs, torch.Tensor):  # SDPA layout (B, H, T, D) and a boolean mask
            if self.heads_dim == 2:
                q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=docs, enable_gqa=k.size(1) != q.size(1))
            return y if self.heads_dim == 1 else y.transpose(1, 2)
        cu, longest = docs
        b, t = q.shape[:2]
        out = self.varlen(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens_q=cu, cu_seqlens_k=cu,
                          max_seqlen_q=longest, max_seqlen_k=longest, causal=True)
        out = out[0] if isinstance(out, tuple) else out
        return out.unflatten(0, (b, t))

    def describe(self) -> str:
        text = f"{self.name} ({self.version})" if self.version else self.name
        return text + "".join(f"; {n}" for n in self.notes)


SDPA = AttentionBackend("sdpa", 1, _sdpa, f"torch {torch.__version__}")


def _flash_fn(func: Callable) -> Callable:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.dtype not in FA_DTYPES:
            # fp32 callers (a forward outside autocast) get exact SDPA rather than a silent downcast.
            return _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        out = func(q, k, v, causal=True)
        # Some FA3 releases return (out, softmax_lse).
        return out[0] if isinstance(out, tuple) else out
    return attend


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None for anything else. Tests replace this."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _try_flash(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> AttentionBackend | str:
    """The backend, or a one-line reason it cannot run here."""
    module_name, lo, hi = _FLASH[name]
    cap = device_capability(device)
    if cap is None:
        return f"{name} needs a CUDA device, got {device.type}"
    if not lo <= cap[0] <= hi:
        return f"{name} needs compute capability {lo}.x{'' if lo == hi else '+'}, device has {cap[0]}.{cap[1]}"
    if dtype not in FA_DTYPES:
        return f"{name} needs bf16/fp16 activations, got {dtype}"
    if head_dim % 8 or head_dim > 256:
        return f"{name} needs head_dim a multiple of 8 and <= 256, got {head_dim}"
    try:
        module = importlib.import_module(module_name)
        func = module.flash_attn_func
    except Exception as exc:  # a broken build can fail with OSError / undefined symbols, not just ImportError
        return f"{name} unavailable: cannot import {module_name}.flash_attn_func ({type(exc).__name__}: {exc})"
    version = getattr(module, "__version__", "") or ""
    return AttentionBackend(name, 2, _flash_fn(func), f"{module_name} {version}".strip(),
                            varlen=getattr(module, "flash_attn_varlen_func", None))


def resolve(choice: str, device: torch.device, dtype: torch.dtype = torch.bfloat16,
            head_dim: int = 64) -> AttentionBackend:
    """`auto`: the first of fa3, fa2, sdpa that runs on this device and dtype. An explicit choice that
    cannot run raises AttentionBackendError with the reason."""
    if choice not in CHOICES:
        raise AttentionBackendError(f"run.attention_backend must be one of {', '.join(CHOICES)}, got {choice!r}")
    device = torch.device(device)
    if choice == "sdpa":
        return SDPA
    if choice != "auto":
        got = _try_flash(choice, device, dtype, head_dim)
        if isinstance(got, str):
            raise AttentionBackendError(f"run.attention_backend = {choice!r} cannot run here: {got}")
        return got
    notes = []
    for name in AUTO_ORDER[:-1]:
        got = _try_flash(name, device, dtype, head_dim)
        if not isinstance(got, str):
            return AttentionBackend(got.name, got.heads_dim, got.fn, got.version, tuple(notes), got.varlen)
        notes.append(got)
    return AttentionBackend(SDPA.name, SDPA.heads_dim, SDPA.fn, SDPA.version, tuple(notes))


_active: AttentionBackend = SDPA


def active() -> AttentionBackend:
    """The process-wide backend. Read inside forward, so torch.compile guards on it: swapping it
    afterwards recompiles instead of running a stale kernel."""
    return _active


def set_active(backend: AttentionBackend) -> AttentionBackend:
    """Install `backend`; returns the previous one."""
    global _active
    previous, _active = _active, backend
    return previous


@contextmanager
def using(backend: AttentionBackend):
    previous = set_active(backend)
    try:
        yield backend
    finally:
        set_active(previous)


def configure(choice: str, device: torch.device, dtype: torch.dtype = torch.bfloat16,
              head_dim: int = 64) -> AttentionBackend:
    """Resolve once at start-up and make it the active backend (every model built later, e.g. the
    fresh model of the round-trip eval, uses it too)."""
    backend = resolve(choice, device, dtype, head_dim)
    set_active(backend)
    return backend
