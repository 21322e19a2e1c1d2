"""The training run: data -> model -> Muon/Adam loop under the wall-clock cap -> quantized artifact
-> round-trip evaluation. Writes the run directory of the trainer contract (design.md):
metrics.jsonl, train.log, the model blob, train_gpt.py (counted code) and result.json.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch

from .bpb import build_byte_luts, check_tokenizer, load_tokenizer
from .codebundle import code_version
from .compiling import compile_model, wants_compile
from .config import ConfigError, TrainConfig, config_hash
from .context import EXIT_BAD_CONFIG, EXIT_BAD_DATA, EXIT_OVER_BUDGET, RunFailure, timed
from .distributed import all_reduce_max as _all_reduce_max
from .distributed import leave_process_group, setup_distributed  # noqa: F401 - leave_process_group re-exported
from .evaluate import autocast_for, evaluate
from .events import EventLog
from .fingerprint import data_fingerprint, environment
from .loader import DistributedTokenLoader, load_validation_tokens
from .sidecar import load_val_bytes, refuse_unused_sidecars
from .shards import ShardError, check_manifest, check_shard_sizes, list_shards
from . import attention, qat
from .averaging import WeightAverager
from .model import GPT, count_parameters, flops_per_token, prepare_for_device
from .prune import magnitude_prune
from .optim import apply_schedules, build_optimizers, lr_scale, muon_momentum, wd_taper
from .recurrence import LoopSwitch, training_frac
from .faults import after_step
from .posttrain import RunContext, finish_run, train_schedule


def train_step(model: torch.nn.Module, optimizers: list, trainable: list, micro_batches, accum: int,
               grad_clip_norm: float) -> torch.Tensor:
    """One optimizer step: `accum` micro-batches (x, y) of gradient accumulation (under DDP the gradient
    sync runs on the last one only), optional global-norm clipping, every optimizer stepped and zeroed.
    Returns the mean loss as a tensor (no host sync here)."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    total = None
    for micro, (x, y) in enumerate(micro_batches):
        if ddp:
            model.require_backward_grad_sync = micro == accum - 1
        with autocast_for(x.device):
            loss = model(x, y)
        (loss / accum).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip_norm)
    for opt in optimizers:
        opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return total / accum


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def average_and_prune(cfg: TrainConfig, model: GPT, averager: WeightAverager, raw_val, phases: dict,
                      log: EventLog, evaluate_fn, is_cuda: bool):
    """End of the loop: EMA/SWA -> magnitude pruning -> pre-quant eval of the model that gets quantized.
    Returns the evaluation the artifact starts from (the loop's last one when nothing changed)."""
    method = "ema" if cfg.avg.ema_decay > 0 else "swa" if cfg.avg.swa_apply else "none"
    with timed(phases, f"{method}_apply", is_cuda) if method != "none" else nullcontext():
        applied = averager.apply()
    info = {"avg/method": applied, "avg/ema_updates": averager.ema_updates, "avg/swa_checkpoints": averager.swa_count}
    if cfg.avg.swa_every > 0 and applied != "swa":
        log.log(f"swa: {averager.swa_count} checkpoints collected, not applied "
                f"({'swa_apply = false' if not cfg.avg.swa_apply else 'fewer than 2'})")
    pruned: dict[str, int] = {}
    if cfg.avg.prune_frac > 0:
        with timed(phases, "prune", is_cuda):
            pruned = magnitude_prune(model, cfg.avg.prune_frac, cfg.avg.prune_min_numel)
        info["prune/zeroed"] = sum(pruned.values())
        info["prune/tensors"] = len(pruned)
    log.event("averaging", **info)
    if applied == "none" and not pruned:
        return raw_val
    with timed(phases, "prequant_eval", is_cuda):
        r = evaluate_fn()
    log.event("prequant", **{"prequant/val_loss": r.val_loss, "prequant/val_bpb": r.val_bpb,
                             "prequant/raw_val_loss": raw_val.val_loss, "prequant/raw_val_bpb": raw_val.val_bpb})
    log.log(f"prequant after {applied}{' + prune' if pruned else ''}: val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f} "
            f"(end of loop: val_loss:{raw_val.val_loss:.4f} val_bpb:{raw_val.val_bpb:.4f})")
    if not math.isfinite(r.val_loss):
        raise RunFailure(f"validation loss after averaging is {r.val_loss}", 1)
    return r


