"""MLflow -> pandas: the trial runs of an experiment, one row per run, and the per-variant table
(one row per config hash) that the MLflow UI cannot compute: seed statistics, significance against a
baseline in nats and BPB, artifact and time budgets, compliance.

Failed, killed and still-running trials stay in every table with their status and reason: which seeds
a result is built from must be visible, so nothing is filtered out silently. When a seed was re-run, the
newest FINISHED run of that (config hash, seed) counts and the older ones are marked `superseded`.

Imports: mlflow, pandas, numpy and pgolf's pure-Python modules only (never torch or Ray).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pgolf.tracking import KIND, KIND_TRIAL
from pgolf.trainers.contract import (ARTIFACT_BYTES, EVAL_SECONDS, FINAL_BPB, FINAL_LOSS, HEADROOM_BYTES,
                                     TOKENS_PER_BYTE, TRAIN_LOSS, TRAIN_SECONDS, VAL_BPB)

from pgolf.dashboards.groups import (GROUP_COLUMNS, ReportBaseline, baseline_from_spec, cost_summary,  # noqa: F401
                                     group_table)  # the report's API

__all__ = [
    "ReportBaseline",
    "ExperimentData",
    "GROUP_COLUMNS",
    "baseline_from_spec",
    "client",
    "cost_summary",
    "group_table",
    "list_experiments",
    "load_curves",
    "load_runs",
    "load_trials",
    "result_of",
    "runs_frame",
    "records",
    "relpath_or_uri",
    "sweep_axes",
]

SUMMARY_ARTIFACT = "validation_summary.json"
PARENT_KINDS = ("validation", "sweep")

# Config keys that change between seeds or machines without changing the variant: never sweep axes.
NON_AXIS_PARAMS = re.compile(r"^(run\.(seed|run_dir|threads|device|compile)|data\.(data_path|tokenizer_path)|faults\..*)$")

# Metric columns the tables read; a missing one is NaN, never an error (older or failed runs lack some).
RUN_METRICS = (
    FINAL_BPB, FINAL_LOSS, "prequant/val_bpb", "quant/val_bpb", "sliding/val_bpb", "ttt/val_bpb",
    ARTIFACT_BYTES, "artifact/model_bytes", "artifact/code_bytes", HEADROOM_BYTES,
    TRAIN_SECONDS, EVAL_SECONDS, "steps", "train/step_ms", TOKENS_PER_BYTE,
    "cost/gpu_seconds", "cost/cpu_seconds", "cost/usd",
)


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


# --------------------------------------------------------------------------------------------------
# loading


@dataclass
class ExperimentData:
    """Everything a report needs from one MLflow experiment, loaded once."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    runs: pd.DataFrame  # trial runs, one row each (see `_normalize_runs` for the columns)
    parents: pd.DataFrame  # validate/tune invocations: run_id, run_name, kind, status, start_time
    summaries: dict[str, dict] = field(default_factory=dict)  # parent run id -> validation_summary.json
    results: dict[str, dict] = field(default_factory=dict)  # trial run id -> result.json (or rebuilt)

    @property
    def empty(self) -> bool:
        return self.runs.empty

    def newest_parent(self) -> str | None:
        if self.parents.empty:
            return None
        return str(self.parents.sort_values("start_time").iloc[-1]["run_id"])


def list_experiments(tracking_uri: str) -> list[str]:
    """Names of active experiments that hold at least one run, newest activity first."""
    c = client(tracking_uri)
    out = []
    for exp in c.search_experiments():
        runs = c.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])
        if runs:
            out.append((runs[0].info.start_time or 0, exp.name))
    return [name for _, name in sorted(out, reverse=True)]


