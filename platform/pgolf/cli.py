"""`pgolf` command line. Each subcommand lives in pgolf.commands.<name> and is imported only when
used, so `pgolf --help` starts without torch, Ray or MLflow."""
from __future__ import annotations

import argparse
import importlib
import sys

from pgolf import __version__
from pgolf.trainers.config import ConfigError

# name -> one-line help; the module pgolf.commands.<name> provides add_arguments(parser) and run(args).
COMMANDS = {
    "data": "build the embedded demo corpus or download the official FineWeb shards",
    "inspect": "print the resolved config, its hash, parameter count and FLOPs per token",
    "train": "run one seed of an experiment (no Ray): what a trial runs",
    "validate": "N-seed validation through Ray Tune + MLflow, with statistics and compliance",
    "plan": "what validate/tune would run and cost (GPU-hours, dollars, wall time), without starting anything",
    "tune": "hyperparameter sweep through Ray Tune + MLflow",
    "report": "tables, plots and an HTML report from the MLflow store",
    "submission": "write a records folder (README, submission.json, logs, code) from logged runs",
    "ui": "start the MLflow UI on the project's tracking store",
}


def _available() -> dict[str, object]:
    mods = {}
    for name in COMMANDS:
        try:
            mods[name] = importlib.import_module(f"pgolf.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pgolf.commands.{name}":
                raise
    return mods


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    ap = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf experiment platform")
    ap.add_argument("--version", action="version", version=f"pgolf {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    mods = _available()
    for name, mod in mods.items():
        p = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        mod.add_arguments(p)
    return ap, mods


def main(argv: list[str] | None = None) -> int:
    ap, mods = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    try:
        return int(mods[args.command].run(args) or 0)
    except ConfigError as exc:
        print(f"pgolf {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pgolf inspect ... | head` closed the pipe: not an error worth a traceback
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"pgolf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