def run_training(cfg: TrainConfig) -> dict:
    """Run one seed end to end. Returns the result dict (also written to result.json on rank 0)."""
    ddp, device = setup_distributed(cfg.run.device)
    cfg.validate(ddp.world_size)
    accum = cfg.data.grad_accum(ddp.world_size)
    loop_schedule = train_schedule(cfg)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    is_cuda = device.type == "cuda"
    try:
        # Resolved before any model is built or compiled; every model of the run reads it, the fresh
        # round-trip model included.
        backend = attention.configure(cfg.run.attention_backend, device, torch.bfloat16 if is_cuda else torch.float32,
                                      cfg.model.model_dim // cfg.model.num_heads)
    except attention.AttentionBackendError as exc:
        raise ConfigError(str(exc)) from None
    compiling = wants_compile(cfg, device)  # also rejects an unknown run.compile_backend up front
    if device.type == "cpu":
        # The public setter imports inductor (seconds per process) for a flag only compiled code reads.
        (torch.use_deterministic_algorithms if compiling else torch._C._set_deterministic_algorithms)(True, warn_only=True)
    run_dir = cfg.run.run_dir
    try:
        log = EventLog(run_dir, enabled=ddp.is_main)
    except OSError as exc:
        why = "is a file" if os.path.isfile(run_dir) else f"{exc.strerror}: {exc.filename}"
        raise RunFailure(f"bad config: run.run_dir {run_dir} cannot hold the run's files ({why}); set RUN_DIR / "
                         "run.run_dir to a writable folder", EXIT_BAD_CONFIG) from None
    phases: dict[str, float] = {}
    version = code_version()
    chash = config_hash(cfg, version)
    env = environment(device, ddp.world_size)
    env["attention_backend"] = backend.name  # runs compare only within one backend (step budget differs)

    log.log("pgolf trainer: resolved config")
    log.log(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    log.log(f"config_hash: {chash}  code_version: {version}")
    log.log("environment: " + json.dumps(env, sort_keys=True))
    log.log(f"attention_backend: {backend.describe()}")
    log.log(f"compile: {cfg.run.compile_backend + ', dynamic=False' if compiling else 'off'}")

    # ---- data -------------------------------------------------------------------------------
    try:
        train_files = list_shards(cfg.data.data_path, "train")
        val_files = list_shards(cfg.data.data_path, "val")
        sp = load_tokenizer(cfg.data.tokenizer_path)
        if int(sp.get_piece_size()) != cfg.model.vocab_size:
            # a smaller tokenizer leaves ids it cannot spell: their bytes count 0 and val_bpb comes out wrong
            raise ShardError(f"tokenizer {cfg.data.tokenizer_path} has {sp.get_piece_size()} pieces but "
                             f"model.vocab_size = {cfg.model.vocab_size}; use the data's tokenizer or set "
                             "model.vocab_size to its piece count")
        check_manifest(cfg.data.data_path, cfg.data.tokenizer_path, cfg.model.vocab_size)
        luts = build_byte_luts(sp, cfg.model.vocab_size, device=device)
        check_tokenizer(sp, luts)
        check_shard_sizes(train_files)
        val_tokens = load_validation_tokens(val_files, cfg.data.train_seq_len, limit=cfg.data.val_tokens_limit,
                                            vocab_size=cfg.model.vocab_size)
        # the first shard is checked now; later ones when the stream reaches them (exit 3 either way):
        # reading all 80 FineWeb shards up front would cost 16 GB of I/O before step 0
        first_train = DistributedTokenLoader(train_files, ddp.rank, ddp.world_size, device, vocab_size=cfg.model.vocab_size)
        # BPB on the original bytes: the sidecar, recounted against the shards (a literal test, so the
        # packer decides it and a plain stack ships no CaseOps code; VARIANTS lists the same two)
        if cfg.data.variant in ("sp1024_caseops", "sp8192_caseops"):
            val_bytes, side = load_val_bytes(val_files, int(val_tokens.numel()), sp, int(sp.bos_id()),
                                             exact=cfg.data.sidecar_recount == "exact")
            luts = dataclasses.replace(luts, val_bytes=val_bytes.to(device))
            log.log(f"caseops: val bytes from the sidecar ({side['documents']} documents recounted: sidecar "
                    f"{side['sidecar_bytes']} bytes, canonical recount {side['recount_bytes']})")
        else:
            refuse_unused_sidecars(val_files)
    except (OSError, ValueError) as exc:
        raise RunFailure(f"bad data: {exc}", EXIT_BAD_DATA) from exc
    if cfg.model.smear_gate == "v3" and int(sp.bos_id()) != cfg.model.bos_id:
        raise RunFailure(f"bad config: model.bos_id = {cfg.model.bos_id} but the tokenizer's BOS id is "
                         f"{int(sp.bos_id())} (SmearGate v3 masks BOS positions)", EXIT_BAD_CONFIG)
    data_fp = data_fingerprint(train_files, val_files, cfg.data.tokenizer_path, int(val_tokens.numel()))
    log.log("data: " + json.dumps(data_fp, sort_keys=True))

    # ---- model ------------------------------------------------------------------------------
    base_model = prepare_for_device(GPT(cfg.model), device)
    n_params = count_parameters(base_model)
    fpt = flops_per_token(cfg.model, n_params, cfg.data.train_seq_len, base_model.blocks)
    log.log(f"model_params: {n_params}  flops_per_token: {fpt:.4g}  world_size: {ddp.world_size}  grad_accum: {accum}")
    loops = LoopSwitch(base_model, cfg.model, loop_schedule)  # before compiling: starts unlooped
    late_qat = cfg.avg.late_qat_threshold > 0
    if late_qat:
        # The fake-quant branch must exist before compiling; its buffer flag flips it later.
        qat.arm(base_model)
    model: torch.nn.Module = compile_model(base_model, cfg, device)
    # Validation runs the compiled graph too (its own no-grad, eval-mode graph; evaluate pads the
    # last batch so it stays one graph), not the eager model: same weights, a fraction of the time.
    eval_model = model
    if ddp.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ddp.local_rank] if is_cuda else None)
    optimizers = build_optimizers(base_model, cfg.optim)
    trainable = [p for p in base_model.parameters() if p.requires_grad]

    def make_loader():
        nonlocal first_train
        if first_train is not None:  # reuse the one the data check read
            made, first_train = first_train, None
            return made
        return DistributedTokenLoader(train_files, ddp.rank, ddp.world_size, device, vocab_size=cfg.model.vocab_size)

    def scheduled_step(loader, step: int, elapsed_ms: float) -> tuple[float, float]:
        scale = lr_scale(step, elapsed_ms, loop_schedule)
        apply_schedules(optimizers, scale, muon_momentum(step, cfg.optim),
                        wd_taper(training_frac(step, elapsed_ms, loop_schedule), cfg.optim))
        return float(train_step(model, optimizers, trainable, _batches(loader), accum, cfg.optim.grad_clip_norm).item()), scale

    def _batches(loader):
        for _ in range(accum):
            try:
                yield loader.next_batch(cfg.data.train_batch_tokens, cfg.data.train_seq_len, accum)
            except ShardError as exc:  # a later shard that fails its checks when the stream reaches it
                raise RunFailure(f"bad data: {exc}", EXIT_BAD_DATA) from exc

    # ---- compile warm-up, rolled back (not an LR warm-up) --------------------------------------
    if cfg.schedule.warmup_steps > 0:
        with timed(phases, "warmup", is_cuda):
            saved_model = copy.deepcopy(base_model.state_dict())
            saved_opts = [copy.deepcopy(o.state_dict()) for o in optimizers]
            loader = make_loader()
            for looping in loops.warmup_plans():
                loops.set(looping)
                for s in range(cfg.schedule.warmup_steps):
                    scheduled_step(loader, s, 0.0)
            loops.set(False)
            base_model.load_state_dict(saved_model)
            for o, st in zip(optimizers, saved_opts):
                o.load_state_dict(st)
            del saved_model, saved_opts
        seed_everything(cfg.run.seed)
        log.log(f"warmup: {cfg.schedule.warmup_steps} steps in {phases['warmup']:.2f}s, state restored")

    # ---- main loop -----------------------------------------------------------------------------
    averager = WeightAverager(base_model, cfg.avg)  # after the rollback: EMA starts from the initial weights
    qat_on = False
    loader = make_loader()
    cap_ms = loop_schedule.max_wallclock_seconds * 1000.0
    train_ms = 0.0
    stop_after: int | None = None
    last_val = None
    step = 0
    # The cap needs one clock for all ranks, so LR, SWA and late-QAT decisions agree across ranks:
    # one all-reduce per step, after it; the next step's schedule reuses that agreed value (nothing
    # but logging runs in between). None after an evaluation, which restarts the clock.
    agreed_ms: float | None = None
    tokens_per_step = cfg.data.train_batch_tokens
    log.event("start", config_hash=chash, params=n_params, flops_per_token=fpt, world_size=ddp.world_size,
              attention_backend=backend.name, attention_backend_detail=backend.describe())
    if is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    while True:
        last_step = step == cfg.schedule.iterations or (stop_after is not None and step >= stop_after)
        if last_step or (cfg.eval.val_loss_every > 0 and step % cfg.eval.val_loss_every == 0):
            if is_cuda:
                torch.cuda.synchronize()
            train_ms += 1000.0 * (time.perf_counter() - t0)
            r = evaluate(eval_model, val_tokens, luts, seq_len=cfg.data.train_seq_len,
                         batch_tokens=cfg.eval.val_batch_size, device=device, rank=ddp.rank, world_size=ddp.world_size)
            last_val = r
            log.event("val", step=step, **{"val/loss": r.val_loss, "val/bpb": r.val_bpb, "time/train_ms": train_ms})
            log.log(f"step:{step}/{cfg.schedule.iterations} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f} "
                    f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
            if not math.isfinite(r.val_loss):
                raise RunFailure(f"validation loss is {r.val_loss} at step {step}", 1)
            if is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            agreed_ms = None
        if last_step:
            break
        if agreed_ms is not None:
            elapsed_ms = agreed_ms
        else:
            elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
            if cap_ms > 0:
                elapsed_ms = _all_reduce_max(elapsed_ms, device)
        if loops.due(step, elapsed_ms):
            log.event("layer_loop", step=step)
            log.log(f"layer_loop:enabled step:{step}")
        t_step = time.perf_counter()
        loss, scale = scheduled_step(loader, step, elapsed_ms)
        step += 1
        averager.after_step(step, scale)
        if late_qat and not qat_on and scale < cfg.avg.late_qat_threshold:
            qat.set_enabled(base_model, True)
            qat_on = True
            log.event("late_qat", step=step, lr_scale=scale)
            log.log(f"late_qat:enabled step:{step} scale:{scale:.4f}")
        after_step(step, cfg.faults)
        if not math.isfinite(loss):
            raise RunFailure(f"training loss is {loss} at step {step}", 1)
        every = cfg.eval.train_log_every
        if every > 0 and (step <= 10 or step % every == 0):
            if is_cuda:
                torch.cuda.synchronize()
            step_ms = 1000.0 * (time.perf_counter() - t_step)
            elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
            tok_s = tokens_per_step / max(step_ms / 1000.0, 1e-9)
            log.event("train", step=step, **{"train/loss": loss, "train/step_ms": step_ms, "train/tokens_per_s": tok_s,
                                             "lr_scale": lr_scale(step, elapsed_ms, loop_schedule)})
            log.log(f"step:{step}/{cfg.schedule.iterations} train_loss:{loss:.4f} train_time:{elapsed_ms:.0f}ms "
                    f"step_avg:{elapsed_ms / step:.2f}ms")
        if cap_ms > 0:
            agreed_ms = _all_reduce_max(train_ms + 1000.0 * (time.perf_counter() - t0), device)
            if stop_after is None and agreed_ms >= cap_ms:
                stop_after = step
                log.log(f"stopping_early: wallclock_cap train_time:{agreed_ms:.0f}ms step:{step}")
    phases["train"] = train_ms / 1000.0
    loops.finish()
    steps_done = step
    last_val = average_and_prune(cfg, base_model, averager, last_val, phases, log,
                                 lambda: evaluate(eval_model, val_tokens, luts, seq_len=cfg.data.train_seq_len,
                                                  batch_tokens=cfg.eval.val_batch_size, device=device,
                                                  rank=ddp.rank, world_size=ddp.world_size), is_cuda)

    ctx = RunContext(cfg=cfg, ddp=ddp, device=device, model=base_model, luts=luts, val_tokens=val_tokens,
                     train_files=train_files, phases=phases, log=log, env=env, data_fp=data_fp, config_hash=chash,
                     code_version=version, steps=steps_done, last_val=last_val, n_params=n_params,
                     flops_per_token=fpt, train_loader=loader)
    try:
        result = finish_run(ctx)
    finally:
        log.close()
    if result.get("status") == "over_budget":
        raise RunFailure("over budget: " + result["status_reason"], EXIT_OVER_BUDGET)
    return result
