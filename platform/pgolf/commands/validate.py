"""pgolf validate EXPERIMENT.toml [--seeds ...]: every variant x every seed through Ray Tune + MLflow,
then the per-variant table, compliance verdicts and the significance test against [baseline].
Exit code 0 only when every requested seed finished OK."""
from __future__ import annotations

from pgolf.commands._orchestration import add_common, run_orchestration


def add_arguments(p) -> None:
    add_common(p, "seeds to run (default: [experiment] seeds of the file)")


def run(args) -> int:
    return run_orchestration(args, "validation")
