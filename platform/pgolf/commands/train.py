"""pgolf train EXPERIMENT.toml [--seed N] [--set k=v] [--smoke]"""
from __future__ import annotations

import os
import subprocess
import sys

from pgolf.trainers.contract import (ARTIFACT_BYTES, EVAL_SECONDS, FINAL_BPB, FINAL_LOSS, HEADROOM_BYTES,
                                     RESULT_FILE, TOKENS_PER_BYTE, TRAIN_SECONDS)


def add_arguments(p) -> None:
    p.add_argument("experiment", help="experiment TOML file")
    p.add_argument("--seed", type=int, default=None, help="default: the first seed of the file")
    p.add_argument("--variant", default=None, help="a [variants.NAME] of the file (default: the base config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. config.optim.matrix_lr=0.02 or experiment.seeds=[1,2]")
    p.add_argument("--smoke", action="store_true", help="shrink to a CPU-sized model on the demo data")
    p.add_argument("--run-dir", default=None, help="default: runs/<experiment>/<variant>-s<seed>-<time>")
    p.add_argument("--data-dir", default=None, help="data root (default: $PGOLF_DATA_DIR or ./data)")


def run(args) -> int:
    from pgolf.experiment import load_experiment
    from pgolf.launch import default_run_dir, prepare_run, trainer_command

    exp = load_experiment(args.experiment, overrides=args.set, smoke=args.smoke)
    seed = exp.meta.seeds[0] if args.seed is None else args.seed
    variant = args.variant or exp.meta.name
    run_dir = args.run_dir or default_run_dir(exp, variant, seed)
    cfg, cfg_path = prepare_run(exp, args.variant, seed, run_dir, args.data_dir)
    print(f"pgolf train: {exp.meta.name} variant={variant} seed={seed} run_dir={cfg.run.run_dir}", flush=True)
    from pgolf.trainer_process import load_json
    from pgolf.ttt_audit import audit_ttt, verdict_line

    if exp.resources.gpus > 1:
        rc = subprocess.call(trainer_command(cfg_path, exp.resources.gpus))
        line = verdict_line(audit_ttt(load_json(os.path.join(cfg.run.run_dir, RESULT_FILE)), cfg.run.run_dir, cfg))
        if line:
            print(line)
        return rc
    from pgolf.trainers.train import RunFailure, run_training

    try:
        result = run_training(cfg)
    except RunFailure as exc:
        print(f"pgolf train: {exc}", file=sys.stderr)
        # an over-budget run wrote its result: its trace is still judged
        audit_ttt(load_json(os.path.join(cfg.run.run_dir, RESULT_FILE)), cfg.run.run_dir, cfg)
        return exc.code
    result = audit_ttt(result, cfg.run.run_dir, cfg)
    print("\nfinal metrics:")
    for key in (FINAL_LOSS, FINAL_BPB, "prequant/val_bpb", "quant/val_bpb", ARTIFACT_BYTES,
                "artifact/model_bytes", "artifact/code_bytes", HEADROOM_BYTES, TOKENS_PER_BYTE,
                "steps", TRAIN_SECONDS, EVAL_SECONDS, "train/tokens_per_s"):
        if key in result:
            v = result[key]
            print(f"  {key:24s} {v:,}" if isinstance(v, int) else f"  {key:24s} {v:.6g}")
    line = verdict_line(result)
    if line:
        print(line)
    return 0
