"""Trainer entry point (the torchrun target).

    python -m pgolf.trainers.gpt --config resolved_config.json [--set section.key=value ...]
    torchrun --standalone --nproc_per_node=8 -m pgolf.trainers.gpt --config resolved_config.json

Env overrides in the challenge's style: DATA_PATH, TOKENIZER_PATH, RUN_DIR, SEED.
Exit codes: 0 ok, 1 crashed, 2 bad config, 3 bad data, 4 over budget (one-line reason on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import codebundle
from .config import ConfigError, TrainConfig, parse_set, parse_value, set_field
from .train import EXIT_BAD_CONFIG, RunFailure, leave_process_group, run_training

_ENV_OVERRIDES = {"DATA_PATH": "data.data_path", "TOKENIZER_PATH": "data.tokenizer_path",
                  "RUN_DIR": "run.run_dir", "SEED": "run.seed"}


def load_config(argv: list[str] | None = None, environ: dict | None = None) -> TrainConfig:
    import os
    environ = os.environ if environ is None else environ
    ap = argparse.ArgumentParser(prog="pgolf.trainers.gpt", description="pgolf trainer (the torchrun target)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="resolved_config.json written by pgolf")
    src.add_argument("--config-json", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    if args.config:
        cfg = TrainConfig.from_json(args.config)
    elif args.config_json:
        cfg = TrainConfig.from_dict(json.loads(args.config_json), source="embedded config")
    else:
        cfg = TrainConfig()
    for env_key, dotted in _ENV_OVERRIDES.items():
        if env_key in environ:
            set_field(cfg, dotted, parse_value(environ[env_key]) if dotted == "run.seed" else environ[env_key],
                      source=f"env {env_key}")
    for item in args.set:
        key, value = parse_set(item)
        set_field(cfg, key.removeprefix("config."), value, source="--set")
    if codebundle.PACKED is not None:
        codebundle.check_packed(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(argv)
        result = run_training(cfg)
    except ConfigError as exc:
        print(f"pgolf trainer: bad config: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except RunFailure as exc:
        print(f"pgolf trainer: {exc}", file=sys.stderr)
        return exc.code
    leave_process_group()
    keys = ("final/val_loss", "final/val_bpb", "artifact/bytes", "data/tokens_per_byte")
    if result:
        print(" ".join(f"{k}={result[k]}" for k in keys if k in result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
