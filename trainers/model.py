"""The GPT of the official baseline (RMSNorm, GQA attention with QK-norm + RoPE + q-gain, relu^2 MLP,
resid mix, U-Net skips, tied embeddings, logit softcap, zero-initialised output projections) plus every
architectural technique of the seed stacks as a ModelConfig switch: LeakyReLU^2, gated skips, NTK and
partial RoPE, LN scale, SmearGate v1/v2/v3, BigramHash v1/v2, value embeddings, OrthoInit, XSA, Backout,
and the SP8192 lineage's depth recurrence (#1394/#1493) and GPT-J parallel residuals (#1493).

The model owns only model concerns. Which parameters are "control" tensors (kept fp32, scalar
optimizer group, never quantized) is decided by name patterns shared with the optimizer and quantizer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import attention
from .config import ModelConfig
from .layers import (BigramHash, CastedLinear, Rotary, SmearGate, ValueEmbedding, apply_rotary,
                     exclusive_self_attention, ortho_proj_factor, rms_norm)

__all__ = ["GPT", "CastedLinear", "CONTROL_PATTERNS", "TOKEN_TABLES", "is_control", "rms_norm",
           "count_parameters", "flops_per_token", "prepare_for_device",
           "layer_plan", "set_looping"]

# Name fragments of small control tensors: fp32, scalar Adam group, passthrough in the quantizer.
CONTROL_PATTERNS: tuple[str, ...] = (
    "attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight", "skip_gate",
    "smear", "bigram.scale", "ve.scale", "ve.layer_scales", "backout", "attn_gate_w", "parallel_post_lambdas",
    "parallel_resid_lambdas",
)

# Embedding tables trained in the token Adam group at the tied/embedding LR (§3.16).
TOKEN_TABLES: tuple[str, ...] = ("tok_emb.weight", "bigram.table.weight", "ve.table.weight")


def is_control(name: str) -> bool:
    return any(p in name for p in CONTROL_PATTERNS)


def layer_plan(cfg: ModelConfig, looping: bool) -> tuple[list[int], list[int]]:
    """(encoder, decoder) block indices in visiting order. Looping repeats loop_start..loop_end
    num_loops extra times and splits the virtual sequence in half (#1394: 15 virtual layers,
    #1493: 17); without looping the physical layers split at num_layers // 2 as in the baseline."""
    if looping and cfg.num_loops:
        span = list(range(cfg.loop_start, cfg.loop_end + 1))
        seq = list(range(cfg.loop_start)) + span * (cfg.num_loops + 1) + list(range(cfg.loop_end + 1, cfg.num_layers))
    else:
        seq = list(range(cfg.num_layers))
    n_enc = len(seq) // 2 if cfg.unet_skips else 0
    return seq[:n_enc], seq[n_enc:]


def set_looping(model: nn.Module, on: bool) -> None:
    """Switch depth recurrence. A Python attribute on purpose: the two layer sequences are different
    graphs (a tensor flag would have to run both). Dynamo guards on it, so a compiled model keeps one
    graph per state; the trainer's warm-up compiles both, and flipping it later is a cache hit."""
    base = getattr(model, "_orig_mod", model)
    base = getattr(base, "module", base)
    if getattr(base, "cfg", None) is not None and base.cfg.num_loops:
        base.looping = bool(on)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.model_dim // cfg.num_heads
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(cfg.rope_dims or self.head_dim, cfg.rope_base, cfg.rope_ntk_ref_len)
        self.xsa = layer_idx >= cfg.num_layers - cfg.xsa_last_n
        self.doc_attention = cfg.doc_attention  # GPT.hidden passes docs exactly then (the packer decides on it)
        # Output gate per head (#1736 dense / #1787 sparse); fp32 control tensor, int8 per row in the blob.
        self.gate_window = cfg.attn_gate_window if cfg.attn_gate == "sparse" else cfg.model_dim
        self.gate_scale = cfg.attn_gate_scale
        if cfg.attn_gate != "off":
            w = torch.zeros(cfg.num_heads, self.gate_window)
            if cfg.attn_gate_init_std > 0:
                nn.init.normal_(w, std=cfg.attn_gate_init_std)
            self.attn_gate_w = nn.Parameter(w)
        else:
            self.attn_gate_w = None

    def forward(self, x: torch.Tensor, ve: torch.Tensor | None = None, docs=None) -> torch.Tensor:
        backend = attention.active()
        hd = backend.heads_dim
        q = backend.split_heads(self.c_q(x), self.num_heads)
        k = backend.split_heads(self.c_k(x), self.num_kv_heads)
        v = self.c_v(x)
        if ve is not None:
            v = v + ve
        v = backend.split_heads(v, self.num_kv_heads)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(x.size(1), x.device, q.dtype)
        cos, sin = backend.rotary_table(cos), backend.rotary_table(sin)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype).view(-1, *([1] * (q.dim() - 1 - hd)))
        y = backend.attend_documents(q, k, v, docs) if self.doc_attention else backend.fn(q, k, v)
        if self.xsa:
            y = exclusive_self_attention(y, v, hd)
        if self.attn_gate_w is not None:
            g = torch.sigmoid(self.gate_scale * F.linear(x[..., : self.gate_window], self.attn_gate_w.to(x.dtype)))
            y = y * (g[..., None] if hd == 2 else g.transpose(1, 2)[..., None])
        return self.proj(backend.merge_heads(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(round(cfg.mlp_mult * cfg.model_dim))
        self.fc = CastedLinear(cfg.model_dim, hidden)
        self.proj = CastedLinear(hidden, cfg.model_dim, zero_init=True)
        self.leaky_slope = cfg.leaky_slope if cfg.activation == "leaky_relu2" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        # leaky_relu(h, a)^2 keeps a gradient for negative pre-activations (a^2 * h^2 there).
        h = torch.relu(h) if self.leaky_slope is None else F.leaky_relu(h, self.leaky_slope)
        return self.proj(h.square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        # resid_mix[0] scales the running stream, resid_mix[1] re-injects the embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim))))
        # LN scale damps the normalised input of deeper blocks (#315); 1.0 keeps the baseline exact.
        self.ln_scale = (layer_idx + 1) ** -0.5 if cfg.ln_scale else 1.0
        self.parallel = 0 <= cfg.parallel_start <= layer_idx

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        n = rms_norm(x)
        return n * self.ln_scale if self.ln_scale != 1.0 else n

    def forward(self, x: torch.Tensor, x0: torch.Tensor, ve: torch.Tensor | None = None, docs=None) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        if self.parallel:  # both branches read the same input (#1493)
            n = self.norm(x)
            return x + self.attn_scale.to(x.dtype) * self.attn(n, ve, docs) + self.mlp_scale.to(x.dtype) * self.mlp(n)
        x = x + self.attn_scale.to(x.dtype) * self.attn(self.norm(x), ve, docs)
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(self.norm(x))
        return x

    def lanes(self, lane0: torch.Tensor, lane1: torch.Tensor, x0: torch.Tensor, post: torch.Tensor,
              resid: torch.Tensor, ve: torch.Tensor | None = None, docs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-lane parallel block (#1530/#1855): attention reads lane 0 mixed with x0, the MLP reads lane
        1; post[b] routes branch b (0 attention, 1 MLP) into lanes 0 and 1; resid scales each lane."""
        mix = self.resid_mix.to(lane0.dtype)
        a = self.attn_scale.to(lane0.dtype) * self.attn(self.norm(mix[0] * lane0 + mix[1] * x0), ve, docs)
        m = self.mlp_scale.to(lane0.dtype) * self.mlp(self.norm(lane1))
        post, resid = post.to(lane0.dtype), resid.to(lane0.dtype)
        return (resid[0] * lane0 + post[0, 0] * a + post[1, 0] * m,
                resid[1] * lane1 + post[0, 1] * a + post[1, 1] * m)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.bigram = (BigramHash(cfg.bigram_hash, cfg.bigram_buckets, cfg.bigram_dim, cfg.model_dim,
                                  cfg.bigram_scale_init) if cfg.bigram_hash != "off" else None)
        self.smear = (SmearGate(cfg.smear_gate, cfg.model_dim, window=cfg.smear_window, bos_id=cfg.bos_id)
                      if cfg.smear_gate != "off" else None)
        kv_dim = cfg.num_kv_heads * (cfg.model_dim // cfg.num_heads)
        self.ve = (ValueEmbedding(cfg.vocab_size, cfg.ve_dim, kv_dim, cfg.ve_layers, cfg.ve_scale_init)
                   if cfg.ve_dim > 0 else None)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.num_encoder_layers = cfg.num_layers // 2 if cfg.unet_skips else 0
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        # Built in the final (looped) plan; the trainer starts it unlooped (recurrence.LoopSwitch).
        self.looping = cfg.num_loops > 0
        # Skip weights sized for the longest (looped) plan; the unlooped plan uses the first ones.
        enc, dec = layer_plan(cfg, looping=True)
        num_skips = min(len(enc), len(dec))
        self.num_skips = num_skips
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim)) if num_skips else None
        self.skip_gates = (nn.Parameter(torch.zeros(num_skips, cfg.model_dim))
                           if num_skips and cfg.skip_gates else None)
        if cfg.backout:
            self.backout_layer = cfg.backout_layer if cfg.backout_layer >= 0 else cfg.num_layers // 2
            self.backout_lambda = nn.Parameter(torch.tensor(float(cfg.backout_lambda_init)))
        else:
            self.backout_layer = -1
            self.backout_lambda = None
        if cfg.parallel_lanes:  # sized for every layer as in #1855; only layers >= parallel_start use them
            self.parallel_post_lambdas = nn.Parameter(torch.ones(cfg.num_layers, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((cfg.num_layers, 2), 1.1))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        # No-op hook point: its input is what the output head multiplies (GPTQ's Hessian of the tied embedding).
        self.head_input = nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Baseline: tied embedding N(0, std^2), flagged projections zero, other linears nn.Linear's
        default. OrthoInit (§3.12) as the records apply it: the zero flag is checked first, so the
        attention/MLP output projections stay exactly zero and the 1/sqrt(2L) factor lands only on
        unflagged `.proj` linears (BigramHash v2 and VE projections)."""
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        factor = ortho_proj_factor(self.cfg.num_layers)
        for name, module in self.named_modules():
            if not isinstance(module, CastedLinear) or module.weight.is_meta:
                continue
            if module.zero_init:
                nn.init.zeros_(module.weight)
            elif self.cfg.ortho_init and min(module.weight.shape) >= 64:
                with torch.no_grad():
                    nn.init.orthogonal_(module.weight, gain=1.0)
                    if self.cfg.ortho_proj_scale and name.endswith(".proj"):
                        module.weight.mul_(factor)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """x0: token (+ bigram) embedding, smeared and RMS-normalised in the order of each variant."""
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids).to(x.dtype)
        if self.smear is not None and self.smear.version != "v2":
            x = self.smear(x, input_ids)  # v1 and v3 act on the raw embedding
        x = rms_norm(x)
        if self.smear is not None and self.smear.version == "v2":
            x = self.smear(x, input_ids)  # v2 acts after the norm; x0 is the smeared tensor
        return x

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        x0 = x
        ve_base = self.ve(input_ids) if self.ve is not None else None
        skips: list[torch.Tensor] = []
        h_mid = None
        docs = attention.active().documents(input_ids, self.cfg.bos_id) if self.cfg.doc_attention else None
        lanes = self.cfg.parallel_lanes
        lane1 = None  # x is lane 0 once the two lanes split (at the first layer >= parallel_start)
        enc, dec = layer_plan(self.cfg, self.looping)
        for pos, i in enumerate(enc + dec):
            j = pos - len(enc)
            if lanes and lane1 is None and self.blocks[i].parallel:
                lane1 = x
            if j >= 0 and skips and j < self.num_skips:
                skip = self.skip_weights[j].to(x.dtype) * skips.pop()
                if self.skip_gates is not None:
                    x = torch.lerp(skip, x, torch.sigmoid(self.skip_gates[j]).to(x.dtype))
                else:
                    x = x + skip
            ve = self.ve.for_layer(ve_base, i) if ve_base is not None else None
            if lanes and lane1 is not None:  # `lanes and`: a test the packer decides
                x, lane1 = self.blocks[i].lanes(x, lane1, x0, self.parallel_post_lambdas[i],
                                                self.parallel_resid_lambdas[i], ve, docs)
            else:
                x = self.blocks[i](x, x0, ve, docs)
            if j < 0:
                skips.append(x)
            if self.backout_lambda is not None and i == self.backout_layer:
                h_mid = x
        if lanes and lane1 is not None:
            x = 0.5 * (x + lane1)
        if self.backout_lambda is not None and h_mid is not None:
            x = x - self.backout_lambda.to(x.dtype) * h_mid
        return rms_norm(x)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.head_input(self.hidden(input_ids))
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


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int, blocks: nn.ModuleList | None = None) -> float:
    """Training FLOPs per token by the 6N + 12*L*d*T convention (PaLM appendix B / nanoGPT). With depth
    recurrence the looped plan's virtual layers count (the steady state after the loop switch): every
    repeat of a block adds its parameters to N and one layer to L, so `blocks` (GPT.blocks) is needed."""
    enc, dec = layer_plan(cfg, looping=True)
    plan = enc + dec
    extra = 0
    if len(plan) != cfg.num_layers:
        if blocks is None:
            raise ValueError("flops_per_token: a looped model needs its blocks to count the repeated layers")
        extra = sum(count_parameters(blocks[i]) for i in plan) - sum(count_parameters(b) for b in blocks)
    return 6.0 * (n_params + extra) + 12.0 * len(plan) * cfg.model_dim * seq_len


def prepare_for_device(model: GPT, device: torch.device) -> GPT:
    """CUDA: embedding tables in bf16 like the records (tok_emb, BigramHash and VE tables), linear
    weights and control tensors stay fp32. CPU: everything fp32 (bit-reproducible, no autocast)."""
    model = model.to(device)
    if device.type == "cuda":
        model.tok_emb.to(torch.bfloat16)
        for extra in (model.bigram, model.ve):
            if extra is not None:
                extra.table.to(torch.bfloat16)
    return model
