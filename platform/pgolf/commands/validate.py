"""pgolf validate EXPERIMENT.toml [--seeds ...]: every variant x every seed through Ray Tune + MLflow,
then the per-variant table, compliance verdicts and the significance test against [baseline].
Exit code 0 only when every requested seed finished OK."""
from __future__ import annotations

from pgolf.commands._orchestration import add_common, run_orchestration


def add_arguments(p) -> None:
    add_common(p, "seeds to run (default: [experiment] seeds of the file)")
    p.add_argument("--stop-futile", action="store_true",
                   help="after each finished seed, do not start the remaining seeds of a variant that no values "
                        "of them could make significant against [baseline] (recorded as CANCELLED; docs/futility.md)")
    p.add_argument("--stop-power-below", type=float, default=0.0, metavar="P",
                   help="with --stop-futile, also cancel when the conditional probability of significance falls "
                        "below P, assuming the unfinished seeds spread by --seed-std-nats (an assumption, not a bound)")
    p.add_argument("--seed-std-nats", type=float, default=0.0015, metavar="S",
                   help="assumed seed-to-seed std for --stop-power-below (default 0.0015: the top of the records' "
                        "0.0005-0.0015 nats, techniques.md section 6)")


def run(args) -> int:
    return run_orchestration(args, "validation")
