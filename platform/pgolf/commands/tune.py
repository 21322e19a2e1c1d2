"""pgolf tune EXPERIMENT.toml: the [sweep] axes (grid, random or Optuna), every sampled config repeated
over the seed list, optional ASHA early stopping on val/bpb, and the ranked variants at the end."""
from __future__ import annotations

from pgolf.commands._orchestration import add_common


def add_arguments(p) -> None:
    add_common(p)
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                   help="seeds each sampled config runs with (default: [experiment] seeds of the file)")


def run(args) -> int:
    from pgolf.orchestrate import run as orchestrate

    return orchestrate(args, "sweep")
