"""Turning an experiment variant + seed into a run directory and the trainer command that fills it.
Shared by `pgolf train` and the Ray Tune trials."""
from __future__ import annotations

import os
import sys
import time

from pgolf.experiment import Experiment, apply_data_source
from pgolf.trainers.config import ConfigError, TrainConfig
from pgolf.trainers.contract import RESOLVED_CONFIG


def default_run_dir(exp: Experiment, variant: str, seed: int, root: str = "runs") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join(root, exp.meta.name, f"{variant}-s{seed}-{stamp}"))


def prepare_run(exp: Experiment, variant: str | None, seed: int, run_dir: str, data_root: str | None = None) -> tuple[TrainConfig, str]:
    """Resolve the config for (variant, seed), point it at absolute data paths and write it into
    run_dir. Returns the config and the JSON path."""
    cfg = exp.resolved(variant, seed)
    apply_data_source(exp, cfg, data_root)
    return cfg, write_run_config(cfg, run_dir)


def write_run_config(cfg: TrainConfig, run_dir: str) -> str:
    """The one writer of a run's resolved_config.json (pgolf train and every trial): sets run.run_dir to
    the absolute run directory, writes the file the trainer reads, returns its path."""
    cfg.run.run_dir = os.path.abspath(run_dir)
    path = os.path.join(cfg.run.run_dir, RESOLVED_CONFIG)
    try:
        os.makedirs(cfg.run.run_dir, exist_ok=True)
        cfg.write_json(path)
    except OSError as exc:
        why = "is a file, not a folder" if os.path.isfile(cfg.run.run_dir) else f"{exc.strerror} ({exc.filename})"
        raise ConfigError(f"run directory {cfg.run.run_dir}: {why}; pass --run-dir / --runs-dir a writable "
                          "folder") from None
    return path


def trainer_command(config_path: str, gpus: int) -> list[str]:
    """CPU or one GPU: a plain child Python. Several GPUs: torchrun on a free rendezvous port
    (--standalone), so two trials on one node never collide."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "pgolf.trainers.gpt", "--config", config_path]
    return [sys.executable, "-m", "pgolf.trainers.gpt", "--config", config_path]
