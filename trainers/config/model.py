"""Model shape and architecture fields. Defaults = the official baseline (root train_gpt.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class ModelConfig:
    vocab_size: int = 1024  # sp1024 tokenizer
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4  # GQA: 8 query heads share 4 KV heads
    mlp_mult: float = 2.0  # hidden = mlp_mult * model_dim (baseline 2x, records 3x)
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0  # logits = c * tanh(z / c)
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5  # learnable per-head gain on q after QK-norm + RoPE
    unet_skips: bool = True  # encoder/decoder skip connections (baseline has them)
