"""What the trainer and the platform agree on, torch-free: exit codes, run-directory file names, event
kinds, result keys, and which timed phase counts against which cap. The platform imports this module
instead of repeating its strings; the trainer writes by it."""
from __future__ import annotations

# ---- exit codes of `python -m pgolf.trainers.gpt` (and of the counted train_gpt.py)
EXIT_OK, EXIT_CRASH, EXIT_BAD_CONFIG, EXIT_BAD_DATA, EXIT_OVER_BUDGET = 0, 1, 2, 3, 4
EXIT_REASONS = {EXIT_CRASH: "trainer crashed", EXIT_BAD_CONFIG: "bad config", EXIT_BAD_DATA: "bad data",
                EXIT_OVER_BUDGET: "over budget"}

# ---- run directory
RESOLVED_CONFIG = "resolved_config.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_LOG = "train.log"
RESULT_FILE = "result.json"
TTT_TRACE = "ttt_trace.jsonl"
CODE_FILE = "train_gpt.py"

# ---- metrics.jsonl event kinds
EVENT_START, EVENT_TRAIN, EVENT_VAL, EVENT_FINAL = "start", "train", "val", "final"

# ---- result keys (also Tune report keys and MLflow metric names)
FINAL_BPB, FINAL_LOSS = "final/val_bpb", "final/val_loss"
VAL_BPB, VAL_LOSS, TRAIN_LOSS = "val/bpb", "val/loss", "train/loss"
ARTIFACT_BYTES, HEADROOM_BYTES = "artifact/bytes", "artifact/headroom_bytes"
TRAIN_SECONDS, EVAL_SECONDS = "time/train_s", "time/eval_s"
TOKENS_PER_BYTE, STEPS = "data/tokens_per_byte", "steps"
SCORE_METRICS = (FINAL_BPB, FINAL_LOSS)  # what `[experiment] metric` may name; lower is better

# ---- timed phase -> cap
# "train": counts against the 600 s training cap (anything that reads training data, including a
# calibration pass after the loop). "eval": counts against the 600 s evaluation cap. "report_only":
# timed and reported, excluded from both (compile warm-up that is rolled back, pure quantization and
# compression that touch no data).
CAPS = ("train", "eval", "report_only")
PHASE_POLICY: dict[str, str] = {
    "warmup": "report_only",
    "train": "train",
    "ema_apply": "train",
    "swa_apply": "train",
    "gptq_calibration": "train",
    "gptq_selfgen": "report_only",  # #1019: tokens sampled from the model itself, no data read
    "prequant_eval": "report_only",  # diagnostic, not part of the scored pipeline
    "prune": "report_only",  # weights only, no data: like quantization
    "quantize": "report_only",
    "compress": "report_only",
    "serialize": "report_only",
    "dequantize": "eval",
    "roundtrip_eval": "eval",
    "sliding_eval": "eval",
    "ttt": "eval",
    "ttt_verify": "report_only",  # the platform's check of the TTT trace, not something a submission runs
}
UNKNOWN_PHASE_CAP = "eval"  # over-reporting beats hiding time from the eval cap


def seconds_by_cap(phases: dict[str, float], policy: dict[str, str] = PHASE_POLICY,
                   unknown: str = UNKNOWN_PHASE_CAP) -> dict[str, float]:
    """Seconds per cap; the one phase -> cap sum (the trainer's and compliance's)."""
    totals = dict.fromkeys(CAPS, 0.0)
    for name, seconds in phases.items():
        totals[policy.get(name, unknown)] += seconds
    return totals
