"""After the training loop: quantize -> serialize -> compress -> write the counted files -> read the
blob back into a fresh model -> score it. Every phase is timed; caps are checked, never hidden."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import serialize
from .bpb import ByteLUTs
from .codebundle import write_code_artifact
from .config import TrainConfig
from .context import Dist, timed
from .evaluate import EvalResult, evaluate
from .events import EventLog
from .model import GPT, prepare_for_device
from .phases import seconds_by_cap
from .quant import dequantize_state_dict, quantize_state_dict


@dataclass
class RunContext:
    cfg: TrainConfig
    ddp: Dist
    device: torch.device
    model: GPT  # the trained (and, where configured, averaged) model
    luts: ByteLUTs
    val_tokens: torch.Tensor
    train_files: list[str]
    phases: dict[str, float]
    log: EventLog
    env: dict
    data_fp: dict
    config_hash: str
    code_version: str
    steps: int
    last_val: EvalResult  # pre-quant evaluation of `model`
    n_params: int
    flops_per_token: float


def write_artifact(ctx: RunContext) -> str:
    """Quantize + serialize + compress the model and write blob and code bundle; returns the blob path."""
    cfg, phases = ctx.cfg, ctx.phases
    state = {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()}
    with timed(phases, "quantize", False):
        qtensors, qmeta = quantize_state_dict(state, cfg.quant)
    with timed(phases, "serialize", False):
        packed = serialize.pack(qtensors, qmeta)
    with timed(phases, "compress", False):
        blob = serialize.compress(packed, cfg.quant.compressor, cfg.quant.compress_level)
    blob_path = os.path.join(cfg.run.run_dir, f"final_model.{cfg.quant.scheme}.{cfg.quant.compressor}.ptz")
    if ctx.ddp.is_main:
        with open(blob_path, "wb") as fh:
            fh.write(blob)
            if cfg.faults.pad_artifact_bytes:
                fh.write(b"\0" * cfg.faults.pad_artifact_bytes)
        embedded = cfg.to_dict()
        embedded["run"]["run_dir"] = "."
        write_code_artifact(cfg.run.run_dir, embedded)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return blob_path


def load_artifact(ctx: RunContext, blob_path: str) -> GPT:
    """Read the counted blob from disk into a fresh model (the score is always on this model)."""
    with open(blob_path, "rb") as fh:
        data = fh.read()
    if ctx.cfg.faults.pad_artifact_bytes:
        data = data[: len(data) - ctx.cfg.faults.pad_artifact_bytes]
    tensors, meta = serialize.unpack(serialize.decompress(data))
    fresh = prepare_for_device(GPT(ctx.cfg.model), ctx.device)
    fresh.load_state_dict(dequantize_state_dict(tensors, meta), strict=True)
    return fresh


def finish_run(ctx: RunContext) -> dict:
    cfg, phases, log, ddp = ctx.cfg, ctx.phases, ctx.log, ctx.ddp
    is_cuda = ctx.device.type == "cuda"
    result: dict = {"status": "ok", "config_hash": ctx.config_hash, "code_version": ctx.code_version,
                    "seed": cfg.run.seed, "steps": ctx.steps, "params": ctx.n_params, "env": ctx.env,
                    "data": ctx.data_fp, "ttt": {"mode": cfg.ttt.mode}}
    result["prequant/val_loss"], result["prequant/val_bpb"] = ctx.last_val.val_loss, ctx.last_val.val_bpb

    blob_path = write_artifact(ctx)
    with timed(phases, "dequantize", False):
        fresh = load_artifact(ctx, blob_path)
    with timed(phases, "roundtrip_eval", is_cuda):
        rt = evaluate(fresh, ctx.val_tokens, ctx.luts, seq_len=cfg.data.train_seq_len,
                      batch_tokens=cfg.eval.val_batch_size, device=ctx.device, rank=ddp.rank,
                      world_size=ddp.world_size)
    result["quant/val_loss"], result["quant/val_bpb"] = rt.val_loss, rt.val_bpb
    result["final/val_loss"], result["final/val_bpb"] = rt.val_loss, rt.val_bpb
    result["data/tokens_per_byte"] = rt.tokens / rt.bytes
    result["data/val_scored_tokens"] = rt.tokens
    result["data/val_scored_bytes"] = rt.bytes

    totals = seconds_by_cap(phases)
    result["phases"] = {k: round(v, 4) for k, v in phases.items()}
    for name, seconds in phases.items():
        result[f"time/{name}_s"] = seconds
    result["time/train_s"], result["time/eval_s"] = totals["train"], totals["eval"]
    train_s = max(phases.get("train", 0.0), 1e-9)
    result["train/tokens_per_s"] = ctx.steps * cfg.data.train_batch_tokens / train_s
    result["train/step_ms"] = 1000.0 * train_s / max(ctx.steps, 1)
    if is_cuda:
        peak = 989e12 * ddp.world_size  # H100 SXM dense bf16 datasheet figure (the records' MFU basis)
        result["perf/mfu"] = ctx.flops_per_token * result["train/tokens_per_s"] / peak
        result["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30

    if ddp.is_main:
        code_path = os.path.join(cfg.run.run_dir, "train_gpt.py")
        model_bytes = os.path.getsize(blob_path)
        code_bytes = os.path.getsize(code_path)
        from .codebundle import trainer_sources
        result["artifact/model_bytes"] = model_bytes
        result["artifact/code_bytes"] = code_bytes
        result["artifact/code_raw_bytes"] = sum(len(t.encode()) for t in trainer_sources().values())
        result["artifact/bytes"] = model_bytes + code_bytes
        result["artifact/headroom_bytes"] = cfg.run.artifact_cap_bytes - result["artifact/bytes"]
        result["artifact/blob"] = os.path.basename(blob_path)
        over = []
        if result["artifact/bytes"] > cfg.run.artifact_cap_bytes:
            over.append(f"artifact {result['artifact/bytes']:,} bytes > cap {cfg.run.artifact_cap_bytes:,}")
        if cfg.run.eval_cap_seconds > 0 and totals["eval"] > cfg.run.eval_cap_seconds:
            over.append(f"eval {totals['eval']:.1f}s > cap {cfg.run.eval_cap_seconds:.0f}s")
        if over:
            result["status"] = "over_budget"
            result["status_reason"] = "; ".join(over)
        for name, seconds in phases.items():
            log.event("phase", name=name, seconds=seconds)
        final = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log.event("final", status=result["status"], **final)
        log.log(f"final_roundtrip val_loss:{rt.val_loss:.8f} val_bpb:{rt.val_bpb:.8f}")
        log.log(f"artifact bytes: {result['artifact/bytes']:,} (model {model_bytes:,} + code {code_bytes:,}; "
                f"raw source {result['artifact/code_raw_bytes']:,}) headroom {result['artifact/headroom_bytes']:,}")
        if over:
            log.log("OVER BUDGET: " + result["status_reason"])
        with open(os.path.join(cfg.run.run_dir, "result.json"), "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, sort_keys=True, default=str)
    return result
