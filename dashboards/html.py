"""The report as one self-contained HTML file: inline CSS, tables, and the PNG plots embedded as
base64 data URIs. No scripts, fonts or images are fetched, so the file opens offline, from an MLflow
artifact view, or as an e-mail attachment exactly as it was written."""
from __future__ import annotations

import base64
import datetime as _dt
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
from markupsafe import Markup

from pgolf.dashboards import query as Q
from pgolf.formatting import finite, integer, num, pvalue
from pgolf.trainers.contract import ARTIFACT_BYTES, EVAL_SECONDS, FINAL_BPB, FINAL_LOSS, TRAIN_SECONDS

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
DASH = "–"

__all__ = ["render", "table"]

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;
     color:#1d2330;padding:0 16px;line-height:1.4}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.meta{color:#5a6270;font-size:.9em} code{background:#f2f4f7;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-size:.86em;margin:8px 0 4px 0}
th,td{border:1px solid #d8dce3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.bad td{background:#fdecec} tr.muted td{color:#8a919c} .yes{color:#137333;font-weight:600}
.no{color:#b3261e;font-weight:600} .note{color:#5a6270;font-size:.88em;margin:2px 0 10px 0}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:18px;align-items:start}
figure{margin:0} figure.wide{grid-column:1/-1} figure img{max-width:100%;border:1px solid #e3e6eb}
figcaption{color:#5a6270;font-size:.88em} ul.reasons{margin:2px 0 8px 0;font-size:.88em}
"""


def fmt(x: Any, spec: str = ".4f") -> str:
    return num(x, spec, DASH)


def fint(x: Any) -> str:
    return integer(x, DASH)


def fp(x: Any) -> str:
    return pvalue(x, DASH)


def _missing(x: Any) -> bool:
    return x is None or (not isinstance(x, str) and finite(x) is None and bool(pd.isna(x)))


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: set[int] | None = None,
          row_class: Sequence[str] | None = None) -> dict:
    """A table for the template's `table` macro; a cell wrapped in Markup is pre-built HTML, anything
    else is escaped by the template."""
    return {"head": list(head), "numeric": numeric or set(),
            "rows": [{"cls": row_class[i] if row_class else "", "cells": list(r)} for i, r in enumerate(rows)]}


def _code(x: Any) -> Markup:
    return Markup("<code>{}</code>").format(x)


def _yes(ok: bool) -> Markup:
    return Markup('<span class="yes">yes</span>' if ok else '<span class="no">no</span>')


def _img(path: str) -> tuple[str, int]:
    """(data URI, pixel width); the width is read from the PNG header to lay out wide figures."""
    with open(path, "rb") as fh:
        raw = fh.read()
    width = int.from_bytes(raw[16:20], "big") if raw[:8] == b"\x89PNG\r\n\x1a\n" else 0
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii"), width


def _scores(groups: pd.DataFrame) -> dict:
    head = ["variant", "config hash", "seeds ok", "failed", "val_bpb mean", "std", "95% CI", "val_loss mean", "std",
            "Δ nats", "Δ bpb", "p", "Holm p", "test", "baseline / source"]
    rows, cls = [], []
    for r in Q.records(groups):
        sig = r["significant"]
        p = fp(r["p"]) + (" ✓" if sig is True else "")
        ci = "–" if _missing(r["bpb_ci_low"]) else f"[{fmt(r['bpb_ci_low'], '.5f')}, {fmt(r['bpb_ci_high'], '.5f')}]"
        seeds = f"{r['n_ok']}: " + ", ".join(map(str, r["seeds"])) if r["seeds"] else "0"
        rows.append([r["variant"], _code(r["config_hash"]), seeds,
                     ", ".join(r["failed"]) or "–", fmt(r["bpb_mean"], ".5f"), fmt(r["bpb_std"], ".5f"),
                     ci, fmt(r["loss_mean"], ".5f"),
                     fmt(r["loss_std"], ".5f"), fmt(r["delta_nats"], "+.5f"), fmt(r["delta_bpb"], "+.5f"), p,
                     fp(r["holm_p"]), r["test"] or "–",
                     " / ".join(str(x) for x in (r["baseline"], r["test_source"]) if not _missing(x)) or "–"])
        cls.append("bad" if r["n_ok"] == 0 else "")
    return table(head, rows, numeric={4, 5, 6, 7, 8, 9, 10, 11, 12}, row_class=cls)


def _budgets(groups: pd.DataFrame) -> dict:
    head = ["variant", "config hash", "artifact bytes max", "model bytes", "code bytes", "headroom min", "steps",
            "ms/step", "train s max", "train cap", "eval s max", "eval cap", "GPU-hours", "of which failed", "$",
            "hardware", "record hardware", "compliant"]
    rows, cls = [], []
    for r in Q.records(groups):
        rows.append([r["variant"], _code(r["config_hash"]), fint(r["artifact_bytes_max"]),
                     fint(r["model_bytes_max"]), fint(r["code_bytes_max"]), fint(r["headroom_min"]),
                     fmt(r["steps_mean"], ".0f"), fmt(r["step_ms_mean"], ".1f"), fmt(r["train_s_max"], ".1f"),
                     f"{r['train_cap']:g}", fmt(r["eval_s_max"], ".1f"), f"{r['eval_cap']:g}",
                     fmt(r["gpu_hours"], ".3f"), fmt(r["gpu_hours_failed"], ".3f"), fmt(r["usd"], ",.2f"),
                     r["hardware"] or "–", _yes(bool(r["record_grade"])), _yes(bool(r["compliant"]))])
        cls.append("" if r["compliant"] else "bad")
    return table(head, rows, numeric=set(range(2, 15)), row_class=cls)


def _compliance(groups: pd.DataFrame) -> list[dict]:
    out = []
    for r in Q.records(groups):
        fr = r.get("pass_fractions") or {}
        out.append({"variant": r["variant"], "config_hash": r["config_hash"], "compliant": bool(r["compliant"]),
                    "reasons": list(r["compliance_reasons"]), "checks": ", ".join(f"{k} {v:.0%}" for k, v in fr.items())})
    return out


def _runs(runs: pd.DataFrame) -> dict:
    head = ["run", "variant", "seed", "config hash", "status", "counted", "reason", "val_bpb", "val_loss", "bytes",
            "steps", "train s", "eval s", "node", "run id"]
    rows, cls = [], []
    for r in Q.records(runs):
        rows.append([r["run_name"], r["variant"], "–" if _missing(r["seed"]) else int(r["seed"]),
                     _code(r["config_hash"]), r["status"], r["counted"], r["status_reason"],
                     fmt(r.get(FINAL_BPB), ".5f"), fmt(r.get(FINAL_LOSS), ".5f"), fint(r.get(ARTIFACT_BYTES)),
                     fmt(r.get("steps"), ".0f"), fmt(r.get(TRAIN_SECONDS), ".1f"), fmt(r.get(EVAL_SECONDS), ".1f"),
                     r.get("node_class") or "–", _code(r["run_id"])])
        cls.append("bad" if r["status"] != "FINISHED" else ("muted" if r["counted"] != "yes" else ""))
    return table(head, rows, numeric={2, 7, 8, 9, 10, 11, 12}, row_class=cls)


def _parents(parents: pd.DataFrame) -> dict | None:
    if parents.empty:
        return None
    rows = [[p["run_name"], p["kind"], p["status"], p["status_reason"] or "–", str(p["start_time"])[:19],
             p["experiment_file"] or "–", _code(p["run_id"])] for p in Q.records(parents)]
    return table(["invocation", "kind", "status", "reason", "started (UTC)", "experiment file", "parent run id"], rows)


def _cost_line(groups: pd.DataFrame) -> str:
    from pgolf.dashboards.report import cost_line
    return cost_line(groups)


def render(rep) -> str:
    """HTML for a `pgolf.dashboards.report.Report` whose plots have been made."""
    import jinja2

    d = rep.data
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
    ctx: dict[str, Any] = {
        "css": Markup(CSS), "experiment": d.experiment, "n_runs": len(d.runs), "n_groups": len(rep.groups),
        "n_bad": int((d.runs["status"] != "FINISHED").sum()) if not d.runs.empty else 0,
        "store": Q.relpath_or_uri(d.tracking_uri), "empty": d.empty,
        "now": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if not d.empty:
        if rep.baseline is not None:
            base = f"against {rep.baseline.label} (computed by this report)"
        elif rep.groups["test_source"].notna().any():
            base = "as logged by the validate/tune runs against the experiment's [baseline]"
        else:
            base = Markup("none: no baseline given (<code>pgolf report --baseline HASH|VARIANT|NUMBER|PRESET</code>)")
        plots = []
        for p in rep.plots:
            src, width = _img(p.png)
            plots.append({"name": p.name, "title": p.title, "caption": p.caption, "src": src, "wide": width > 1000})
        ctx.update(
            baseline=base, margin=f"{rep.margin_nats:g}", alpha=f"{rep.alpha:g}", min_seeds=rep.min_seeds,
            caps_line=f"{rep.caps.artifact_bytes:,} bytes (decimal), train {rep.caps.train_seconds:g} s, "
                      f"eval {rep.caps.eval_seconds:g} s",
            scores=_scores(rep.groups), budgets=_budgets(rep.groups), compliance=_compliance(rep.groups),
            cost_line=_cost_line(rep.groups),
            plots=plots, runs=_runs(d.runs), invocations=_parents(d.parents))
    return env.get_template("report.html.j2").render(**ctx)
