"""Building blocks shared by the GPT: the casted linear (with the late-QAT hook), RoPE (NTK and
partial), exclusive self attention, and the token-level add-ons of the records: SmearGate v1/v2/v3,
BigramHash v1/v2 and value embeddings. Formulas follow techniques.md §3.8-§3.13 and §3.28."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .qat import ste_weight


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Weights live in fp32 (optimizer precision); the matmul runs in the activation dtype.

    `zero_init` flags output projections that start at exactly zero (and stay zero under OrthoInit).
    """

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.qat_armed = False
        self.register_buffer("qat_flag", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.qat_armed and self.training:
            w = ste_weight(w, self.qat_flag)
        return F.linear(x, w.to(x.dtype))


def previous_token(x: torch.Tensor) -> torch.Tensor:
    """x shifted one position right along time (dim 1); position 0 sees zeros."""
    return F.pad(x[:, :-1], (0, 0, 1, 0))


# ---- RoPE ------------------------------------------------------------------------------------


def ntk_base(base: float, rope_dims: int, seq_len: int, ref_len: int) -> float:
    """NTK-aware base: base * (T/T0)^(D/(D-2)) when T > T0 (§3.8). The records apply it whenever the
    runtime length exceeds the hard-coded T0 = 1024, i.e. in training and eval at 2048 alike."""
    if ref_len <= 0 or seq_len <= ref_len or rope_dims <= 2:
        return base
    return base * (seq_len / ref_len) ** (rope_dims / (rope_dims - 2))


class Rotary(nn.Module):
    """cos/sin tables for the first `dim` dims of a head. Rotate-half pairing within those dims: j
    pairs with j + dim/2.

    Eager: cached per (length, device, dtype, inference mode). Under torch.compile the tables are
    computed in the graph instead (seq_len x dim/2 values, 2048 x 8 for pr691): reading
    `Tensor.is_inference()` broke the inference-mode graph (13 breaks in a 3-layer pr691 model, each
    Block then compiled on its own until dynamo's recompile limit sent it back to eager), and writing
    the cache from inside the graph adds a guard that recompiles on the next call."""

    def __init__(self, dim: int, base: float, ntk_ref_len: int = 0):
        super().__init__()
        if dim % 2 or dim <= 0:
            raise ValueError(f"rotary dims must be even and > 0, got {dim}")
        self.dim = dim
        self.base = base
        self.ntk_ref_len = ntk_ref_len
        self._cache: tuple[int, torch.device, torch.dtype, bool, torch.Tensor, torch.Tensor] | None = None

    def clear_cache(self) -> None:
        # Tables built under torch.inference_mode cannot enter autograd later (TTT trains after scoring).
        self._cache = None

    def inv_freq(self, seq_len: int, device: torch.device) -> torch.Tensor:
        # Python doubles rounded once to float32: the same bits on every device, eager or compiled
        # (inside a graph this is a constant, not a CPU op and a copy).
        base = ntk_base(self.base, self.dim, seq_len, self.ntk_ref_len)
        inv = [1.0 / base ** (j / self.dim) for j in range(0, self.dim, 2)]
        return torch.tensor(inv, dtype=torch.float32, device=device)

    def tables(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq(seq_len, device))
        return freqs.cos()[None, None, :, :].to(dtype), freqs.sin()[None, None, :, :].to(dtype)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            return self.tables(seq_len, device, dtype)
        key = (seq_len, device, dtype, torch.is_inference_mode_enabled())
        c = self._cache
        if c is None or c[:4] != key:
            self._cache = c = key + self.tables(seq_len, device, dtype)
        return c[4], c[5]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.size(-1)*2 dims of x; the remaining dims pass through (partial RoPE)."""
    rd = 2 * cos.size(-1)
    half = rd // 2
    x1, x2 = x[..., :half], x[..., half:rd]
    rotated = (x1 * cos + x2 * sin, x2 * cos - x1 * sin)
    if rd == x.size(-1):
        return torch.cat(rotated, dim=-1)
    return torch.cat((*rotated, x[..., rd:]), dim=-1)


# ---- exclusive self attention ------------------------------------------------------------------


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor, heads_dim: int = 1) -> torch.Tensor:
    """Remove from each head's output its component along the token's own value direction (§3.13).

    y: attention output with H heads on axis `heads_dim` ([B, H, T, D] for SDPA, [B, T, H, D] for
    FlashAttention); v: the values fed to attention, H_kv heads on the same axis. Query head h uses KV
    head h // group (the GQA grouping of SDPA and FA alike), so the head axis of y is split into
    (H_kv, group) and the unit value broadcasts over the group instead of being repeat-interleaved.
    """
    hkv = v.size(heads_dim)
    yg = y.unflatten(heads_dim, (hkv, y.size(heads_dim) // hkv))
    vn = F.normalize(v, dim=-1).unsqueeze(heads_dim + 1)
    yg = yg - (yg * vn).sum(dim=-1, keepdim=True) * vn
    return yg.flatten(heads_dim, heads_dim + 1)


# ---- token-level add-ons -----------------------------------------------------------------------


class SmearGate(nn.Module):
    """Blend each position with its predecessor (§3.10).

    v1: x'_t = g*x_t + (1-g)*x_{t-1}, g = sigmoid(gate), gate init 3 (keeps ~95% of the current token).
    v2: x'_t = (1-g)*x_t + g*x_{t-1}, gate init 0 (an even blend at init).
    v3: x'_t = x_t + lam * sigmoid(w . x_t[:W]) * x_{t-1} * [id_t != BOS], w and lam zero-init, so the
        module is the identity at init and never carries the previous document into a BOS position.
    """

    def __init__(self, version: str, dim: int, *, window: int = 12, bos_id: int = 1):
        super().__init__()
        if version not in ("v1", "v2", "v3"):
            raise ValueError(f"smear_gate must be off|v1|v2|v3, got {version!r}")
        self.version = version
        self.bos_id = bos_id
        if version == "v3":
            if not 0 < window <= dim:
                raise ValueError(f"smear_window must be in 1..{dim}, got {window}")
            self.window = window
            self.weight = nn.Parameter(torch.zeros(window))
            self.lam = nn.Parameter(torch.zeros(()))
        else:
            self.gate = nn.Parameter(torch.full((dim,), 3.0 if version == "v1" else 0.0))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        prev = previous_token(x)
        if self.version == "v3":
            g = torch.sigmoid(x[..., : self.window] @ self.weight.to(x.dtype))[..., None]
            keep = (input_ids != self.bos_id).to(x.dtype)[..., None]
            return x + self.lam.to(x.dtype) * g * prev * keep
        g = torch.sigmoid(self.gate).to(x.dtype)
        if self.version == "v1":
            return g * x + (1 - g) * prev
        return (1 - g) * x + g * prev


def bigram_index_v1(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """(prev * 92821 + cur) mod B with prev = 0 at position 0 (#65)."""
    cur = ids.long()
    prev = F.pad(cur[:, :-1], (1, 0))
    return (prev * 92821 + cur) % buckets


def bigram_index_v2(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Position 0: the reserved bucket B-1 (no previous token in the sequence); t >= 1:
    ((36313 * cur) XOR (27191 * prev)) mod (B-1), in int32 arithmetic as in #135 (wraps for vocab
    ids >= 59,139, which sp1024..sp8192 never reach)."""
    t = ids.to(torch.int32)
    mod = buckets - 1
    rest = torch.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % mod
    first = torch.full_like(t[:, :1], mod)
    return torch.cat((first, rest), dim=1).long()


class BigramHash(nn.Module):
    """Hashed (prev, cur) embedding projected to model_dim, added to the token embedding (§3.11).

    v2: zero-init table (token Adam group), projection in the Muon group, learned scale init 0.05.
    The projection is zeroed here but *not* flagged zero-init: the records' OrthoInit pass overwrites
    it with an orthogonal matrix x 1/sqrt(2L), and the zero table keeps the output zero at init.
    v1: table N(0, 0.01^2), projection flagged zero-init (stays zero under OrthoInit), no scale.
    """

    def __init__(self, version: str, buckets: int, dim: int, model_dim: int, scale_init: float):
        super().__init__()
        if version not in ("v1", "v2"):
            raise ValueError(f"bigram_hash must be off|v1|v2, got {version!r}")
        if buckets < 2:
            raise ValueError(f"bigram_buckets must be >= 2, got {buckets}")
        self.version = version
        self.buckets = buckets
        self.table = nn.Embedding(buckets, dim)
        self.proj = CastedLinear(dim, model_dim, zero_init=version == "v1")
        if version == "v2":
            self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        else:
            self.register_parameter("scale", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.version == "v2":
            nn.init.zeros_(self.table.weight)
        else:
            nn.init.normal_(self.table.weight, std=0.01)
        nn.init.zeros_(self.proj.weight)

    def index(self, ids: torch.Tensor) -> torch.Tensor:
        return (bigram_index_v2 if self.version == "v2" else bigram_index_v1)(ids, self.buckets)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.table(self.index(ids)))
        return h * self.scale.to(h.dtype) if self.scale is not None else h


class ValueEmbedding(nn.Module):
    """VE (§3.28, #374): one vocab x ve_dim table N(0, 0.01^2) and a projection to kv_dim, shared by the
    chosen layers; layer k adds scale * layer_scales[k] * proj(table[ids]) to its value projection.
    The projection is zeroed but not flagged, like BigramHash v2 (OrthoInit overwrites it)."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int, layers: list[int], scale_init: float):
        super().__init__()
        self.layers = list(layers)
        self.table = nn.Embedding(vocab_size, dim)
        self.proj = CastedLinear(dim, kv_dim)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.layer_scales = nn.Parameter(torch.ones(len(self.layers)))
        nn.init.normal_(self.table.weight, std=0.01)
        nn.init.zeros_(self.proj.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(ids))

    def for_layer(self, base: torch.Tensor, layer: int) -> torch.Tensor | None:
        if layer not in self.layers:
            return None
        k = self.layers.index(layer)
        return base * (self.scale * self.layer_scales[k]).to(base.dtype)


def ortho_proj_factor(num_layers: int) -> float:
    return 1.0 / math.sqrt(2 * num_layers)
