"""Model shape and architecture fields. Defaults = the official baseline (root train_gpt.py); every
technique of the seed stacks is a field that is off by default. Record numbers (#N) are the PRs of
techniques.md §3/§4 that introduced or used the value."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._base import choices, need


@dataclass(kw_only=True)
class ModelConfig:
    def validate(self) -> None:
        choices(self, "model")
        need(self.num_layers >= 1 and self.model_dim >= 1 and self.num_heads >= 1 and self.num_kv_heads >= 1,
             "model.num_layers, model_dim, num_heads and num_kv_heads must be >= 1")
        need(1 <= self.vocab_size <= 65536, f"model.vocab_size = {self.vocab_size}: shards store uint16 tokens (1..65536)")
        need(self.logit_softcap > 0, f"model.logit_softcap must be > 0, got {self.logit_softcap}")
        need(self.mlp_mult > 0, f"model.mlp_mult must be > 0, got {self.mlp_mult}")
        need(self.model_dim % self.num_heads == 0,
             f"model.model_dim {self.model_dim} is not divisible by model.num_heads {self.num_heads}")
        need(self.num_heads % self.num_kv_heads == 0,
             f"model.num_heads {self.num_heads} is not a multiple of model.num_kv_heads {self.num_kv_heads}")
        head_dim = self.model_dim // self.num_heads
        need(head_dim % 2 == 0, f"head_dim = model.model_dim / model.num_heads = {head_dim} must be even for RoPE")
        need(not self.rope_dims or (self.rope_dims % 2 == 0 and 0 < self.rope_dims <= head_dim),
             f"model.rope_dims must be even and in 2..{head_dim} (0 = whole head), got {self.rope_dims}")
        need(0 <= self.xsa_last_n <= self.num_layers,
             f"model.xsa_last_n must be in 0..{self.num_layers}, got {self.xsa_last_n}")
        if self.ve_dim > 0:
            need(bool(self.ve_layers) and len(set(self.ve_layers)) == len(self.ve_layers)
                 and all(0 <= i < self.num_layers for i in self.ve_layers),
                 f"model.ve_layers must be distinct layer indices in 0..{self.num_layers - 1}, got {self.ve_layers}")
        need(not self.backout or -1 <= self.backout_layer < self.num_layers,
             f"model.backout_layer must be -1 or in 0..{self.num_layers - 1}, got {self.backout_layer}")
        need(self.num_loops >= 0, f"model.num_loops must be >= 0 (0 = no depth recurrence), got {self.num_loops}")
        need(not self.num_loops or 0 <= self.loop_start <= self.loop_end < self.num_layers,
             f"model.loop_start..loop_end must satisfy 0 <= start <= end < {self.num_layers}, "
             f"got {self.loop_start}..{self.loop_end}")
        need(0.0 <= self.loop_enable_frac < 1.0, f"model.loop_enable_frac must be in [0, 1), got {self.loop_enable_frac}")
        need(self.parallel_start < self.num_layers,
             f"model.parallel_start must be -1 (off) or < {self.num_layers}, got {self.parallel_start}")
        need(not self.parallel_lanes or self.parallel_start >= 0,
             "model.parallel_lanes needs model.parallel_start >= 0 (the first two-lane layer)")
        need(self.attn_gate != "sparse" or 0 < self.attn_gate_window <= self.model_dim,
             f"model.attn_gate_window must be in 1..{self.model_dim}, got {self.attn_gate_window}")

    vocab_size: int = 1024  # sp1024 tokenizer
    num_layers: int = 9  # 9 baseline; 10 in #180/#366; 11 in #198 onward
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4  # GQA: 8 query heads share 4 KV heads
    mlp_mult: float = 2.0  # hidden = mlp_mult * model_dim (baseline 2x; 3x from #102/#162 on)
    activation: Literal["relu2", "leaky_relu2"] = "relu2"  # relu2 = relu(h)^2 (baseline) | leaky_relu2 = leaky_relu(h, leaky_slope)^2 (#493, #549)
    leaky_slope: float = 0.5  # negative slope of leaky_relu2; 0.5 in #549
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0  # logits = c * tanh(z / c); 30 in every record
    rope_base: float = 10000.0
    rope_ntk_ref_len: int = 0  # NTK RoPE: base *= (T/ref)^(D/(D-2)) when seq len T > ref; 0 = off; 1024 in #198..#691 (hard-coded there while training at 2048)
    rope_dims: int = 0  # partial RoPE: rotate the first rope_dims dims of each head, pass the rest; 0 = whole head (baseline); 16 of 64 in #315 onward
    qk_gain_init: float = 1.5  # learnable per-head gain on q after QK-norm + RoPE; 1.5 baseline and seed stacks
    ln_scale: bool = False  # multiply block l's normed attn/MLP inputs by 1/sqrt(l+1); off baseline; #315 onward
    unet_skips: bool = True  # encoder/decoder skip connections (baseline has them)
    skip_gates: bool = False  # sigmoid-gated skips: x <- lerp(s*skip, x, sigmoid(g)), g per dim init 0; off; #1089/#1218
    smear_gate: Literal["off", "v1", "v2", "v3"] = "off"  # off | v1 (#65: gate init 3, before norm) | v2 (#102/#135, #162 lineage: gate init 0, after norm) | v3 (#1667/#1855: input-dependent, BOS mask)
    smear_window: int = 12  # v3 only: the gate reads x_t[0:smear_window]; 12 in #1855 (GATE_WINDOW)
    bos_id: int = 1  # BOS token id for SmearGate v3's mask (sp1024 and the demo tokenizer: <s> = 1)
    bigram_hash: Literal["off", "v1", "v2"] = "off"  # off | v1 (#65: (prev*92821+cur) mod B) | v2 (#135, all seed PRs: XOR hash, bucket B-1 reserved, zero table, scale 0.05)
    bigram_buckets: int = 4096  # hash table rows B; 4096 #162, 10240 #180/#366, 2048 #198..#691, 1536 #549
    bigram_dim: int = 128  # table width before the projection to model_dim; 128 (64 in #264)
    bigram_scale_init: float = 0.05  # v2 only: learned scalar on the projected bigram embedding; 0.05 (#135)
    ve_dim: int = 0  # value embeddings: shared vocab x ve_dim table, projected to kv_dim, added to v; 0 = off; 128 in #374/#414/#691
    ve_layers: list[int] = field(default_factory=list)  # layers receiving VE; [9, 10] in #374/#414/#691
    ve_scale_init: float = 0.1  # shared VE scale init (per-layer scales init 1); #374
    ortho_init: bool = False  # orthogonal init of every non-zero-init linear with both dims >= 64; off; #135/#162 onward
    ortho_proj_scale: bool = True  # with ortho_init: x 1/sqrt(2L) on non-zero-init `.proj` linears (BigramHash/VE proj, as the records apply it)
    xsa_last_n: int = 0  # exclusive self attention on the last N layers (GQA-efficient form); 0 = off; 3 #265, 4 #287..#691
    backout: bool = False  # before the final norm x <- x - lambda * h_mid; off; #339 -> seed #366
    backout_lambda_init: float = 0.2  # initial lambda (#339 BACKOUT_LAMBDA_INIT)
    backout_layer: int = -1  # block whose output is h_mid; -1 = num_layers // 2 (#339 BACKOUT_LAYER)
    num_loops: int = 0  # depth recurrence: layers loop_start..loop_end (inclusive, shared weights) run 1 + num_loops times once looping is on; 0 = off; 2 in #1394/#1493
    loop_start: int = 0  # first looped layer; 4 #1394, 3 #1493
    loop_end: int = 0  # last looped layer (inclusive); 5 in #1394/#1493
    loop_enable_frac: float = 0.0  # looping switches on at this fraction of training (of the cap minus the GPTQ reserve, else of iterations); 0.5 #1394, 0.35 #1493
    parallel_start: int = -1  # GPT-J parallel residual from this layer on: attention and MLP both read the mixed input, outputs summed; -1 = off; 7 #1493
    parallel_lanes: bool = False  # with parallel_start: the two-lane form (#1530/#1855): attention reads lane 0 (+ x0 mix), MLP reads lane 1, both outputs go to both lanes via learned 2x2 post-weights, lane residual scales init 1.1, final hidden = mean of the lanes
    attn_gate: Literal["off", "dense", "sparse"] = "off"  # per-head sigmoid gate on the attention output before the out projection: off | dense (#1736: gate from the whole normed input, W (H, d)) | sparse (#1787/#1855: from its first attn_gate_window dims, W (H, window))
    attn_gate_window: int = 12  # sparse gate input width; 12 in #1787/#1855 (GATE_WINDOW)
    attn_gate_scale: float = 1.0  # g = sigmoid(scale * W x); 0.5 in #1855 (SPARSE_ATTN_GATE_SCALE)
    attn_gate_init_std: float = 0.0  # W ~ N(0, std^2); 0 = zeros (sparse, #1787/#1855); 0.01 for dense in #1736
    doc_attention: bool = False  # attention restricted to the document: a query never sees keys before the latest BOS (#1530 varlen FlashAttention; block-diagonal causal mask on SDPA)
