"""pgolf tune EXPERIMENT.toml: the [sweep] axes (grid, random or Optuna), every sampled config repeated
over the seed list, optional ASHA early stopping on val/bpb, and the ranked variants at the end."""
from __future__ import annotations

from pgolf.commands._orchestration import add_common, run_orchestration


def add_arguments(p) -> None:
    add_common(p, "seeds each sampled config runs with (default: [experiment] seeds of the file)")


def run(args) -> int:
    return run_orchestration(args, "sweep")
