"""Post-training quantization and compression of the counted model blob. Baseline: int8 + zlib-9.

Every float tensor falls into one of these classes, checked in this order (techniques.md 3.22):
non-float -> raw; control pattern -> fp32; numel <= passthrough_max_numel -> fp16; name in the fp16
keep-list -> fp16; else its category's integer format. With control_size_first the size check comes
before the control patterns (the records' order). Categories come from the name: tok_emb/lm_head
-> embed, bigram -> bigram, .mlp. -> mlp, .attn. -> attn, anything else -> other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from ._base import choices, need

# Formats a category may use. "int6" is the records' [-32,31] grid, "int6_sym" GPTQ-lite's [-31,31].
Format = Literal["int8", "int7", "int6", "int6_sym", "int5", "int4", "fp16"]
Category = Literal["embed", "mlp", "attn", "bigram", "other"]
Compressor = Literal["zlib", "zstd", "lzma", "brotli"]
FORMATS, CATEGORIES, COMPRESSORS = get_args(Format), get_args(Category), get_args(Compressor)


@dataclass(kw_only=True)
class QuantConfig:
    def validate(self) -> None:
        choices(self, "quant")
        need(re.fullmatch(r"[A-Za-z0-9_\-]+", self.scheme) is not None,
             f"quant.scheme = {self.scheme!r}: a file-name label of letters, digits, '_' or '-'")
        need(bool(self.clip_percentiles) and all(0.0 < p <= 1.0 for p in self.clip_percentiles),
             f"quant.clip_percentiles must be fractions in (0, 1], got {self.clip_percentiles}")
        need(0.0 < self.int8_clip_percentile <= 100.0,
             f"quant.int8_clip_percentile must be in (0, 100], got {self.int8_clip_percentile}")
        need(self.gptq_reserve_seconds >= 0 and self.gptq_calib_batches >= 0 and self.gptq_block_size >= 1,
             "quant.gptq_reserve_seconds / gptq_calib_batches must be >= 0 and gptq_block_size >= 1")
        need(self.gptq_selfgen_seqs >= 1 and self.gptq_selfgen_batch >= 1 and self.gptq_selfgen_temp > 0,
             f"quant.gptq_selfgen_seqs / gptq_selfgen_batch must be >= 1 and gptq_selfgen_temp > 0, got "
             f"{self.gptq_selfgen_seqs} / {self.gptq_selfgen_batch} / {self.gptq_selfgen_temp}")
        for k, v in vars(self).items():
            need(not (k.startswith("scale_floor") and v != v), f"quant.{k} is NaN: use a number (<0 = 1/Q, 0 = none, >0 absolute)")
        need(self.lqer_rank >= 0 and (not self.lqer_rank or (self.lqer_top_k >= 1 and self.lqer_group >= 1
                                                              and 2 <= self.lqer_factor_bits <= 8)),
             f"quant.lqer_*: rank >= 0 (0 = off), top_k >= 1, group >= 1, factor_bits in 2..8; got rank "
             f"{self.lqer_rank}, top_k {self.lqer_top_k}, group {self.lqer_group}, bits {self.lqer_factor_bits}")

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
    # Row-scale floor s >= floor: <0 means 1/Q of the format, 0 none, >0 absolute. The int8 rule floors
    # at 1/127 everywhere; the int5/int6 rule at 1/31 in #198..#691, but #162/#180/#264/#366 floor at
    # 1e-12 and clamp the fp16 scale at fp16 tiny, which is exactly a 2^-14 floor (6.103515625e-05).
    # A per-format value (None = scale_floor) overrides the global one.
    scale_floor: float = -1.0
    scale_floor_int8: float | None = None
    scale_floor_int7: float | None = None
    scale_floor_int6: float | None = None
    scale_floor_int6_sym: float | None = None
    scale_floor_int5: float | None = None
    scale_floor_int4: float | None = None
    # int8 percentile rule: round w / s with the fp32 scale, then store s fp16 (baseline and records);
    # "fp16" rounds with the stored fp16 scale (pgolf before #18: up to ~0.5% of codes move by one).
    int8_round_scale: Literal["fp32", "fp16"] = "fp32"
    # Small control tensors: the baseline keeps them fp32 (control patterns checked first); every
    # record's mixed quantizer checks size first, so they ship fp16 (#162..#691).
    control_size_first: bool = False
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
    # Calibration inputs: "train" batches (inside the training budget, above) or "self_gen" (#1019):
    # gptq_selfgen_seqs sequences of train_seq_len tokens sampled from the trained model at temperature
    # gptq_selfgen_temp, split over the ranks; no data is read, so no reserve is needed.
    gptq_calib: Literal["train", "self_gen"] = "train"
    gptq_selfgen_seqs: int = 64
    gptq_selfgen_temp: float = 0.8
    gptq_selfgen_batch: int = 8
    gptq_block_size: int = 128
    gptq_damp: float = 0.01  # H += damp * mean(diag H) * I
    gptq_act_order: bool = True
    # With several clip candidates (clip_search): pick by the Hessian-weighted output error (default) or
    # by the plain weight MSE, as #1019 and #1218 do.
    gptq_pick: Literal["hessian", "mse"] = "hessian"
    compressor: Compressor = "zlib"  # brotli quality = compress_level (0..11)
    compress_level: int = 9
    # Blob layout. "state" is the records' torch.save order (state_dict order, codes then scales),
    # "sorted" by name (pgolf's old order; about the same size, RESULTS.md), "grouped" codes of one
    # category/format together. byte_shuffle stores byte k of every multi-byte element together.
    # "smallest": all three, compressed, the smallest kept (3x the compress time; never worse than "state").
    layout: Literal["state", "sorted", "grouped", "smallest"] = "state"
    byte_shuffle: bool = False
    compress_threads: int = 0  # zstd workers: 0 single-threaded, -1 one per core
    # LQER (#1797/#1855, trainers/lqer.py): rank-r correction of the quantization error on the top_k int
    # matrices by error norm; 0 = off; rank 4, top 3, asymmetric int2 A / int4 B groups of 64 in #1855.
    lqer_rank: int = 0
    lqer_top_k: int = 3
    lqer_asym: bool = True
    lqer_group: int = 64
    lqer_factor_bits: int = 4  # symmetric per-row factor bits (lqer_asym off, or B not a multiple of the group)
    # Attention output gates (`*.attn_gate_w`) as int8 rows, scale |row|max/127 fp16 (#1736 GATED_ATTN_QUANT_GATE)
    gate_int8_rows: bool = False
