"""Smoke mode: shrink any experiment to a CPU-sized model on the demo corpus while keeping every
technique of the file switched on, so a whole stack runs in seconds.

Width, depth, sequence length, batch and steps shrink; everything indexed by layer, length or step is
remapped into the smaller run instead of being dropped:

* depth L -> ceil(L/3) (at least 2): 9 -> 3, 10/11 -> 4. Layer lists count from the end (VE on layers
  9,10 of 11 -> 2,3 of 4), "last N" counts scale with depth (XSA 4 of 11 -> 2 of 4), explicit layer
  indices scale proportionally, and `blocks.N.` in any string field (e.g. fp16-kept tensor names) is
  rewritten the same way as layer lists.
* width 512 -> 128 with 4 heads (GQA group kept): partial RoPE keeps its fraction of the head
  (16/64 -> 8/32), the NTK reference length keeps its ratio to the sequence length (1024/2048 ->
  32/64), BigramHash/VE tables shrink but keep dims >= 64 where the record had them, so OrthoInit
  still reaches their projections; size thresholds (pruning floor, quantizer passthrough) scale with
  width^2 so the same tensors are pruned and quantized; the TTT chunk and the sliding stride keep their
  ratio to the sequence length (stride at least 1/8 of it, to bound the CPU cost); phased TTT's LoRA
  rank keeps its fraction of the width and its batches hold at most 4 documents.
* steps: the records run ~7,000 steps in 600 s; warmdown, momentum warm-up, EMA horizon, EMA start,
  the SWA period and the GPTQ calibration batches keep their fraction of that run. Depth-recurrence
  and parallel-residual start layers scale like other explicit layer indices.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re

from pgolf.trainers.config import TrainConfig, set_field
from pgolf.trainers.config.data import variant_for

SMOKE_SHAPE = {
    "model.model_dim": 128,
    "model.num_heads": 4,
    "data.train_seq_len": 64,
    "data.train_batch_tokens": 64 * 16,
    "data.grad_accum_steps": 1,
    "data.val_tokens_limit": 8192,
    "schedule.iterations": 60,
    "schedule.warmup_steps": 0,
    "schedule.max_wallclock_seconds": 0.0,
    "eval.val_loss_every": 0,
    "eval.val_batch_size": 64 * 32,
    "eval.train_log_every": 10,
    "run.device": "cpu",
    "run.compile": False,
    "run.threads": 1,  # tiny matmuls: a second thread mostly spins, and oversubscribes shared CPUs
}
REFERENCE_STEPS = 7000  # steps of a 600 s record run on 8xH100 (techniques.md §4.2: 5,200-7,400)
MAX_TABLE_DIM = 64  # BigramHash / VE widths in smoke: OrthoInit needs both dims >= 64

# Layer-indexed fields of other sections register here (only applied where the field exists).
LAYER_COUNT_FIELDS = ("model.xsa_last_n", "ttt.freeze_blocks")  # "first/last N layers"
LAYER_LIST_FIELDS = ("model.ve_layers", "quant.late_k_fp16_layers")  # layer lists, mapped from the end (< 0 kept)
LAYER_INDEX_FIELDS = ("model.backout_layer", "model.loop_start", "model.loop_end", "model.parallel_start")  # one explicit layer (-1 = off/automatic, kept)
# Token counts tied to the sequence length keep their ratio to it (floor: the given fraction of a sequence).
SEQ_SCALED_FIELDS = {"ttt.chunk_tokens": 1.0, "eval.sliding_stride": 1 / 8}
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.")


def smoke_layers(num_layers: int) -> int:
    return max(2, math.ceil(num_layers / 3))


def _get(cfg: TrainConfig, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key, None)


def _set(cfg: TrainConfig, dotted: str, value) -> None:
    section, key = dotted.split(".")
    setattr(getattr(cfg, section), key, value)


def _from_end(i: int, old: int, new: int) -> int:
    return min(max(new - (old - i), 0), new - 1)


def _remap_layers(cfg: TrainConfig, old: int, new: int) -> None:
    for dotted in LAYER_COUNT_FIELDS:
        n = _get(cfg, dotted)
        if isinstance(n, int) and n > 0:
            _set(cfg, dotted, min(new, math.ceil(n * new / old)))
    for dotted in LAYER_LIST_FIELDS:
        layers = _get(cfg, dotted)
        if layers:
            _set(cfg, dotted, sorted({i if i < 0 else _from_end(i, old, new) for i in layers}))
    for dotted in LAYER_INDEX_FIELDS:
        i = _get(cfg, dotted)
        if isinstance(i, int) and i >= 0:
            _set(cfg, dotted, min(i * new // old, new - 1))
    for section in dataclasses.fields(cfg):
        sec = getattr(cfg, section.name)
        for f in dataclasses.fields(sec):
            value = getattr(sec, f.name)
            sub = lambda m: f"blocks.{_from_end(int(m.group(1)), old, new)}."  # noqa: E731
            if isinstance(value, str) and _BLOCK_NAME.search(value):
                setattr(sec, f.name, _BLOCK_NAME.sub(sub, value))
            elif isinstance(value, list) and any(isinstance(v, str) and _BLOCK_NAME.search(v) for v in value):
                setattr(sec, f.name, list(dict.fromkeys(_BLOCK_NAME.sub(sub, v) if isinstance(v, str) else v
                                                        for v in value)))


def _steps(n: int, iters: int) -> int:
    return round(n * iters / REFERENCE_STEPS)


def shrink(cfg: TrainConfig) -> TrainConfig:
    m, sched, avg = cfg.model, cfg.schedule, cfg.avg
    old_layers, old_dim, old_heads = m.num_layers, m.model_dim, m.num_heads
    old_head_dim, old_seq = old_dim // old_heads, cfg.data.train_seq_len
    old_warmdown = sched.warmdown_iters
    for dotted, value in SMOKE_SHAPE.items():
        _set(cfg, dotted, value)
    # a smoke shape that changes the vocab keeps the tokenization (CaseOps stays CaseOps)
    cfg.data.variant = variant_for(m.vocab_size, cfg.data.caseops) or cfg.data.variant
    iters = sched.iterations

    # ---- depth and width ----
    m.num_layers = smoke_layers(old_layers)
    _remap_layers(cfg, old_layers, m.num_layers)
    m.num_kv_heads = max(1, m.num_heads * m.num_kv_heads // old_heads)
    head_dim = m.model_dim // m.num_heads
    if m.rope_dims:
        m.rope_dims = max(2, 2 * round(m.rope_dims * head_dim / old_head_dim / 2))
    if m.rope_ntk_ref_len > 0:
        m.rope_ntk_ref_len = max(1, round(m.rope_ntk_ref_len * cfg.data.train_seq_len / old_seq))
    seq = cfg.data.train_seq_len
    for dotted, floor in SEQ_SCALED_FIELDS.items():
        n = _get(cfg, dotted)
        if isinstance(n, int) and n > 0:
            _set(cfg, dotted, max(round(n * seq / old_seq), max(1, int(seq * floor))))
    m.bigram_buckets = max(16, m.bigram_buckets // 8)
    m.bigram_dim = min(m.bigram_dim, MAX_TABLE_DIM)
    m.ve_dim = min(m.ve_dim, MAX_TABLE_DIM)
    m.smear_window = min(m.smear_window, m.model_dim)
    m.attn_gate_window = min(m.attn_gate_window, m.model_dim)
    area = (m.model_dim / old_dim) ** 2  # matrices shrink with width^2: size thresholds follow
    avg.prune_min_numel = max(1, int(avg.prune_min_numel * area))
    if getattr(cfg.quant, "passthrough_max_numel", 0) > 0:
        cfg.quant.passthrough_max_numel = max(1, int(cfg.quant.passthrough_max_numel * area))
    t = cfg.ttt
    if t.mode == "phased":
        # adapters keep their fraction of the width (and alpha/rank); batches of at most 4 documents, so
        # the tens of documents of the smoke split make several rounds and the global phases run
        rank = max(1, round(t.lora_rank * m.model_dim / old_dim))
        t.lora_alpha, t.lora_rank = t.lora_alpha * rank / t.lora_rank, rank
        t.lora_batch_docs = min(t.lora_batch_docs, 4)

    # ---- steps ----
    if old_warmdown > 0:
        sched.warmdown_iters = max(1, round(iters * min(1.0, old_warmdown / REFERENCE_STEPS)))
    cfg.optim.muon_momentum_warmup_steps = _steps(cfg.optim.muon_momentum_warmup_steps, iters)
    if avg.ema_decay > 0:
        # Same horizon 1/(1-d) as a fraction of the run; capped so EMA still averages something.
        avg.ema_decay = min(max(1.0 - (1.0 - avg.ema_decay) * REFERENCE_STEPS / iters, 0.5), 0.99)
        avg.ema_start_step = _steps(avg.ema_start_step, iters)
    if avg.swa_every > 0:
        avg.swa_every = max(1, _steps(avg.swa_every, iters))
    # GPTQ calibration reads training batches: it keeps its share of the run's data (64 -> 2 batches).
    cfg.quant.gptq_calib_batches = min(cfg.quant.gptq_calib_batches, max(2, _steps(cfg.quant.gptq_calib_batches, iters)))

    if cfg.quant.compressor == "zstd":
        cfg.quant.compress_level = min(cfg.quant.compress_level, 3)  # level 22 costs ~40 s on CPU
    return cfg


def _diff(a: TrainConfig, b: TrainConfig) -> dict:
    da, db = a.to_dict(), b.to_dict()
    return {f"{s}.{k}": v for s, sec in db.items() for k, v in sec.items() if da[s][k] != v}


def apply_smoke(exp) -> None:
    """Shrink the base config and re-express each variant as its difference from the shrunk base,
    so variants keep their techniques (and their own depth-dependent remaps) but cannot undo the shrink."""
    base = copy.deepcopy(exp.config)
    shrunk = shrink(copy.deepcopy(base))
    for name, overrides in exp.variants.items():
        vcfg = copy.deepcopy(base)
        for dotted, value in overrides.items():
            set_field(vcfg, dotted, value, source=f"{exp.path} [variants.{name}]")
        exp.variants[name] = _diff(shrunk, shrink(vcfg))
    exp.config = shrunk
    exp.meta.data = "demo"
    exp.resources.gpus = 0
    exp.resources.cpus = 1
    exp.budget.trial_timeout_seconds = exp.budget.trial_timeout_seconds or 600.0
