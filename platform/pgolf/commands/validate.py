"""pgolf validate EXPERIMENT.toml [--seeds ...]: every variant x every seed through Ray Tune + MLflow,
then the per-variant table, compliance verdicts and the significance test against [baseline].
Exit code 0 only when every requested seed finished OK."""
from __future__ import annotations

from pgolf.commands._orchestration import add_common


def add_arguments(p) -> None:
    add_common(p)
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                   help="seeds to run (default: [experiment] seeds of the file)")
    p.add_argument("--stop-futile", action="store_true",
                   help="after each finished seed, do not start the remaining seeds of a variant that no values "
                        "of them could make significant against [baseline] (recorded as CANCELLED; docs/futility.md)")


def run(args) -> int:
    from pgolf.orchestrate import run as orchestrate

    return orchestrate(args, "validation")
