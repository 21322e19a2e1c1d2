"""Smoke-scale comparison of seed stacks on the demo corpus (docs/stacks.md).

Runs `pgolf train experiments/stacks/<stack>.toml --smoke --seed S` for every stack and seed (the same
CPU shape and step count for all), reads each run's result.json and prints mean and sample std
(ddof 1) of the BPB after each stage. Smoke numbers test that the techniques run and interact; they
say nothing about which stack wins at full scale.

    .venv/bin/python benchmarks/stack_compare.py [--stacks baseline pr414 pr691] [--seeds 1 2 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("prequant/val_bpb", "quant/val_bpb", "final/val_bpb")


def run_one(stack: str, seed: int, out_dir: str, data_dir: str | None, sets: list[str] = ()) -> dict:
    run_dir = os.path.join(out_dir, f"{stack}-s{seed}")
    cmd = [sys.executable, "-m", "pgolf.cli", "train", os.path.join(ROOT, "experiments", "stacks", f"{stack}.toml"),
           "--smoke", "--seed", str(seed), "--run-dir", run_dir]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    for kv in sets:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as fh:
        result = json.load(fh)
    result["wall_s"] = time.perf_counter() - t0
    return result


def fmt(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", nargs="+", default=["baseline", "pr414", "pr691"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "runs", "stack_compare"))
    ap.add_argument("--data-dir", default=None, help="data root holding demo/ (default: pgolf's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every run (same budget for all)")
    args = ap.parse_args(argv)

    rows = []
    for stack in args.stacks:
        results = [run_one(stack, seed, args.out_dir, args.data_dir, args.set) for seed in args.seeds]
        for seed, r in zip(args.seeds, results):
            print(f"  {stack} seed {seed}: " + " ".join(f"{m}={r.get(m, float('nan')):.4f}" for m in METRICS)
                  + f" params={r['params']:,} steps={r['steps']} wall={r['wall_s']:.0f}s", flush=True)
        rows.append((stack, results))

    print()
    print(f"smoke mode, demo corpus, seeds {args.seeds}; mean ± sample std (ddof 1) of val_bpb")
    head = f"| {'stack':8} | {'params':>9} | {'steps':>5} | {'pre-quant (after EMA/SWA)':>25} | {'quantized round trip':>20} | {'final (scored)':>16} | final per seed |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for stack, results in rows:
        cols = [fmt([r[m] for r in results if m in r]) for m in METRICS]
        per_seed = ", ".join(f"{r['final/val_bpb']:.4f}" for r in results)
        print(f"| {stack:8} | {results[0]['params']:>9,} | {results[0]['steps']:>5} | {cols[0]:>25} | "
              f"{cols[1]:>20} | {cols[2]:>16} | {per_seed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
