"""Post-training quantization and compression of the counted model blob. Baseline: int8 + zlib-9.

Every float tensor falls into one of these classes, checked in this order (techniques.md 3.22):
non-float -> raw; control pattern -> fp32; numel <= passthrough_max_numel -> fp16; name in the fp16
keep-list -> fp16; else its category's integer format. Categories come from the name: tok_emb/lm_head
-> embed, bigram -> bigram, .mlp. -> mlp, .attn. -> attn, anything else -> other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from ._base import need

# Formats a category may use. "int6" is the records' [-32,31] grid, "int6_sym" GPTQ-lite's [-31,31].
Format = Literal["int8", "int7", "int6", "int6_sym", "int5", "int4", "fp16"]
Category = Literal["embed", "mlp", "attn", "bigram", "other"]
FORMATS, CATEGORIES = get_args(Format), get_args(Category)


@dataclass(kw_only=True)
class QuantConfig:
    def validate(self) -> None:
        need(re.fullmatch(r"[A-Za-z0-9_\-]+", self.scheme) is not None,
             f"quant.scheme = {self.scheme!r}: a file-name label of letters, digits, '_' or '-'")
        need(bool(self.clip_percentiles) and all(0.0 < p <= 1.0 for p in self.clip_percentiles),
             f"quant.clip_percentiles must be fractions in (0, 1], got {self.clip_percentiles}")
        need(0.0 < self.int8_clip_percentile <= 100.0,
             f"quant.int8_clip_percentile must be in (0, 100], got {self.int8_clip_percentile}")
        need(self.gptq_reserve_seconds >= 0 and self.gptq_calib_batches >= 0 and self.gptq_block_size >= 1,
             "quant.gptq_reserve_seconds / gptq_calib_batches must be >= 0 and gptq_block_size >= 1")

    scheme: str = "int8"  # label only: the blob is final_model.<scheme>.<compressor>.ptz
    embed_format: Format = "int8"
    mlp_format: Format = "int8"
    attn_format: Format = "int8"
    bigram_format: Format = "int8"
    other_format: Format = "int8"
    int8_clip_percentile: float = 99.99984  # int8 rows clip at this percentile of |w| (baseline)
    passthrough_max_numel: int = 65_536  # float tensors this small stay fp16 (fp32 if control); #180 uses 8,192
    fp16_keep: list[str] = field(default_factory=list)  # name fragments kept fp16 above the threshold
    late_k_fp16_layers: list[int] = field(default_factory=list)  # blocks.<i>.attn.c_k kept fp16 (<0 from the end)
    # Scale floor: <0 means 1/Q of the format (every record clamps s >= 1/Q), 0 none, >0 absolute.
    scale_floor: float = -1.0
    # GPTQ-lite clip search for the sub-int8 formats: off | per_matrix (what #414's code does) | per_row.
    clip_search: Literal["off", "per_matrix", "per_row"] = "off"
    clip_percentiles: list[float] = field(default_factory=lambda: [0.999, 0.9995, 0.9999, 0.99999, 1.0])
    # SD-clip (#1394): row clip = k * std(row). 0 = off; the per-category values override the global one.
    sd_clip_k: float = 0.0
    sd_clip_k_embed: float = 0.0
    sd_clip_k_mlp: float = 0.0
    sd_clip_k_attn: float = 0.0
    # Full-Hessian GPTQ on the linear layers of these categories, calibrated on training batches
    # inside the training budget: the loop stops gptq_reserve_seconds before the wall-clock cap.
    gptq: bool = False
    gptq_categories: list[Category] = field(default_factory=lambda: ["mlp", "attn"])
    gptq_calib_batches: int = 16  # per-rank training micro-batches
    gptq_reserve_seconds: float = 0.0
    gptq_block_size: int = 128
    gptq_damp: float = 0.01  # H += damp * mean(diag H) * I
    gptq_act_order: bool = True
    compressor: Literal["zlib", "zstd", "lzma"] = "zlib"
    compress_level: int = 9
    compress_threads: int = 0  # zstd workers: 0 single-threaded, -1 one per core
