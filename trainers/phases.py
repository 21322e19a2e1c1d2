"""Which timed phase counts against which cap. Data, not code scattered through the trainer.

"train": counts against the 600 s training cap (anything that reads training data, including a
calibration pass after the loop). "eval": counts against the 600 s evaluation cap. "report_only":
timed and reported, excluded from both (compile warm-up that is rolled back, pure quantization and
compression that touch no data).
"""
from __future__ import annotations

PHASE_POLICY: dict[str, str] = {
    "warmup": "report_only",
    "train": "train",
    "ema_apply": "train",
    "swa_apply": "train",
    "gptq_calibration": "train",
    "prequant_eval": "report_only",  # diagnostic, not part of the scored pipeline
    "prune": "report_only",  # weights only, no data: like quantization
    "quantize": "report_only",
    "compress": "report_only",
    "serialize": "report_only",
    "dequantize": "eval",
    "roundtrip_eval": "eval",
    "sliding_eval": "eval",
    "ttt": "eval",
}


def cap_of(phase: str) -> str:
    # Unknown phases count as eval: over-reporting beats hiding time from the eval cap.
    return PHASE_POLICY.get(phase, "eval")


def seconds_by_cap(phases: dict[str, float]) -> dict[str, float]:
    totals = {"train": 0.0, "eval": 0.0, "report_only": 0.0}
    for name, seconds in phases.items():
        totals[cap_of(name)] += seconds
    return totals
