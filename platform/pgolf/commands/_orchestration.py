"""Arguments and entry point shared by `pgolf validate` and `pgolf tune`."""
from __future__ import annotations


def add_common(p, seeds_help: str) -> None:
    p.add_argument("experiment", help="experiment TOML file")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N", help=seeds_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key of the file, e.g. config.schedule.iterations=50 or budget.trial_timeout_seconds=120")
    p.add_argument("--smoke", action="store_true",
                   help="shrink to a CPU-sized model on the demo data (every technique of the file stays on)")
    p.add_argument("--resume", action="store_true",
                   help="skip (config hash, seed) pairs that already have a FINISHED run in MLflow")
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto' = the running local cluster); default: $RAY_ADDRESS, "
                        "else a fresh local Ray for this command")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default: $PGOLF_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--max-concurrent", type=int, default=0, metavar="N",
                   help="trials at a time (default: cluster GPUs // GPUs per trial; CPU trials: CPUs // CPUs per trial)")
    p.add_argument("--runs-dir", default=None, help="trial run directories go below this (default: ./runs)")
    p.add_argument("--storage-path", default=None,
                   help="Ray Tune storage_path (default: <runs-dir>/tune; use shared storage on multi-node clusters)")
    p.add_argument("--data-dir", default=None, help="data root (default: $PGOLF_DATA_DIR or ./data)")


def run_orchestration(args, kind: str) -> int:
    from pgolf.orchestrate import run

    return run(args, kind)
