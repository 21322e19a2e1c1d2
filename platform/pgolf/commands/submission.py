"""pgolf submission GROUP_OR_RUN --out DIR: a records folder (README.md, submission.json, per-seed
train logs, the counted train_gpt.py, requirements.txt) from runs logged in MLflow, then a self-check
that runs the folder's train_gpt.py from a clean copy on CPU.

Exit codes: 0 written and the self-check passed or was skipped (--no-self-check, or no demo data
matches the config's tokenizer: said in the output and README); 1 refused, or the self-check failed;
2 bad arguments or nothing found."""
from __future__ import annotations

import os
import sys


def add_arguments(p) -> None:
    p.add_argument("group", metavar="GROUP_OR_RUN",
                   help="a config hash (or unique prefix), a validate/tune parent run id, or a trial run id")
    p.add_argument("--out", required=True, metavar="DIR", help="records folder to create (must be new or empty)")
    p.add_argument("--non-record", action="store_true",
                   help="write a non-record folder even when a record rule fails (the reasons are listed in it)")
    p.add_argument("--min-seeds", type=int, default=3, help="seeds a record needs (default 3)")
    p.add_argument("--author", default=None, help="default: git config user.name")
    p.add_argument("--github-id", default=None)
    p.add_argument("--name", default=None, help="submission name (default: the variant name)")
    p.add_argument("--blurb", default=None, help="one-paragraph summary (default: generated from the numbers)")
    p.add_argument("--baseline", default=None, metavar="SPEC",
                   help="significance against a config hash or variant in the store, a record preset ('#549') or a "
                        "number in BPB ('1.1194') or nats ('1.89 nats'); default: the test the validate run logged")
    p.add_argument("--margin-nats", type=float, default=0.005)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--experiment", default=None, help="restrict a config hash lookup to this MLflow experiment")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI; default: $PGOLF_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    p.add_argument("--data-dir", default=None, help="data root whose demo/ corpus the self-check uses (default: ./data)")
    p.add_argument("--self-check-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra --set for the self-check run (e.g. ttt.chunk_tokens=1024)")
    p.add_argument("--no-self-check", action="store_true", help="skip running train_gpt.py from a clean copy")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")


def run(args) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from pgolf import submission as S
    from pgolf.tracking import resolve_tracking_uri

    uri, _ = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        print(f"pgolf submission: no MLflow store at {uri[len('sqlite:///'):]}; run `pgolf validate` first "
              f"or pass --tracking-uri", file=sys.stderr)
        return 2
    try:
        res = S.build_submission(
            uri, args.group, args.out, experiment=args.experiment, non_record=args.non_record,
            min_seeds=args.min_seeds, author=args.author, github_id=args.github_id, name=args.name,
            blurb=args.blurb, baseline=args.baseline, margin_nats=args.margin_nats, alpha=args.alpha,
            run_self_check=not args.no_self_check, data_dir=args.data_dir,
            self_check_sets=tuple(S.DEFAULT_SELF_CHECK_SETS) + tuple(args.self_check_set), force=args.force)
    except S.SubmissionRefused as exc:
        print(f"pgolf submission: refused: {exc}", file=sys.stderr)
        return 1
    except (LookupError, ValueError, FileExistsError) as exc:
        print(f"pgolf submission: {exc}", file=sys.stderr)
        return 2
    doc = res.submission
    print(f"records folder: {res.out_dir}  (track {res.track}; copy it to "
          f"{S.TRACK_FOLDERS[res.track]}/<date>_<name>/ in your fork)")
    print(f"  {doc['name']}: val_bpb {doc['val_bpb']:.5f} (std {doc['val_bpb_std'] or 0:.5f}) over seeds {doc['seeds']}; "
          f"val_loss {doc['val_loss']:.5f}; bytes_total {doc['bytes_total']:,}; "
          f"p={doc['p_value'] if doc['p_value'] is not None else '-'}")
    for f in res.files:
        print(f"  {os.path.relpath(f, res.out_dir)}")
    for w in res.warnings:
        print(f"  note: {w}")
    for r in res.refused_reasons:
        print(f"  not a record: {r}")
    if res.self_check is not None:
        state = "SKIPPED" if res.self_check.skipped else ("OK" if res.self_check.ok else "FAILED")
        print(f"  self-check: {state}: {res.self_check.detail}")
        if not res.self_check.ok and not res.self_check.skipped:
            if res.self_check.output_tail:
                print("    " + res.self_check.output_tail.replace("\n", "\n    "), file=sys.stderr)
            return 1
    return 0
