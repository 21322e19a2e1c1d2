"""Smoke mode: shrink any experiment to a CPU-sized model on the demo corpus while keeping every
technique of the file switched on, so a whole stack runs in seconds."""
from __future__ import annotations

from pgolf.trainers.config import TrainConfig

SMOKE_SHAPE = {
    "model.num_layers": 2,
    "model.model_dim": 64,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "data.train_seq_len": 64,
    "data.train_batch_tokens": 64 * 8 * 2,
    "data.grad_accum_steps": 1,
    "data.val_tokens_limit": 8192,
    "schedule.iterations": 40,
    "schedule.warmdown_iters": 10,
    "schedule.warmup_steps": 0,
    "schedule.max_wallclock_seconds": 0.0,
    "eval.val_loss_every": 0,
    "eval.val_batch_size": 64 * 32,
    "eval.train_log_every": 10,
    "run.device": "cpu",
    "run.compile": False,
}


def shrink(cfg: TrainConfig) -> TrainConfig:
    for dotted, value in SMOKE_SHAPE.items():
        section, key = dotted.split(".")
        setattr(getattr(cfg, section), key, value)
    if cfg.quant.compressor == "zstd":
        cfg.quant.compress_level = min(cfg.quant.compress_level, 3)  # level 22 costs ~40 s on CPU
    return cfg


def apply_smoke(exp) -> None:
    shrink(exp.config)
    exp.meta.data = "demo"
    exp.resources.gpus = 0
    exp.resources.cpus = 1
    exp.budget.trial_timeout_seconds = exp.budget.trial_timeout_seconds or 600.0
    for name, overrides in exp.variants.items():
        for dotted in SMOKE_SHAPE:
            overrides.pop(dotted, None)  # variants may not undo the shrink