def load_runs(tracking_uri: str, experiment: str, *, parent_run_id: str | None = None,
                    with_results: bool = True) -> ExperimentData:
    """Trial runs and parent runs of `experiment`; with `parent_run_id`, only that invocation's trials.

    `with_results` downloads each trial's result.json: compliance needs its nested env, data, phases and
    TTT verdict, which are not metrics."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        known = ", ".join(repr(n) for n in list_experiments(tracking_uri)) or "none"
        raise LookupError(f"no MLflow experiment named {experiment!r} in {tracking_uri} (experiments with runs: {known})")
    raw = runs_frame(c, [exp.experiment_id])
    runs, parents = _split(raw)
    if parent_run_id:
        matches = [p for p in parents["run_id"] if p.startswith(parent_run_id)] if not parents.empty else []
        if len(matches) != 1:
            raise LookupError(f"parent run {parent_run_id!r}: {'no' if not matches else 'several'} "
                              f"validate/tune runs match in experiment {experiment!r}")
        parent_run_id = matches[0]
        runs = runs[runs["parent_run_id"] == parent_run_id].reset_index(drop=True)
        runs["counted"] = _counted(runs)  # within this invocation only
        parents = parents[parents["run_id"] == parent_run_id].reset_index(drop=True)
    data = ExperimentData(tracking_uri, experiment, exp.experiment_id, runs, parents)
    data.summaries = {pid: s for pid in parents.get("run_id", []) if (s := _download_json(c, pid, SUMMARY_ARTIFACT))}
    if with_results:
        data.results = {rid: result_of(c, rid) for rid in runs["run_id"]}
    return data


def runs_frame(c, experiment_ids: list[str], filter_string: str = "") -> pd.DataFrame:
    """The table `mlflow.search_runs(output_format="pandas")` returns (run_id, status, start_time,
    end_time, metrics.*, params.*, tags.*), built from an explicit client: `mlflow.search_runs` only
    reads the process-global tracking URI, which a library must not change under its caller."""
    rows, token = [], None
    while True:
        page = c.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        for r in page:
            row = {"run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "status": r.info.status,
                   "artifact_uri": r.info.artifact_uri,
                   "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True) if r.info.start_time else pd.NaT,
                   "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True) if r.info.end_time else pd.NaT}
            row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
            row.update({f"params.{k}": v for k, v in r.data.params.items()})
            row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
            rows.append(row)
        token = page.token
        if not token:
            return pd.DataFrame(rows)


def load_trials(tracking_uri: str, experiment_ids: list[str], filter_string: str = "") -> pd.DataFrame:
    """Trial runs matching an MLflow filter, normalized like `ExperimentData.runs`."""
    return _split(runs_frame(client(tracking_uri), experiment_ids, filter_string))[0]


def _split(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if raw is None or raw.empty:
        return _normalize_runs(pd.DataFrame()), _normalize_parents(pd.DataFrame())
    kind = raw.get(f"tags.{KIND}", pd.Series([None] * len(raw), index=raw.index))
    has_hash = raw.get("tags.config_hash", pd.Series([None] * len(raw), index=raw.index)).notna()
    # Runs logged by older pgolf versions or by hand may lack the kind tag; a config hash makes a trial.
    is_trial = (kind == KIND_TRIAL) | (kind.isna() & has_hash)
    is_parent = kind.isin(PARENT_KINDS)
    return _normalize_runs(raw[is_trial]), _normalize_parents(raw[is_parent])


def _col(df: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([default] * len(df), index=df.index, dtype=object)


def _normalize_parents(raw: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "run_id": _col(raw, "run_id"), "run_name": _col(raw, "tags.mlflow.runName"),
        "kind": _col(raw, f"tags.{KIND}"), "status": _col(raw, "status"),
        "status_reason": _col(raw, "tags.status_reason"), "start_time": _col(raw, "start_time"),
        "experiment_file": _col(raw, "tags.experiment_file"), "git_sha": _col(raw, "tags.git_sha"),
    })
    return out.sort_values("start_time").reset_index(drop=True) if not out.empty else out


def _normalize_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per trial run. Metrics keep their MLflow names as columns; tags become typed columns;
    `params.*` columns stay (as strings, the way MLflow returns them) for sweep-axis detection."""
    base = pd.DataFrame({
        "run_id": _col(raw, "run_id"),
        "experiment_id": _col(raw, "experiment_id"),
        "run_name": _col(raw, "tags.mlflow.runName"),
        "parent_run_id": _col(raw, "tags.mlflow.parentRunId"),
        "status": _col(raw, "status"),
        "status_reason": _col(raw, "tags.status_reason", ""),
        "variant": _col(raw, "tags.variant"),
        "config_hash": _col(raw, "tags.config_hash"),
        "seed": pd.to_numeric(_col(raw, "tags.seed"), errors="coerce").astype("Int64"),
        "node_class": _col(raw, "tags.node_class"),
        "git_sha": _col(raw, "tags.git_sha"),
        "overrides": _col(raw, "tags.overrides"),
        "outcome": _col(raw, "tags.pgolf.outcome"),  # CANCELLED / NOT STARTED (budget): the gate never ran it
        "start_time": _col(raw, "start_time"),
        "end_time": _col(raw, "end_time"),
    })
    for m in RUN_METRICS:
        base[m] = pd.to_numeric(_col(raw, f"metrics.{m}", np.nan), errors="coerce").astype(float)
    phase_cols = sorted(c for c in raw.columns if re.fullmatch(r"metrics\.time/.+_s", c)
                        and c not in ("metrics.time/train_s", "metrics.time/eval_s"))
    for c in phase_cols:
        base[c[len("metrics."):]] = pd.to_numeric(raw[c], errors="coerce").astype(float)
    params = [c for c in raw.columns if c.startswith("params.")]
    if params:
        base = pd.concat([base, raw[params]], axis=1)
    base["variant"] = base["variant"].fillna(base["run_name"].astype(str).str.replace(r"-s\d+$", "", regex=True))
    base["config_hash"] = base["config_hash"].fillna("<no hash>")
    base["status_reason"] = base["status_reason"].fillna("")
    base = base.sort_values(["start_time", "run_id"], kind="stable").reset_index(drop=True)
    base["counted"] = _counted(base)
    return base


