"""pgolf report [--experiment NAME] [--out DIR]: per-variant tables in the terminal, plots (PNG + SVG)
and one self-contained HTML file per experiment, attached to the newest validate/tune run in MLflow.

Exit codes: 0 report written; 1 the store or experiment holds no runs; 2 bad arguments."""
from __future__ import annotations

import os
import re
import sys


def add_arguments(p) -> None:
    p.add_argument("--experiment", "-e", action="append", default=None, metavar="NAME",
                   help="MLflow experiment (= [experiment] name of the TOML); repeatable; default: every "
                        "experiment in the store that has runs")
    p.add_argument("--out", default="report", metavar="DIR",
                   help="output folder; each experiment gets DIR/<experiment>/report.html and plots/ (default: ./report)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default: $PGOLF_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--parent", default=None, metavar="RUN_ID",
                   help="only the trials of this validate/tune invocation (parent run id or prefix)")
    p.add_argument("--baseline", default=None, metavar="SPEC",
                   help="compare every variant against: a config hash or variant name in the store, a published "
                        "record preset (e.g. '#549'), or a number in BPB ('1.1194') or nats ('1.89 nats'); "
                        "default: the test each validate run logged against the experiment's [baseline]")
    p.add_argument("--margin-nats", type=float, default=0.005, help="required improvement (default 0.005)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    p.add_argument("--min-seeds", type=int, default=3, help="seeds a variant needs to be compliant (default 3)")
    p.add_argument("--all-runs", action="store_true", help="list every run in the terminal, not only failures")
    p.add_argument("--no-log", action="store_true", help="do not attach report.html to the parent run in MLflow")
    p.add_argument("--no-plots", action="store_true", help="terminal table only (no HTML, no plots)")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "experiment"


def _store_exists(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return os.path.exists(uri[len("sqlite:///"):])
    return True


def run(args) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pgolf.tracking import resolve_tracking_uri

    uri, _ = resolve_tracking_uri(args.tracking_uri)
    if not _store_exists(uri):
        print(f"pgolf report: no MLflow store at {uri[len('sqlite:///'):]}: nothing to report.\n"
              f"  Run `pgolf validate experiments/smoke.toml` first, or point --tracking-uri / $PGOLF_TRACKING_URI "
              f"at an existing store.")
        return 1
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # migrations chatter on every sqlite open
    from pgolf import tracking

    try:  # invocations whose driver died (SIGKILL) would otherwise show as RUNNING forever
        for run_id in tracking.close_dead_invocations(uri):
            print(f"pgolf report: closed run {run_id}: FAILED ({tracking.DRIVER_LOST})")
    except Exception as exc:  # noqa: BLE001 - a read-only store still gets its report
        print(f"pgolf report: could not close runs of dead drivers ({type(exc).__name__}: {exc})", file=sys.stderr)
    from pgolf.dashboards import query
    from pgolf.dashboards import report as R

    names = args.experiment or query.list_experiments(uri)
    if not names:
        print(f"pgolf report: the store {query.relpath_or_uri(uri)} has no runs: nothing to report.\n"
              f"  Run `pgolf validate experiments/smoke.toml` (or `pgolf tune ...`) first.")
        return 1
    status = 0
    written = []
    for i, name in enumerate(names):
        if i:
            print()
        try:
            rep = R.build_report(uri, name, parent_run_id=args.parent, baseline=args.baseline, min_seeds=args.min_seeds,
                                 margin_nats=args.margin_nats, alpha=args.alpha, curves=not args.no_plots)
        except LookupError as exc:
            print(f"pgolf report: {exc}", file=sys.stderr)
            status = 1
            continue
        except ValueError as exc:
            print(f"pgolf report: {exc}", file=sys.stderr)
            return 2
        print(R.format_text(rep, all_runs=args.all_runs))
        if rep.data.empty:
            print(f"pgolf report: experiment {name!r} has no trial runs: nothing to report.")
            status = max(status, 1)
            continue
        if args.no_plots:
            continue
        out_dir = os.path.abspath(os.path.join(args.out, _safe(name)))
        path = R.write_report(rep, out_dir)
        logged = None
        if not args.no_log:
            try:
                logged = R.log_to_parent(rep, rep.data.parents["run_id"].iloc[-1] if args.parent else None)
            except Exception as exc:  # noqa: BLE001 - a read-only store must not cost the files already written
                print(f"pgolf report: could not attach the report to MLflow: {exc}", file=sys.stderr)
        print(f"\nreport: {path} ({len(rep.plots)} plots in {os.path.join(out_dir, 'plots')}, PNG + SVG)")
        if logged:
            print(f"        attached to parent run {logged} as {R.REPORT_ARTIFACT_DIR}/report.html (MLflow UI: Artifacts)")
        written.append(path)
    return status
