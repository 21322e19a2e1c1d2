"""GPU speed of the shared trainer on one GPU (issue 7): training step, stride-64 sliding-window eval
and legal score-first TTT of the pr691 stack (the pr414 training stack) at seq 2048.

    python benchmarks/gpu_bench.py [--stack experiments/stacks/pr691.toml] [--json out.json]
    python benchmarks/gpu_bench.py --tiny          # tiny shapes, a few steps: runs on CPU in seconds

Every figure is measured twice in one process: the fast path (the attention backend `auto` picks,
FA3 -> FA2 -> SDPA, with torch.compile on CUDA) and the reference path (SDPA, eager). The last column
is how many times better the fast path is (time ratio ref/fast, throughput ratio fast/ref).

Definitions (docs/style-and-performance.md B3/B5):
- Training step = 786,432 tokens = 8 micro-steps (grad accumulation) of 48 x 2048 tokens, i.e. each
  micro-step is what one GPU of an 8-GPU node does per step; ms/step / 8 is the node-equivalent step
  time without the gradient all-reduce. The step is the trainer's: bf16 autocast, grad clip, Adam +
  batched Muon, EMA update, the late-QAT branch armed (flag off) as in training.
- MFU = tokens/s x (6N + 12 L d T) / peak, N = all parameters, each looped block once per virtual layer
  (the trainer's `flops_per_token`), peak
  = 989 TFLOP/s (H100 SXM dense bf16 datasheet) and the bf16 matmul rate measured in this run.
- Sliding eval: scored tokens/s of `evaluate_sliding` (stride 64, the stack's batch); projected time
  = 62,021,632 val tokens / (8 GPUs x tokens/s).
- TTT: `run_score_first` as rank 0 of 8 without the process group, i.e. one rank's share of each
  32,768-token chunk (score its windows, then 3 SGD epochs on its sequences); seconds per chunk and
  the projection to all 1,893 chunks. The gradient all-reduce of 8 GPUs is not included.
Random tokens: speed does not depend on the data.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL_TOKENS = 62_021_632  # sp1024 validation split (issue #837 export)
H100_BF16_PEAK = 989e12
NODE_GPUS = 8


# ---- configuration -------------------------------------------------------------------------------


def load_stack(path: str, tiny: bool):
    from pgolf.experiment import load_experiment

    cfg = load_experiment(path if os.path.isabs(path) else os.path.join(ROOT, path)).resolved()
    if tiny:
        m = cfg.model
        m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = 3, 64, 4, 2
        m.xsa_last_n = min(m.xsa_last_n, m.num_layers)
        m.ve_layers = [m.num_layers - 1] if m.ve_dim else []
        m.rope_dims = min(m.rope_dims, 8)
        m.bigram_buckets = min(m.bigram_buckets, 64)
        cfg.data.train_seq_len = 128
        cfg.data.train_batch_tokens = 4 * 128 * 2  # 2 micro-steps of 4 x 128
        cfg.data.grad_accum_steps = 2
        cfg.eval.sliding_batch_seqs = 4
        cfg.ttt.chunk_tokens = NODE_GPUS * 128  # one training sequence per emulated rank
        cfg.ttt.epochs = 1
    else:
        cfg.data.grad_accum_steps = cfg.data.grad_accum_steps or NODE_GPUS  # one GPU does a node's step
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_peak(device: torch.device, tiny: bool) -> tuple[float, str]:
    """Sustained dense matmul FLOP/s: bf16 8192^3 on CUDA, fp32 on CPU (where bf16 is emulated)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else ((256 if tiny else 2048), torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 3 if tiny else 20
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    rate = 2 * n**3 * reps / (time.perf_counter() - t0)
    return rate, f"{str(dtype).replace('torch.', '')} {n}^3 matmul"


def graphs_compiled() -> int:
    """Graphs dynamo has compiled so far: a rise inside a timed section is a recompile being timed."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def synthetic_luts(vocab: int, device: torch.device):
    from pgolf.trainers.bpb import ByteLUTs

    return ByteLUTs(base_bytes=torch.ones(vocab, dtype=torch.int16, device=device),
                    has_leading_space=torch.zeros(vocab, dtype=torch.bool, device=device),
                    is_boundary=torch.zeros(vocab, dtype=torch.bool, device=device))


class Path:
    def __init__(self, label: str, backend, compile_model: bool, compile_backend: str = "inductor"):
        self.label, self.backend, self.compile = label, backend, compile_model
        self.compile_backend = compile_backend

    def describe(self) -> str:
        b = self.backend
        how = "eager"
        if self.compile:
            how = "torch.compile" + ("" if self.compile_backend == "inductor" else f" (backend {self.compile_backend})")
        text = f"{b.name} ({b.version}), {how}"
        return text + (f"  [auto skipped: {'; '.join(b.notes)}]" if b.notes else "")


def build(cfg, device: torch.device, path: Path, *, arm_qat: bool):
    from pgolf.trainers import attention, qat
    from pgolf.trainers.model import GPT, prepare_for_device

    attention.set_active(path.backend)
    if path.compile:
        # Each measurement compiles from scratch, as a run does; without this the graphs of earlier
        # measurements count against dynamo's per-function recompile limit, past which it runs eager.
        torch._dynamo.reset()
    torch.manual_seed(0)
    base = prepare_for_device(GPT(cfg.model), device)
    if arm_qat:
        qat.arm(base)
    model = torch.compile(base, dynamic=False, backend=path.compile_backend) if path.compile else base
    return base, model


# ---- measurements ------------------------------------------------------------------------------


def bench_train(cfg, device: torch.device, path: Path, steps: int, warmup: int, qat_branch: bool = True) -> dict:
    from pgolf.trainers.averaging import WeightAverager
    from pgolf.trainers.model import count_parameters, flops_per_token
    from pgolf.trainers.optim import apply_schedules, build_optimizers
    from pgolf.trainers.train import train_step

    base, model = build(cfg, device, path, arm_qat=qat_branch and cfg.avg.late_qat_threshold > 0)
    optimizers = build_optimizers(base, cfg.optim)
    averager = WeightAverager(base, cfg.avg)
    trainable = [p for p in base.parameters() if p.requires_grad]
    accum, seq = cfg.data.grad_accum_steps, cfg.data.train_seq_len
    micro = cfg.data.train_batch_tokens // (accum * seq)
    gen = torch.Generator(device=device).manual_seed(1)
    data = torch.randint(0, cfg.model.vocab_size, (accum, micro, seq + 1), device=device, generator=gen)
    xs, ys = data[..., :-1].contiguous(), data[..., 1:].contiguous()  # contiguous, as the loader gives them

    def step(i: int) -> None:
        apply_schedules(optimizers, 1.0, cfg.optim.muon_momentum)
        train_step(model, optimizers, trainable, ((xs[k], ys[k]) for k in range(accum)), accum, cfg.optim.grad_clip_norm)
        averager.after_step(i + 1, 1.0)

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    g0 = graphs_compiled()
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step(warmup + i)
        sync(device)
        times.append(time.perf_counter() - t0)
    n_params = count_parameters(base)
    fpt = flops_per_token(cfg.model, n_params, seq, base.blocks)
    ms = 1000 * sorted(times)[len(times) // 2]  # median: robust to a stray slow step
    out = {"ms_per_step": ms, "ms_per_step_mean": 1000 * sum(times) / len(times), "warmup_s": warm_s,
           "recompiles_timed": graphs_compiled() - g0,
           "tokens_per_s": cfg.data.train_batch_tokens / (ms / 1000), "params": n_params, "flops_per_token": fpt,
           "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    del base, model, optimizers, averager, data, xs, ys
    free(device)
    return out


def bench_muon(cfg, device: torch.device, reps: int) -> dict:
    """Muon step alone on the stack's matrices: batched by shape vs one matrix at a time."""
    from pgolf.trainers import attention
    from pgolf.trainers.model import GPT, prepare_for_device
    from pgolf.trainers.muon import Muon
    from pgolf.trainers.optim import split_params

    attention.set_active(attention.SDPA)
    torch.manual_seed(0)
    model = prepare_for_device(GPT(cfg.model), device)
    params = [p for _, p in split_params(model).matrix]
    for p in params:
        p.grad = torch.randn_like(p)
    kw = dict(lr=0.0, momentum=cfg.optim.muon_momentum, backend_steps=cfg.optim.muon_backend_steps,
              weight_decay=cfg.optim.muon_wd, row_norm=cfg.optim.muon_row_norm, ns_coeffs=cfg.optim.muon_ns_coeffs)
    batched = [Muon(params, **kw)]
    single = [Muon([p], **kw) for p in params]
    out = {"matrices": len(params), "shapes": len({tuple(p.shape) for p in params})}
    for name, opts in (("batched_ms", batched), ("per_matrix_ms", single)):
        for _ in range(2):
            for o in opts:
                o.step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            for o in opts:
                o.step()
        sync(device)
        out[name] = 1000 * (time.perf_counter() - t0) / reps
    del model, params, batched, single
    free(device)
    return out


def bench_sliding(cfg, device: torch.device, path: Path, windows: int) -> dict:
    from pgolf.trainers.sliding import evaluate_sliding

    _, model = build(cfg, device, path, arm_qat=False)
    seq, stride = cfg.data.train_seq_len, cfg.eval.sliding_stride or 64
    # n_pos a multiple of the stride: every window is full length, so warm-up compiles every shape.
    n_pos = seq + (windows - 1) * stride
    val = torch.randint(0, cfg.model.vocab_size, (n_pos + 1,), generator=torch.Generator().manual_seed(2))
    luts = synthetic_luts(cfg.model.vocab_size, device)
    kw = dict(seq_len=seq, stride=stride, batch_seqs=cfg.eval.sliding_batch_seqs, device=device)
    t0 = time.perf_counter()
    evaluate_sliding(model, val, luts, **kw)
    sync(device)
    warm_s = time.perf_counter() - t0
    g0 = graphs_compiled()
    t0 = time.perf_counter()
    r = evaluate_sliding(model, val, luts, **kw)
    sync(device)
    dt = time.perf_counter() - t0
    tok_s = r.tokens / dt
    out = {"recompiles_timed": graphs_compiled() - g0, "windows": windows, "scored_tokens": r.tokens, "seconds": dt, "warmup_s": warm_s, "tokens_per_s": tok_s,
           "window_tokens_per_s": windows * seq / dt, "projected_8gpu_s": (VAL_TOKENS - 1) / (NODE_GPUS * tok_s)}
    del model
    free(device)
    return out


def bench_ttt(cfg, device: torch.device, path: Path, chunks: int) -> dict:
    from pgolf.trainers.ttt import run_score_first
    from pgolf.trainers.ttt_trace import TraceWriter

    luts = synthetic_luts(cfg.model.vocab_size, device)
    chunk = cfg.ttt.chunk_tokens
    results = []
    _, model = build(cfg, device, path, arm_qat=False)
    with tempfile.TemporaryDirectory() as tmp:
        # The first run compiles every shape the second meets: with n_pos a multiple of the chunk every
        # window is full length, and chunk 0 / later chunks give the same per-rank batches in both.
        for i, k in enumerate((2, chunks)):
            val = torch.randint(0, cfg.model.vocab_size, (k * chunk + 1,), generator=torch.Generator().manual_seed(3))
            trace = TraceWriter(os.path.join(tmp, f"trace{i}.jsonl"))
            g0 = graphs_compiled()
            t0 = time.perf_counter()
            res = run_score_first(model, val, luts, cfg, device, 0, NODE_GPUS, trace)
            sync(device)
            trace.close()
            results.append((time.perf_counter() - t0, res.info, graphs_compiled() - g0))
    del model
    free(device)
    total, info, recompiles = results[1]
    score_pc = info["score_s"] / info["chunks"]
    train_pc = info["train_s"] / max(info["chunks"] - 1, 1)
    full = math.ceil((VAL_TOKENS - 1) / chunk)
    return {"recompiles_timed": recompiles, "chunks": info["chunks"], "seconds": total, "warmup_s": results[0][0], "score_s_per_chunk": score_pc,
            "train_s_per_chunk": train_pc, "s_per_chunk": score_pc + train_pc, "full_chunks": full,
            "projected_8gpu_s": full * score_pc + (full - 1) * train_pc}


# ---- report --------------------------------------------------------------------------------------


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def report(meta: dict, res: dict) -> str:
    fast, ref = res["fast"], res["ref"]
    lines = [f"pgolf gpu_bench  {meta['date']}  device: {meta['device']}  torch {meta['torch']}",
             f"stack: {meta['stack']}{'  (--tiny shapes)' if meta['tiny'] else ''}  params {meta['params']:,}  "
             f"flops/token {meta['flops_per_token']:.4g} (6N + 12*L*d*T, T={meta['seq_len']})",
             f"fast path: {meta['fast_path']}",
             f"ref path:  {meta['ref_path']}",
             f"matmul peak measured: {meta['peak_flops'] / 1e12:.3f} TFLOP/s ({meta['peak_label']}); "
             f"datasheet basis {H100_BF16_PEAK / 1e12:.0f} TFLOP/s",
             f"train step: {meta['tokens_per_step']:,} tokens = {meta['grad_accum']} x {meta['micro_batch']} x "
             f"{meta['seq_len']}; late-QAT branch {'armed (flag off)' if meta['qat_branch'] else 'not armed'}; "
             f"sliding batch {meta['sliding_batch']} windows; TTT as rank 0 of {meta['ttt_world']}",
             ""]
    rows = []

    def row(name, key, section, spec, better="lower", scale=1.0):
        a = fast.get(section, {}).get(key)
        b = ref.get(section, {}).get(key)
        a = None if a is None else a * scale
        b = None if b is None else b * scale
        ratio = None
        if a and b and better:
            ratio = b / a if better == "lower" else a / b
        rows.append((name, _fmt(a, spec), _fmt(b, spec), _fmt(ratio, ".2f") + ("x" if ratio else "") if better else ""))

    if "train" in fast:
        for side in (fast, ref):
            t = side.get("train")
            if t:
                achieved = t["tokens_per_s"] * meta["flops_per_token"]
                t["mfu_989"] = achieved / H100_BF16_PEAK
                t["mfu_measured_peak"] = achieved / meta["peak_flops"]
                t["node_equiv_ms"] = t["ms_per_step"] / NODE_GPUS
        row("train ms/step (median)", "ms_per_step", "train", ".1f")
        row("train node-equivalent ms/step (/8)", "node_equiv_ms", "train", ".2f")
        row("train tokens/s", "tokens_per_s", "train", ",.0f", "higher")
        row("MFU vs 989 TFLOP/s (%)", "mfu_989", "train", ".1f", "higher", 100)
        row("MFU vs measured peak (%)", "mfu_measured_peak", "train", ".1f", "higher", 100)
        row("peak GPU memory (GiB)", "peak_mem_gib", "train", ".2f")
        row("first steps incl. compile (s)", "warmup_s", "train", ".1f", better=None)
    if "sliding" in fast:
        row("sliding s64 scored tokens/s", "tokens_per_s", "sliding", ",.0f", "higher")
        row("sliding s64 projected 8 GPUs (s)", "projected_8gpu_s", "sliding", ".1f")
    if "ttt" in fast:
        row("TTT s/chunk, one rank's 1/8 share", "s_per_chunk", "ttt", ".4f")
        row("  of which scoring", "score_s_per_chunk", "ttt", ".4f")
        row("  of which SGD epochs", "train_s_per_chunk", "ttt", ".4f")
        row("TTT projected 8 GPUs (s)", "projected_8gpu_s", "ttt", ".1f")
    for section in ("train", "sliding", "ttt"):
        n = fast.get(section, {}).get("recompiles_timed", 0)
        if n:
            rows.append((f"WARNING: {section} compiled {n} new graph(s) inside its timed part", "", "", ""))
    w = max(len(r[0]) for r in rows)
    lines.append(f"{'metric':{w}s} {'fast':>14s} {'ref':>14s} {'fast better by':>15s}")
    lines += [f"{n:{w}s} {a:>14s} {b:>14s} {r:>15s}" for n, a, b, r in rows]
    if "muon" in res:
        m = res["muon"]
        lines.append("")
        lines.append(f"Muon step alone ({m['matrices']} matrices, {m['shapes']} shapes): batched {m['batched_ms']:.2f} ms, "
                     f"one matrix at a time {m['per_matrix_ms']:.2f} ms ({m['per_matrix_ms'] / m['batched_ms']:.2f}x)")
    goals = []
    if "train" in fast:
        goals.append(f"MFU >= 40% (989 basis): {'met' if fast['train']['mfu_989'] >= 0.40 else 'not met'}")
    if "sliding" in fast:
        goals.append(f"sliding <= 60 s: {'met' if fast['sliding']['projected_8gpu_s'] <= 60 else 'not met'}")
    if "ttt" in fast:
        goals.append(f"TTT <= 300 s: {'met' if fast['ttt']['projected_8gpu_s'] <= 300 else 'not met'}")
    if goals and not meta["tiny"]:
        lines += ["", "issue 7 goals (fast path): " + "; ".join(goals)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stack", default="experiments/stacks/pr691.toml")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and few steps (CPU smoke test of this script)")
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--backend", default="auto", help="fast-path attention backend: auto | fa3 | fa2 | sdpa")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile the fast path: auto = on CUDA only (CPU compile is slow, for checks)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the fast path; `eager` runs dynamo alone (a CPU check that "
                         "no timed section recompiles)")
    ap.add_argument("--steps", type=int, default=0, help="timed training steps (default 10, tiny 2)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed training steps first (default 3, tiny 1)")
    ap.add_argument("--sliding-windows", type=int, default=0, help="windows per sliding measurement (default 4096)")
    ap.add_argument("--ttt-chunks", type=int, default=0, help="chunks in the timed TTT run (default 6, tiny 3)")
    ap.add_argument("--sliding-batch", type=int, default=0, help="windows per forward (default: the stack's, 32)")
    ap.add_argument("--no-qat-branch", action="store_true",
                    help="train without the armed late-QAT branch (its fake quant runs every forward while off)")
    ap.add_argument("--only", default="train,muon,sliding,ttt", help="comma list of train,muon,sliding,ttt")
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args(argv)

    from pgolf.trainers import attention
    from pgolf.trainers.model import count_parameters, flops_per_token, GPT

    dev_name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tiny = args.tiny
    cfg = load_stack(args.stack, tiny)
    if args.sliding_batch:
        cfg.eval.sliding_batch_seqs = args.sliding_batch
    steps = args.steps or (2 if tiny else 10)
    warmup = args.warmup or (1 if tiny else 3)
    windows = args.sliding_windows or (24 if tiny else 4096)
    chunks = args.ttt_chunks or (3 if tiny else 6)
    only = set(args.only.split(","))
    head_dim = cfg.model.model_dim // cfg.model.num_heads
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    fast = Path("fast", attention.resolve(args.backend, device, dtype, head_dim),
                args.compile == "on" or (args.compile == "auto" and device.type == "cuda"), args.compile_backend)
    ref = Path("ref", attention.SDPA, False)
    peak, peak_label = matmul_peak(device, tiny)
    n_params = count_parameters(GPT(cfg.model))
    accum = cfg.data.grad_accum_steps
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "tiny": tiny, "stack": args.stack,
            "device": (torch.cuda.get_device_name(device) + " (cc %d.%d)" % torch.cuda.get_device_capability(device)
                       if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"),
            "torch": torch.__version__, "params": n_params, "seq_len": cfg.data.train_seq_len,
            "flops_per_token": flops_per_token(cfg.model, n_params, cfg.data.train_seq_len),
            "fast_path": fast.describe(), "ref_path": ref.describe(), "peak_flops": peak, "peak_label": peak_label,
            "tokens_per_step": cfg.data.train_batch_tokens, "grad_accum": accum,
            "qat_branch": not args.no_qat_branch and cfg.avg.late_qat_threshold > 0,
            "sliding_batch": cfg.eval.sliding_batch_seqs, "ttt_world": NODE_GPUS,
            "micro_batch": cfg.data.train_batch_tokens // (accum * cfg.data.train_seq_len),
            "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else list(argv)))}
    res: dict = {"fast": {}, "ref": {}}
    for path in (fast, ref):
        side = res[path.label]
        if "train" in only:
            side["train"] = bench_train(cfg, device, path, steps, warmup, not args.no_qat_branch)
        if "sliding" in only:
            side["sliding"] = bench_sliding(cfg, device, path, windows)
        if "ttt" in only:
            side["ttt"] = bench_ttt(cfg, device, path, chunks)
    if "muon" in only:
        res["muon"] = bench_muon(cfg, device, 2 if tiny else 10)
    attention.set_active(attention.SDPA)
    text = report(meta, res)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "results": res, "report": text}, fh, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