def _counted(runs: pd.DataFrame) -> pd.Series:
    """'yes' for the run that represents its (config hash, seed) in statistics, otherwise why not.

    Newest FINISHED run per pair wins; a pair with no finished run is represented by its newest
    failure, which then counts as a failed seed of the variant."""
    out = pd.Series(["yes"] * len(runs), index=runs.index, dtype=object)
    if runs.empty:
        return out
    for _, g in runs.groupby(["config_hash", runs["seed"].fillna(-1)], sort=False):
        finished = g[g["status"] == "FINISHED"]
        keep = finished.index[-1] if not finished.empty else g.index[-1]
        for i in g.index:
            if i != keep:
                out[i] = "superseded" if runs.at[keep, "status"] == "FINISHED" else "superseded by a newer attempt"
    return out


def _download_json(c, run_id: str, path: str) -> dict | None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = c.download_artifacts(run_id, path, tmp)
            with open(local, encoding="utf-8") as fh:
                out = json.load(fh)
        return out if isinstance(out, dict) else None
    except Exception:  # noqa: BLE001 - a missing or unreadable artifact is normal for failed runs
        return None


def result_of(c, run_id: str) -> dict | None:
    """result.json of a trial, or the same fields rebuilt from its metrics and tags (a trial that died
    before writing one still has a partial record worth showing)."""
    res = _download_json(c, run_id, "result.json")
    if res is not None:
        return res
    run = c.get_run(run_id)
    m, tags = run.data.metrics, run.data.tags
    if not m:
        return None
    # No "phases" here: the metric time/train_s is both the train phase and the train total, so
    # rebuilt phases would be ambiguous; compliance then judges time/train_s and time/eval_s.
    out: dict[str, Any] = dict(m)
    env = {k[4:]: _tag_value(v) for k, v in tags.items() if k.startswith("env.")}
    if env:
        out["env"] = env
    data = {k[5:]: _tag_value(v) for k, v in tags.items() if k.startswith("data.")}
    if data:
        out["data"] = data
    ttt = {k[4:]: v for k, v in tags.items() if k.startswith("ttt.")}
    if ttt:
        verdict = {k[len("trace_verdict."):]: _tag_value(v) for k, v in ttt.items() if k.startswith("trace_verdict.")}
        out["ttt"] = {"mode": ttt.get("mode"), **({"trace_verdict": verdict} if verdict else {})}
    return out


def _tag_value(v: str) -> Any:
    """Tags are strings; compliance needs the booleans and counts back."""
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


# --------------------------------------------------------------------------------------------------
# step-wise curves


def load_curves(tracking_uri: str, run_ids: Iterable[str],
                keys: Sequence[str] = (TRAIN_LOSS, VAL_BPB)) -> pd.DataFrame:
    """Long table (run_id, key, step, value) of metric histories, for the training/validation plots."""
    c = client(tracking_uri)
    rows = []
    for rid in run_ids:
        for key in keys:
            try:
                hist = c.get_metric_history(rid, key)
            except Exception:  # noqa: BLE001 - a run without that metric simply has no curve
                continue
            rows.extend((rid, key, int(h.step), float(h.value)) for h in hist)
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def _coerce(values: pd.Series) -> pd.Series:
    """Params are strings in MLflow; numbers become floats so axes sort and plot numerically."""
    num = pd.to_numeric(values, errors="coerce")
    return num if num.notna().all() else values.astype(str)


def sweep_axes(runs: pd.DataFrame) -> dict[str, pd.Series]:
    """Config keys whose value differs between config hashes, each as a Series aligned with `runs`:
    the sweep's own axes (the trials' `overrides` tag) when there are any, otherwise every differing
    param except seeds, paths, thread counts and fault injection."""
    if runs.empty or runs["config_hash"].nunique() < 2:
        return {}
    axes: dict[str, pd.Series] = {}
    over_keys: list[str] = []
    for raw in runs["overrides"].dropna():
        try:
            over_keys += [k for k in json.loads(raw) if k not in over_keys]
        except (ValueError, TypeError):
            continue
    # A sweep names its axes; without that (variants of a validate run) every differing key is one.
    candidates = over_keys or sorted(c[len("params."):] for c in runs.columns if c.startswith("params."))
    for key in dict.fromkeys(candidates):
        if NON_AXIS_PARAMS.match(key):
            continue
        col = f"params.{key}"
        if col not in runs.columns:
            continue
        per_hash = runs.groupby("config_hash")[col].agg(lambda s: s.dropna().iloc[0] if s.notna().any() else None)
        if per_hash.dropna().nunique() > 1:
            axes[key] = _coerce(runs[col])
    return axes


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with pandas' NaN placeholders turned back into None."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def relpath_or_uri(uri: str) -> str:
    """The store location for display: the sqlite file path when local."""
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") and os.path.isabs(uri[len("sqlite:///"):]) else uri
