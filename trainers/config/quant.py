"""Post-training quantization and compression of the counted model blob. Baseline: int8 + zlib-9."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class QuantConfig:
    scheme: str = "int8"  # per-row symmetric int8 with percentile clip (baseline)
    int8_clip_percentile: float = 99.99984
    passthrough_max_numel: int = 65_536  # tensors this small are stored as fp16 (fp32 if control)
    compressor: str = "zlib"  # zlib | zstd | lzma
    compress_level: int = 9
