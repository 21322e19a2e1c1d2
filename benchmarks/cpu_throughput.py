"""Training throughput of the smoke model (tokens/s), on CPU and, when present, on CUDA.

    python benchmarks/cpu_throughput.py [--steps 30] [--threads 1,2]

Random tokens (throughput does not depend on the data). Prints one row per device/thread count;
rows measured in the same run are comparable, rows from different runs on this shared VM are not
(timings vary 3-10x run to run).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config():
    from pgolf.experiment import load_experiment
    return load_experiment(os.path.join(ROOT, "experiments", "smoke.toml")).resolved()


def measure(device: torch.device, steps: int, threads: int) -> tuple[float, float]:
    from pgolf.trainers.model import GPT, prepare_for_device
    from pgolf.trainers.optim import build_optimizers
    from pgolf.trainers.evaluate import autocast_for

    cfg = smoke_config()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = prepare_for_device(GPT(cfg.model), device)
    opts = build_optimizers(model, cfg.optim)
    bsz = cfg.data.train_batch_tokens // cfg.data.train_seq_len
    x = torch.randint(0, cfg.model.vocab_size, (bsz, cfg.data.train_seq_len), device=device)
    y = torch.randint(0, cfg.model.vocab_size, (bsz, cfg.data.train_seq_len), device=device)

    def step():
        with autocast_for(device):
            loss = model(x, y)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return 1000 * dt, cfg.data.train_batch_tokens / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, cpu_count {os.cpu_count()}, smoke model, "
          f"{smoke_config().data.train_batch_tokens} tokens/step")
    print(f"{'device':8s} {'threads':>7s} {'ms/step':>9s} {'tokens/s':>10s}")
    rows = []
    for n in (int(t) for t in args.threads.split(",")):
        ms, tps = measure(torch.device("cpu"), args.steps, n)
        rows.append(("cpu", n, ms, tps))
    if torch.cuda.is_available():
        ms, tps = measure(torch.device("cuda"), args.steps, 0)
        rows.append(("cuda", 0, ms, tps))
    for dev, n, ms, tps in rows:
        print(f"{dev:8s} {n:7d} {ms:9.1f} {tps:10.0f}")
    base = rows[0][3]
    for dev, n, ms, tps in rows[1:]:
        print(f"ratio {dev}/{n} threads vs cpu/{rows[0][1]} thread: {tps / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
