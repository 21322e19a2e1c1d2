"""One experiment's report: load from MLflow, aggregate, plot, format for the terminal, write HTML and
attach it to the newest validate/tune (parent) run so it also shows in the MLflow UI."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pgolf import compliance
from pgolf.dashboards import plots as P
from pgolf.dashboards import query as Q
from pgolf.formatting import integer, num, pvalue, text_table
from pgolf.trainers.contract import ARTIFACT_BYTES, EVAL_SECONDS, FINAL_BPB, TRAIN_SECONDS

__all__ = ["Report", "build_report", "format_runs", "format_text", "log_to_parent", "write_report"]

REPORT_ARTIFACT_DIR = "report"


@dataclass
class Report:
    data: Q.ExperimentData
    groups: pd.DataFrame
    curves: pd.DataFrame
    axes: dict[str, pd.Series]
    baseline: Q.ReportBaseline | None
    caps: compliance.Caps
    margin_nats: float
    alpha: float
    min_seeds: int
    threshold_bpb: float | None = None
    threshold_label: str = "record threshold"
    plots: list[P.PlotFile] = field(default_factory=list)
    html_path: str | None = None
    logged_to: str | None = None  # parent run id the HTML was attached to

    @property
    def experiment(self) -> str:
        return self.data.experiment


def build_report(tracking_uri: str, experiment: str, *, parent_run_id: str | None = None,
                 baseline: str | None = None, caps: compliance.Caps | None = None, min_seeds: int = 3,
                 margin_nats: float = 0.005, alpha: float = 0.01, curves: bool = True) -> Report:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    data = Q.load_runs(tracking_uri, experiment, parent_run_id=parent_run_id)
    caps = caps or _caps_from_parents(data)
    base = Q.baseline_from_spec(baseline, data.runs) if baseline else None
    groups = Q.group_table(data.runs, data.results, baseline=base, data=data, caps=caps, min_seeds=min_seeds,
                           margin_nats=margin_nats, alpha=alpha)
    ok_ids = data.runs.loc[(data.runs["counted"] == "yes") & (data.runs["status"] == "FINISHED"), "run_id"] \
        if not data.runs.empty else []
    curve_data = Q.load_curves(tracking_uri, ok_ids) if curves else pd.DataFrame(columns=["run_id", "key", "step", "value"])
    rep = Report(data=data, groups=groups, curves=curve_data, axes=Q.sweep_axes(data.runs), baseline=base, caps=caps,
                 margin_nats=margin_nats, alpha=alpha, min_seeds=min_seeds)
    rep.threshold_bpb, rep.threshold_label = _threshold(rep)
    return rep


def _caps_from_parents(data: Q.ExperimentData) -> compliance.Caps:
    """The experiment's own [budget] as the newest invocation recorded it (parent params), else the
    record-track caps."""
    pid = data.newest_parent()
    if pid is None:
        return compliance.Caps()
    try:
        params = Q.client(data.tracking_uri).get_run(pid).data.params
        return compliance.Caps(artifact_bytes=int(float(params.get("budget.artifact_bytes", 16_000_000))),
                               train_seconds=float(params.get("budget.train_seconds", 600.0)),
                               eval_seconds=float(params.get("budget.eval_seconds", 600.0)))
    except Exception:  # noqa: BLE001 - caps default to the rules when the parent cannot be read
        return compliance.Caps()


def _threshold(rep: Report) -> tuple[float | None, str]:
    tpbs = [v for v in rep.groups.get("tokens_per_byte", []) if v is not None and not pd.isna(v)]
    tpb = float(np.mean(tpbs)) if tpbs else None
    if rep.baseline is not None and rep.baseline.kind != "group":
        try:
            return rep.baseline.threshold_bpb(rep.margin_nats, tpb), f"{rep.baseline.label} - {rep.margin_nats:g} nats"
        except ValueError:
            return None, ""
    if rep.baseline is not None:
        return rep.baseline.threshold_bpb(rep.margin_nats, tpb), f"{rep.baseline.label} - {rep.margin_nats:g} nats"
    # The significance test the validate run logged already carries the threshold in nats.
    for pid in reversed(list(rep.data.parents.get("run_id", []))):
        sig = (rep.data.summaries.get(pid) or {}).get("significance") or {}
        for t in (sig.get("tests") or {}).values():
            thr, t_tpb = t.get("threshold_nats"), t.get("tokens_per_byte") or tpb
            if isinstance(thr, (int, float)) and t_tpb:
                from pgolf import stats

                return float(stats.nats_to_bpb(thr, t_tpb)), f"{sig.get('baseline') or 'baseline'} - {t.get('margin_nats', rep.margin_nats):g} nats"
    return None, ""


# --------------------------------------------------------------------------------------------------
# text


def score_rows(groups: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["variant", "config", "seeds", "val_bpb mean ± std", "95% CI", "val_loss mean ± std",
            "Δ nats", "Δ bpb", "p", "test"]
    rows = []
    for r in Q.records(groups):
        ok = f"{r['n_ok']}/{r['n_ok'] + r['n_failed']}"
        test = r["test"] or r["test_source"] or "-"
        if r["holm_p"] is not None:
            test += f", Holm p={pvalue(r['holm_p'])}"
        if r["significant"] is True:
            test += " *"
        scored = r["bpb_mean"] is not None
        rows.append([
            str(r["variant"]), r["config_hash"][:12], ok,
            f"{num(r['bpb_mean'])} ± {num(r['bpb_std'])}" if scored else "-",
            f"[{num(r['bpb_ci_low'])}, {num(r['bpb_ci_high'])}]" if r["bpb_ci_low"] is not None else "-",
            f"{num(r['loss_mean'])} ± {num(r['loss_std'])}" if scored else "-", num(r["delta_nats"], "+.4f"), num(r["delta_bpb"], "+.4f"),
            pvalue(r["p"]), test,
        ])
    return head, rows


def budget_rows(groups: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["variant", "config", "bytes max", "headroom", "steps", "ms/step", "train s (cap)", "eval s (cap)",
            "GPU-h (failed)", "$", "hardware", "compliant"]
    rows = []
    for r in Q.records(groups):
        rows.append([
            str(r["variant"]), r["config_hash"][:12], integer(r["artifact_bytes_max"]), integer(r["headroom_min"]),
            num(r["steps_mean"], ".0f"), num(r["step_ms_mean"], ".1f"),
            f"{num(r['train_s_max'], '.1f')} ({r['train_cap']:g})", f"{num(r['eval_s_max'], '.1f')} ({r['eval_cap']:g})",
            f"{num(r['gpu_hours'], '.3f')} ({num(r['gpu_hours_failed'], '.3f')})", num(r["usd"], ",.2f"),
            r["hardware"] or "-", "yes" if r["compliant"] else "NO",
        ])
    return head, rows


def cost_line(groups: pd.DataFrame) -> str:
    """Spend overall and per accepted improvement (variants significant against the baseline)."""
    c = Q.cost_summary(groups)
    usd = f" (${c['usd']:,.2f})" if c["usd"] is not None else " (no price logged: GPU-hours only)"
    line = f"cost: {c['gpu_hours']:.3f} GPU-hours{usd} over {len(groups)} variant(s)"
    if not c["tested"]:
        return line + "; cost per accepted improvement needs a baseline"
    line += f"; {c['accepted']} of {c['tested']} tested variant(s) accepted"
    if c["accepted"]:
        per_usd = f" (${c['usd_per_accepted']:,.2f})" if c.get("usd_per_accepted") is not None else ""
        line += f": {c['gpu_hours_per_accepted']:.3f} GPU-hours{per_usd} per accepted improvement"
    else:
        line += f": {c['tested_gpu_hours']:.3f} GPU-hours spent on tested variants, no improvement accepted yet"
    return line


def format_runs(runs: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["run", "seed", "config", "status", "counted", "val_bpb", "bytes", "train s", "eval s", "reason"]
    rows = []
    for r in runs.to_dict("records"):
        rows.append([str(r["run_name"]), "-" if pd.isna(r["seed"]) else str(int(r["seed"])), str(r["config_hash"])[:12],
                     str(r["status"]), str(r["counted"]), num(r.get(FINAL_BPB)), integer(r.get(ARTIFACT_BYTES)),
                     num(r.get(TRAIN_SECONDS), ".1f"), num(r.get(EVAL_SECONDS), ".1f"),
                     str(r["status_reason"] or "")[:80]])
    return head, rows


def format_text(rep: Report, *, all_runs: bool = False) -> str:
    d = rep.data
    lines = [f"experiment {d.experiment!r}: {len(d.runs)} trial run(s) in {len(rep.groups)} variant(s) "
             f"(config hashes), {len(d.parents)} validate/tune invocation(s); store {Q.relpath_or_uri(d.tracking_uri)}"]
    if d.empty:
        lines.append("no trial runs in this experiment yet")
        return "\n".join(lines)
    lines += ["", "scores (final/val_bpb in bits per byte, final/val_loss in nats per token; std ddof=1)",
              text_table(*score_rows(rep.groups), rule=True),
              "", f"budgets and compliance (caps: {rep.caps.artifact_bytes:,} bytes, train {rep.caps.train_seconds:g} s, "
                  f"eval {rep.caps.eval_seconds:g} s; >= {rep.min_seeds} seeds)",
              text_table(*budget_rows(rep.groups), right=(2, 3, 4, 5, 8, 9), rule=True), cost_line(rep.groups)]
    base = rep.baseline.label if rep.baseline else None
    sources = sorted({str(s) for s in rep.groups["test_source"] if s and not pd.isna(s)})
    if base:
        lines.append(f"\nbaseline: {base}; margin {rep.margin_nats:g} nats, alpha {rep.alpha:g} "
                     f"(one-sided; * = significant{', Holm-adjusted' if rep.groups['holm_p'].notna().any() else ''})")
    elif sources:
        bl = sorted({str(b) for b in rep.groups["baseline"] if b and not pd.isna(b)})
        lines.append(f"\nsignificance as logged by {', '.join(sources)} against {', '.join(bl)} (* = significant)")
    else:
        lines.append("\nno baseline: deltas and p-values need `--baseline HASH|VARIANT|NUMBER|PRESET` or a "
                     "[baseline] in the experiment file")
    for r in Q.records(rep.groups):
        if not r["compliant"]:
            lines.append(f"  {r['variant']} ({r['config_hash'][:12]}) not compliant: " + "; ".join(r["compliance_reasons"]))
    bad = d.runs[(d.runs["status"] != "FINISHED") | (d.runs["counted"] != "yes")]
    if all_runs:
        lines += ["", "runs", text_table(*format_runs(d.runs), rule=True)]
    elif not bad.empty:
        lines += ["", f"runs not counted or not finished ({len(bad)} of {len(d.runs)}; all runs: --all-runs)",
                  text_table(*format_runs(bad), rule=True)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# files


def make_plots(rep: Report, plot_dir: str) -> list[P.PlotFile]:
    d = rep.data
    made = [
        P.seed_scatter(d.runs, rep.groups, plot_dir, threshold_bpb=rep.threshold_bpb,
                       threshold_label=rep.threshold_label or "record threshold"),
        P.bpb_vs_bytes(d.runs, rep.groups, plot_dir, cap=rep.caps.artifact_bytes),
        P.curves(rep.curves, d.runs, rep.groups, plot_dir),
        P.sweep_axes(d.runs, rep.groups, rep.axes, plot_dir),
        P.phase_times(d.runs, rep.groups, d.results, plot_dir, caps=rep.caps),
    ]
    rep.plots = [p for p in made if p is not None]
    return rep.plots


def write_report(rep: Report, out_dir: str) -> str:
    """Plots (PNG + SVG) under out_dir/plots and one self-contained out_dir/report.html."""
    from pgolf.dashboards import html

    os.makedirs(out_dir, exist_ok=True)
    make_plots(rep, os.path.join(out_dir, "plots"))
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(html.render(rep))
    rep.html_path = path
    rep.groups.drop(columns=["pass_fractions"]).to_csv(os.path.join(out_dir, "variants.csv"), index=False)
    cols = [c for c in rep.data.runs.columns if not c.startswith("params.")]
    rep.data.runs[cols].to_csv(os.path.join(out_dir, "runs.csv"), index=False)
    return path


def log_to_parent(rep: Report, parent_run_id: str | None = None) -> str | None:
    """Attach report.html to a parent run (default: the newest validate/tune invocation) so the MLflow
    UI shows it; returns the run id, or None when the experiment has no parent run."""
    pid = parent_run_id or rep.data.newest_parent()
    if pid is None or rep.html_path is None:
        return None
    Q.client(rep.data.tracking_uri).log_artifact(pid, rep.html_path, REPORT_ARTIFACT_DIR)
    rep.logged_to = pid
    return pid
