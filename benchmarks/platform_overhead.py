"""Platform overhead: the same 3 fixed-step trials run directly with `pgolf train` (one after another,
no Ray, no MLflow) and through `pgolf validate` (local Ray + Tune + MLflow child runs + aggregation).

    python benchmarks/platform_overhead.py [--iterations 50] [--seeds 1 2 3] [--json out.json]

Both paths are timed as fresh processes, as a user runs them: `pgolf validate` pays Ray start-up,
MLflow store creation and the per-trial actor, run and artifact logging. It runs once with one trial at
a time (the overhead ratio proper) and once with the default concurrency (what a user gets on this
machine). The demo data is built before timing starts. Steps are fixed (no wall-clock cap), so both
paths do exactly the same training work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "smoke.toml")
PGOLF = [sys.executable, "-m", "pgolf.cli"]


def timed(cmd: list[str], cwd: str, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50, help="fixed training steps per trial")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="pgolf_overhead_")
    data = os.path.join(work, "data")
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),
               RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PGOLF_DATA_DIR=data)
    env.pop("PGOLF_TRACKING_URI", None)
    sets = ["--set", f"config.schedule.iterations={args.iterations}",
            "--set", f"config.schedule.warmdown_iters={max(args.iterations // 4, 1)}"]
    from pgolf.datasets import ensure_demo

    ensure_demo(os.path.join(data, "demo"), progress=None)

    direct = 0.0
    for seed in args.seeds:
        direct += timed([*PGOLF, "train", SMOKE, "--seed", str(seed), *sets,
                         "--run-dir", os.path.join(work, "direct", f"s{seed}")], work, env)
    seeds = ["--seeds", *map(str, args.seeds)]
    serial = timed([*PGOLF, "validate", SMOKE, *seeds, *sets, "--max-concurrent", "1",
                    "--tracking-uri", f"sqlite:///{work}/serial.db", "--runs-dir", os.path.join(work, "serial")], work, env)
    default = timed([*PGOLF, "validate", SMOKE, *seeds, *sets,
                     "--tracking-uri", f"sqlite:///{work}/default.db", "--runs-dir", os.path.join(work, "default")], work, env)

    n = len(args.seeds)
    out = {
        "trials": n, "iterations": args.iterations, "cpus": os.cpu_count(),
        "direct_train_s": round(direct, 1),
        "validate_one_at_a_time_s": round(serial, 1),
        "validate_default_concurrency_s": round(default, 1),
        "overhead_ratio": round(serial / direct, 3),
        "overhead_per_trial_s": round((serial - direct) / n, 1),
        "default_concurrency_ratio": round(default / direct, 3),
    }
    print(f"{n} trials x {args.iterations} steps of experiments/smoke.toml on {os.cpu_count()} CPUs")
    print(f"  pgolf train, one after another        {direct:7.1f} s")
    print(f"  pgolf validate, 1 trial at a time     {serial:7.1f} s   ratio {out['overhead_ratio']:.2f} "
          f"({out['overhead_per_trial_s']:+.1f} s per trial)")
    print(f"  pgolf validate, default concurrency   {default:7.1f} s   ratio {out['default_concurrency_ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
