"""The GPT of the official baseline: RMSNorm, GQA attention with QK-norm + RoPE + q-gain,
relu^2 MLP, resid mix, U-Net skips, tied embeddings, logit softcap, zero-initialised projections.

The model owns only model concerns. Which parameters are "control" tensors (kept fp32, scalar
optimizer group, never quantized) is decided by name patterns shared with the optimizer and quantizer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# Name fragments of small control tensors: fp32, scalar Adam group, passthrough in the quantizer.
CONTROL_PATTERNS: tuple[str, ...] = (
    "attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight",
)


def is_control(name: str) -> bool:
    return any(p in name for p in CONTROL_PATTERNS)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Weights live in fp32 (optimizer precision); the matmul runs in the activation dtype."""

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    """RoPE tables, cached per (length, device, dtype). Rotate-half pairing: j pairs with j + D/2."""

    def __init__(self, dim: int, base: float):
        super().__init__()
        self.dim = dim
        self.base = base
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, torch.dtype, torch.Tensor, torch.Tensor] | None = None

    def clear_cache(self) -> None:
        # Tables built under torch.inference_mode cannot enter autograd later (TTT trains after scoring).
        self._cache = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._cache
        if c is None or c[0] != seq_len or c[1] != device or c[2] != dtype or c[3].is_inference() != torch.is_inference_mode_enabled():
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            cos = freqs.cos()[None, None, :, :].to(dtype)
            sin = freqs.sin()[None, None, :, :].to(dtype)
            self._cache = c = (seq_len, device, dtype, cos, sin)
        return c[3], c[4]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.model_dim % cfg.num_heads:
            raise ValueError(f"model_dim {cfg.model_dim} is not divisible by num_heads {cfg.num_heads}")
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(f"num_heads {cfg.num_heads} is not a multiple of num_kv_heads {cfg.num_kv_heads}")
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.model_dim // cfg.num_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, dim = x.shape
        q = self.c_q(x).reshape(bsz, seqlen, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).reshape(bsz, seqlen, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(seqlen, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(bsz, seqlen, dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(round(cfg.mlp_mult * cfg.model_dim))
        self.fc = CastedLinear(cfg.model_dim, hidden)
        self.proj = CastedLinear(hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        # resid_mix[0] scales the running stream, resid_mix[1] re-injects the embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim))))

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.logit_softcap <= 0:
            raise ValueError(f"logit_softcap must be > 0, got {cfg.logit_softcap}")
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.num_encoder_layers = cfg.num_layers // 2 if cfg.unet_skips else 0
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim)) if num_skips else None
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, CastedLinear) and module.zero_init:
                nn.init.zeros_(module.weight)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = rms_norm(self.tok_emb(input_ids))
        x0 = x
        skips: list[torch.Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.blocks[i](x, x0)
            skips.append(x)
        for j in range(self.num_decoder_layers):
            if skips:
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            x = self.blocks[self.num_encoder_layers + j](x, x0)
        return rms_norm(x)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.hidden(input_ids)
        weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        z = F.linear(h, weight.to(h.dtype)).float()
        c = self.cfg.logit_softcap
        return c * torch.tanh(z / c)

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self.logits(input_ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction)
        return loss if reduction != "none" else loss.view_as(target_ids)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token by the 6N + 12*L*d*T convention (PaLM appendix B / nanoGPT)."""
    return 6.0 * n_params + 12.0 * cfg.num_layers * cfg.model_dim * seq_len


def prepare_for_device(model: GPT, device: torch.device) -> GPT:
    """CUDA: embeddings in bf16 like the baseline, linear weights and control tensors stay fp32.
    CPU: everything fp32 (bit-reproducible, no autocast)."""
    model = model.to(device)
    if device.type == "cuda":
        model.tok_emb.to(torch.bfloat16)
    return model
