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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pgolf import compliance, stats
from pgolf.records import RECORD_PRESETS
from pgolf.tracking import KIND, KIND_TRIAL

__all__ = [
    "Baseline",
    "ExperimentData",
    "GROUP_COLUMNS",
    "baseline_from_spec",
    "client",
    "cost_summary",
    "group_table",
    "list_experiments",
    "load_curves",
    "load_experiment",
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
    "final/val_bpb", "final/val_loss", "prequant/val_bpb", "quant/val_bpb", "sliding/val_bpb", "ttt/val_bpb",
    "artifact/bytes", "artifact/model_bytes", "artifact/code_bytes", "artifact/headroom_bytes",
    "time/train_s", "time/eval_s", "steps", "train/step_ms", "data/tokens_per_byte",
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


def load_experiment(tracking_uri: str, experiment: str, *, parent_run_id: str | None = None,
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
                keys: Sequence[str] = ("train/loss", "val/bpb")) -> pd.DataFrame:
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


# --------------------------------------------------------------------------------------------------
# baseline


@dataclass
class Baseline:
    """What deltas and p-values are computed against.

    kind: "record" (one published number), "seeds" (published per-seed values) or "group" (a config hash
    in this store; its per-seed val_loss, paired when the seeds match). `unit` is the unit of `value`."""

    kind: str
    label: str
    value: Any
    unit: str = "nats"
    config_hash: str | None = None

    def in_nats(self, tokens_per_byte: float | None) -> Any:
        if self.unit == "nats":
            return self.value
        if not tokens_per_byte:
            raise ValueError(f"baseline {self.label} is in BPB; converting it to nats needs the runs' "
                             f"data/tokens_per_byte, which they did not log")
        if isinstance(self.value, Mapping):
            return {k: float(stats.bpb_to_nats(v, tokens_per_byte)) for k, v in self.value.items()}
        if isinstance(self.value, (list, tuple)):
            return [float(stats.bpb_to_nats(v, tokens_per_byte)) for v in self.value]
        return float(stats.bpb_to_nats(self.value, tokens_per_byte))

    def threshold_bpb(self, margin_nats: float, tokens_per_byte: float | None) -> float | None:
        """The score a new record has to beat, in BPB: baseline mean minus the margin."""
        if not tokens_per_byte:
            return None
        vals = self.in_nats(tokens_per_byte)
        mean = float(np.mean(list(vals.values()) if isinstance(vals, Mapping) else vals))
        return float(stats.nats_to_bpb(mean - margin_nats, tokens_per_byte))


_NUMBER = re.compile(r"^\s*(?:record:)?([0-9]*\.?[0-9]+)\s*(bpb|nats)?\s*$", re.I)


def baseline_from_spec(spec: str, runs: pd.DataFrame) -> Baseline:
    """`--baseline` values: a number (BPB unless suffixed `nats`), a published record preset name
    (pgolf.RECORD_PRESETS, e.g. "#549"), a config hash (or unique prefix) or a variant name."""
    ok = runs[(runs["status"] == "FINISHED") & (runs["counted"] == "yes")] if not runs.empty else runs
    # A hash (or prefix) in the store wins over reading the text as a number: hashes can be all digits.
    hashes = sorted({h for h in ok.get("config_hash", []) if len(spec) >= 6 and str(h).startswith(spec)})
    if not hashes and not ok.empty:
        hashes = sorted(set(ok.loc[ok["variant"] == spec, "config_hash"]))
    m = _NUMBER.match(spec)
    if m and not hashes:
        unit = (m.group(2) or "bpb").lower()
        return Baseline("record", f"record {float(m.group(1)):g} {unit}", float(m.group(1)), unit=unit)
    if spec in RECORD_PRESETS and not hashes:
        p = RECORD_PRESETS[spec]
        values: Any = dict(zip(p.seeds, p.per_seed_bpb)) if p.seeds else list(p.per_seed_bpb)
        if len(p.per_seed_bpb) == 1:
            return Baseline("record", f"{p.name} ({p.per_seed_bpb[0]:g} bpb)", p.per_seed_bpb[0], unit="bpb")
        return Baseline("seeds", f"{p.name} ({len(p.per_seed_bpb)} published seeds, mean {p.mean_bpb:.5f} bpb)",
                        values, unit="bpb")
    if len(hashes) != 1:
        known = ", ".join(sorted(RECORD_PRESETS))
        what = "matches several config hashes: " + ", ".join(hashes) if hashes else "matches no finished variant"
        raise ValueError(f"--baseline {spec!r} {what}; give a number (BPB, or '<x> nats'), a record preset "
                         f"({known}), a config hash or a variant name")
    g = ok[ok["config_hash"] == hashes[0]]
    by_seed = {int(s): float(v) for s, v in zip(g["seed"], g["final/val_loss"]) if pd.notna(s) and pd.notna(v)}
    if not by_seed:
        raise ValueError(f"--baseline {spec!r}: config {hashes[0]} has no finished seed with final/val_loss")
    name = g["variant"].iloc[0]
    return Baseline("group", f"{name} ({hashes[0]}, {len(by_seed)} seeds)", by_seed, unit="nats",
                    config_hash=hashes[0])


# --------------------------------------------------------------------------------------------------
# the per-variant table

GROUP_COLUMNS = [
    "variant", "config_hash", "n_runs", "n_ok", "n_failed", "seeds", "failed",
    "bpb_mean", "bpb_std", "bpb_ci_low", "bpb_ci_high", "loss_mean", "loss_std", "loss_ci_low", "loss_ci_high",
    "tokens_per_byte", "test", "n_test", "df", "t", "p", "holm_p", "significant", "delta_nats", "delta_bpb",
    "required_improvement_nats", "baseline", "test_source",
    "artifact_bytes_max", "model_bytes_max", "code_bytes_max", "headroom_min", "steps_mean", "step_ms_mean",
    "train_s_max", "eval_s_max", "train_cap", "eval_cap", "artifact_cap",
    "compliant", "compliance_reasons", "record_grade", "hardware", "overrides", "pass_fractions",
    "gpu_hours", "gpu_hours_failed", "usd", "n_cancelled",
]


def _fin(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _summary_tests(data: ExperimentData | None) -> dict[str, dict]:
    """config hash -> the significance test the newest validate/tune run computed for it (against the
    experiment file's [baseline]), with where it came from."""
    out: dict[str, dict] = {}
    if data is None:
        return out
    order = list(data.parents["run_id"]) if not data.parents.empty else []
    names = dict(zip(data.parents["run_id"], data.parents["run_name"])) if order else {}
    for pid in order:  # oldest first, so newer invocations overwrite
        s = data.summaries.get(pid) or {}
        sig = s.get("significance") or {}
        for name, test in (sig.get("tests") or {}).items():
            v = (s.get("variants") or {}).get(name) or {}
            h = v.get("config_hash")
            if h and isinstance(test, Mapping) and "error" not in test:
                out[h] = {**test, "_baseline": sig.get("baseline"), "_source": names.get(pid, pid)}
    return out


def group_table(runs: pd.DataFrame, results: Mapping[str, dict] | None = None, *,
                baseline: Baseline | None = None, data: ExperimentData | None = None,
                caps: compliance.Caps = compliance.Caps(), min_seeds: int = 3,
                margin_nats: float = 0.005, alpha: float = 0.01, confidence: float = 0.95) -> pd.DataFrame:
    """One row per config hash (see GROUP_COLUMNS), ordered by mean final/val_bpb; groups without a
    finished seed come last but are kept.

    Significance: against `baseline` when given (Holm-adjusted when several variants are tested),
    otherwise the test the newest validate/tune invocation logged for that hash, otherwise none."""
    results = results or {}
    if runs.empty:
        return pd.DataFrame(columns=GROUP_COLUMNS)
    rows = []
    for h, g in runs.groupby("config_hash", sort=False):
        counted = g[g["counted"] == "yes"]
        ok = counted[counted["status"] == "FINISHED"]
        bad = counted[counted["status"] != "FINISHED"]
        bpb = [v for v in ok["final/val_bpb"] if pd.notna(v)]
        loss = [v for v in ok["final/val_loss"] if pd.notna(v)]
        sb = stats.summarize(bpb, confidence) if bpb else None
        sl = stats.summarize(loss, confidence) if loss else None
        tpb_vals = [v for v in ok["data/tokens_per_byte"] if pd.notna(v)]
        ok_results = []
        for r in ok.itertuples():
            res = dict(results.get(r.run_id) or {})
            if res:
                # MLflow's tag is the grouping key (design.md); the hash check must judge that one.
                res["config_hash"] = h
                res.setdefault("seed", int(r.seed) if pd.notna(r.seed) else None)
                ok_results.append(res)
        verdict = compliance.check_variant(ok_results, caps=caps, min_seeds=min_seeds) if ok_results else None
        reasons = list(verdict.reasons) if verdict else ["no finished seed with a result"]
        if not bad.empty:
            reasons.insert(0, "failed seeds: " + "; ".join(
                f"seed {_seed(r.seed)} {r.status} ({r.status_reason or 'no reason recorded'})" for r in bad.itertuples()))
        names = list(dict.fromkeys(g["variant"].astype(str)))
        rows.append({
            "variant": " / ".join(names), "config_hash": h, "n_runs": len(g), "n_ok": len(ok), "n_failed": len(bad),
            "seeds": sorted(int(s) for s in ok["seed"] if pd.notna(s)),
            "failed": [f"{_seed(r.seed)}:{r.status}" for r in bad.itertuples()],
            "bpb_mean": sb.mean if sb else None, "bpb_std": _fin(sb.std) if sb else None,
            "bpb_ci_low": _fin(sb.ci_low) if sb else None, "bpb_ci_high": _fin(sb.ci_high) if sb else None,
            "loss_mean": sl.mean if sl else None, "loss_std": _fin(sl.std) if sl else None,
            "loss_ci_low": _fin(sl.ci_low) if sl else None, "loss_ci_high": _fin(sl.ci_high) if sl else None,
            "tokens_per_byte": float(np.mean(tpb_vals)) if tpb_vals else None,
            "artifact_bytes_max": _max(ok["artifact/bytes"]), "model_bytes_max": _max(ok["artifact/model_bytes"]),
            "code_bytes_max": _max(ok["artifact/code_bytes"]), "headroom_min": _min(ok["artifact/headroom_bytes"]),
            "steps_mean": _mean(ok["steps"]), "step_ms_mean": _mean(ok["train/step_ms"]),
            "train_s_max": _max([v.train_seconds for v in verdict.seeds if v.train_seconds is not None]) if verdict else _max(ok["time/train_s"]),
            "eval_s_max": _max([v.eval_seconds for v in verdict.seeds if v.eval_seconds is not None]) if verdict else _max(ok["time/eval_s"]),
            "train_cap": caps.train_seconds, "eval_cap": caps.eval_seconds, "artifact_cap": caps.artifact_bytes,
            "compliant": bool(verdict and verdict.compliant and bad.empty),
            "compliance_reasons": reasons, "record_grade": bool(verdict and verdict.record_grade),
            "hardware": ", ".join(verdict.hardware_classes) if verdict else "",
            "overrides": _overrides(g), "pass_fractions": verdict.pass_fractions() if verdict else {},
            **_costs(g),
            "_loss_by_seed": {int(s): float(v) for s, v in zip(ok["seed"], ok["final/val_loss"]) if pd.notna(s) and pd.notna(v)},
        })
    _add_tests(rows, baseline, _summary_tests(data), margin_nats, alpha)
    df = pd.DataFrame(rows).drop(columns=["_loss_by_seed"])
    df["_key"] = df["bpb_mean"].astype(float).fillna(np.inf)
    df = df.sort_values(["_key", "variant"], kind="stable").drop(columns="_key").reset_index(drop=True)
    return df.reindex(columns=GROUP_COLUMNS)


def _costs(g: pd.DataFrame) -> dict[str, Any]:
    """What a config cost: every attempt of every seed, failed and superseded ones included (they were
    paid for). Dollars only where runs logged them (a price was set)."""
    gpu = g["cost/gpu_seconds"].fillna(0.0)
    usd = g["cost/usd"]
    return {"gpu_hours": float(gpu.sum()) / 3600.0,
            "gpu_hours_failed": float(gpu[g["status"] != "FINISHED"].sum()) / 3600.0,
            "usd": float(usd.sum()) if usd.notna().any() else None,
            "n_cancelled": int((g["outcome"] == "CANCELLED").sum())}


def cost_summary(groups: pd.DataFrame) -> dict[str, Any]:
    """Total spend and, when a baseline test ran, the spend per accepted improvement: everything spent
    on the variants tested against the baseline (the failures are part of the price of finding a
    winner), divided by the number of variants whose test is significant."""
    if groups.empty:
        return {"gpu_hours": 0.0, "usd": None, "tested": 0, "accepted": 0}
    tested = groups[groups["significant"].notna()]
    accepted = int((tested["significant"] == True).sum())  # noqa: E712 - pandas object column
    usd = groups["usd"].dropna()
    t_usd = tested["usd"].dropna()
    out = {"gpu_hours": float(groups["gpu_hours"].sum()), "usd": float(usd.sum()) if len(usd) else None,
           "tested": int(len(tested)), "accepted": accepted, "tested_gpu_hours": float(tested["gpu_hours"].sum()),
           "tested_usd": float(t_usd.sum()) if len(t_usd) else None}
    if accepted:
        out["gpu_hours_per_accepted"] = out["tested_gpu_hours"] / accepted
        out["usd_per_accepted"] = out["tested_usd"] / accepted if out["tested_usd"] is not None else None
    return out


def _add_tests(rows: list[dict], baseline: Baseline | None, logged: dict[str, dict], margin: float,
               alpha: float) -> None:
    empty = dict(test=None, n_test=None, df=None, t=None, p=None, holm_p=None, significant=None, delta_nats=None,
                 delta_bpb=None, required_improvement_nats=None, baseline=None, test_source=None)
    pvals = {}
    for row in rows:
        row.update(empty)
        if baseline is not None:
            if baseline.config_hash == row["config_hash"]:
                row.update(baseline=baseline.label, test_source="(baseline)")
                continue
            if not row["_loss_by_seed"]:
                continue
            try:
                base = baseline.in_nats(row["tokens_per_byte"])
                res = stats.compare(row["_loss_by_seed"], base, margin_nats=margin, alpha=alpha,
                                    tokens_per_byte=row["tokens_per_byte"]).to_dict()
            except (ValueError, TypeError) as exc:
                row.update(baseline=baseline.label, test_source=f"error: {exc}")
                continue
            _fill(row, res, baseline.label, "pgolf report --baseline")
            if res.get("p") is not None:
                pvals[row["config_hash"]] = res["p"]
        elif row["config_hash"] in logged:
            t = logged[row["config_hash"]]
            _fill(row, t, t.get("_baseline"), f"run {t.get('_source')}")
            if t.get("holm_p") is not None:
                row["holm_p"] = t["holm_p"]
                row["significant"] = bool(t.get("holm_significant"))
    if baseline is not None and len(pvals) > 1:
        for h, res in stats.holm(pvals, alpha=alpha).items():
            for row in rows:
                if row["config_hash"] == h:
                    row["holm_p"], row["significant"] = res.adjusted_p, res.reject


def _fill(row: dict, t: Mapping[str, Any], label: Any, source: str) -> None:
    row.update(test=t.get("test"), n_test=t.get("n"), df=_fin(t.get("df")), t=_fin(t.get("t")), p=_fin(t.get("p")),
               significant=t.get("significant"), delta_nats=_fin(t.get("delta_nats")),
               delta_bpb=_fin(t.get("delta_bpb")),
               required_improvement_nats=_fin(t.get("required_improvement_nats")),
               baseline=label, test_source=source)


def _seed(s: Any) -> str:
    return "?" if pd.isna(s) else str(int(s))


def _vals(xs: Iterable[Any]) -> list[float]:
    return [float(x) for x in xs if _fin(x) is not None]


def _max(xs: Iterable[Any]) -> float | None:
    v = _vals(xs)
    return max(v) if v else None


def _min(xs: Iterable[Any]) -> float | None:
    v = _vals(xs)
    return min(v) if v else None


def _mean(xs: Iterable[Any]) -> float | None:
    v = _vals(xs)
    return float(np.mean(v)) if v else None


def _overrides(g: pd.DataFrame) -> dict[str, Any]:
    for raw in g["overrides"]:
        if isinstance(raw, str) and raw:
            try:
                out = json.loads(raw)
                if isinstance(out, dict):
                    return out
            except ValueError:
                continue
    return {}


# --------------------------------------------------------------------------------------------------
# sweep axes


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
