"""The report as one self-contained HTML file: inline CSS, tables, and the PNG plots embedded as
base64 data URIs. No scripts, fonts or images are fetched, so the file opens offline, from an MLflow
artifact view, or as an e-mail attachment exactly as it was written."""
from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pgolf.dashboards import query as Q

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


def esc(x: Any) -> str:
    return _html.escape("" if x is None else str(x), quote=True)


def _missing(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, float) and not math.isfinite(x):
        return True
    try:
        return bool(pd.isna(x)) if not isinstance(x, (list, dict, tuple, set)) else False
    except (TypeError, ValueError):
        return False


def fmt(x: Any, spec: str = ".4f") -> str:
    return "–" if _missing(x) else format(x, spec)


def fint(x: Any) -> str:
    return "–" if _missing(x) else f"{int(x):,}"


def fp(x: Any) -> str:
    if _missing(x):
        return "–"
    return f"{x:.2g}" if x >= 1e-4 else f"{x:.1e}"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: set[int] | None = None,
          row_class: Sequence[str] | None = None, cls: str = "") -> str:
    """Cells are escaped unless they are (html,) 1-tuples, which lets callers pass pre-built markup."""
    numeric = numeric or set()
    out = [f'<table class="{esc(cls)}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        rc = f' class="{esc(row_class[i])}"' if row_class and row_class[i] else ""
        cells = []
        for j, c in enumerate(r):
            body = c[0] if isinstance(c, tuple) else esc(c)
            cells.append(f'<td class="num">{body}</td>' if j in numeric else f"<td>{body}</td>")
        out.append(f"<tr{rc}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _yes(ok: bool) -> tuple[str]:
    return ('<span class="yes">yes</span>',) if ok else ('<span class="no">no</span>',)


def _img(path: str) -> tuple[str, int]:
    """(data URI, pixel width); the width is read from the PNG header to lay out wide figures."""
    with open(path, "rb") as fh:
        raw = fh.read()
    width = int.from_bytes(raw[16:20], "big") if raw[:8] == b"\x89PNG\r\n\x1a\n" else 0
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii"), width


def _scores(groups: pd.DataFrame) -> str:
    head = ["variant", "config hash", "seeds ok", "failed", "val_bpb mean", "std", "95% CI", "val_loss mean", "std",
            "Δ nats", "Δ bpb", "p", "Holm p", "test", "baseline / source"]
    rows, cls = [], []
    for r in Q.records(groups):
        sig = r["significant"]
        p = fp(r["p"]) + (" ✓" if sig is True else "")
        ci = "–" if _missing(r["bpb_ci_low"]) else f"[{fmt(r['bpb_ci_low'], '.5f')}, {fmt(r['bpb_ci_high'], '.5f')}]"
        seeds = f"{r['n_ok']}: " + ", ".join(map(str, r["seeds"])) if r["seeds"] else "0"
        rows.append([r["variant"], (f"<code>{esc(r['config_hash'])}</code>",), seeds,
                     ", ".join(r["failed"]) or "–", fmt(r["bpb_mean"], ".5f"), fmt(r["bpb_std"], ".5f"),
                     ci, fmt(r["loss_mean"], ".5f"),
                     fmt(r["loss_std"], ".5f"), fmt(r["delta_nats"], "+.5f"), fmt(r["delta_bpb"], "+.5f"), p,
                     fp(r["holm_p"]), r["test"] or "–",
                     " / ".join(str(x) for x in (r["baseline"], r["test_source"]) if not _missing(x)) or "–"])
        cls.append("bad" if r["n_ok"] == 0 else "")
    return table(head, rows, numeric={4, 5, 6, 7, 8, 9, 10, 11, 12}, row_class=cls)


def _budgets(groups: pd.DataFrame) -> str:
    head = ["variant", "config hash", "artifact bytes max", "model bytes", "code bytes", "headroom min", "steps",
            "ms/step", "train s max", "train cap", "eval s max", "eval cap", "hardware", "record hardware", "compliant"]
    rows, cls = [], []
    for r in Q.records(groups):
        rows.append([r["variant"], (f"<code>{esc(r['config_hash'])}</code>",), fint(r["artifact_bytes_max"]),
                     fint(r["model_bytes_max"]), fint(r["code_bytes_max"]), fint(r["headroom_min"]),
                     fmt(r["steps_mean"], ".0f"), fmt(r["step_ms_mean"], ".1f"), fmt(r["train_s_max"], ".1f"),
                     f"{r['train_cap']:g}", fmt(r["eval_s_max"], ".1f"), f"{r['eval_cap']:g}", r["hardware"] or "–",
                     _yes(bool(r["record_grade"])), _yes(bool(r["compliant"]))])
        cls.append("" if r["compliant"] else "bad")
    return table(head, rows, numeric=set(range(2, 12)), row_class=cls)


def _compliance(groups: pd.DataFrame) -> str:
    out = []
    for r in Q.records(groups):
        fr = r.get("pass_fractions") or {}
        checks = ", ".join(f"{k} {v:.0%}" for k, v in fr.items())
        head = f"<p><b>{esc(r['variant'])}</b> <code>{esc(r['config_hash'])}</code>: "
        if r["compliant"]:
            out.append(head + f'<span class="yes">compliant</span>. <span class="note">Seeds passing each check: {esc(checks)}</span></p>')
        else:
            items = "".join(f"<li>{esc(x)}</li>" for x in r["compliance_reasons"])
            out.append(head + f'<span class="no">not compliant</span></p><ul class="reasons">{items}</ul>'
                       + (f'<p class="note">Seeds passing each check: {esc(checks)}</p>' if checks else ""))
    return "".join(out)


def _runs(runs: pd.DataFrame) -> str:
    head = ["run", "variant", "seed", "config hash", "status", "counted", "reason", "val_bpb", "val_loss", "bytes",
            "steps", "train s", "eval s", "node", "run id"]
    rows, cls = [], []
    for r in Q.records(runs):
        rows.append([r["run_name"], r["variant"], "–" if _missing(r["seed"]) else int(r["seed"]),
                     (f"<code>{esc(r['config_hash'])}</code>",), r["status"], r["counted"], r["status_reason"],
                     fmt(r.get("final/val_bpb"), ".5f"), fmt(r.get("final/val_loss"), ".5f"), fint(r.get("artifact/bytes")),
                     fmt(r.get("steps"), ".0f"), fmt(r.get("time/train_s"), ".1f"), fmt(r.get("time/eval_s"), ".1f"),
                     r.get("node_class") or "–", (f"<code>{esc(r['run_id'])}</code>",)])
        cls.append("bad" if r["status"] != "FINISHED" else ("muted" if r["counted"] != "yes" else ""))
    return table(head, rows, numeric={2, 7, 8, 9, 10, 11, 12}, row_class=cls)


def _parents(parents: pd.DataFrame) -> str:
    if parents.empty:
        return '<p class="note">No validate/tune invocation runs in this experiment.</p>'
    rows = [[p["run_name"], p["kind"], p["status"], p["status_reason"] or "–", str(p["start_time"])[:19],
             p["experiment_file"] or "–", (f"<code>{esc(p['run_id'])}</code>",)] for p in Q.records(parents)]
    return table(["invocation", "kind", "status", "reason", "started (UTC)", "experiment file", "parent run id"], rows)


def render(rep) -> str:
    """HTML for a `pgolf.dashboards.report.Report` whose plots have been made."""
    d = rep.data
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_bad = int((d.runs["status"] != "FINISHED").sum()) if not d.runs.empty else 0
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>pgolf report: {esc(d.experiment)}</title><style>{CSS}</style></head><body>",
        f"<h1>pgolf report: {esc(d.experiment)}</h1>",
        f'<p class="meta">{len(d.runs)} trial runs ({n_bad} not finished) in {len(rep.groups)} variants; '
        f"store <code>{esc(Q.relpath_or_uri(d.tracking_uri))}</code>; generated {esc(now)}. "
        "BPB = bits per byte (the score); loss in nats per token; std with ddof=1; CI t-based 95%.</p>",
    ]
    if d.empty:
        parts.append("<p>No trial runs in this experiment yet.</p></body></html>")
        return "\n".join(parts)
    if rep.baseline is not None:
        base = f"against {esc(rep.baseline.label)} (computed by this report)"
    elif rep.groups["test_source"].notna().any():
        base = "as logged by the validate/tune runs against the experiment's [baseline]"
    else:
        base = "none: no baseline given (<code>pgolf report --baseline HASH|VARIANT|NUMBER|PRESET</code>)"
    parts += [
        '<h2 id="scores">Scores per variant (config hash)</h2>',
        f'<p class="note">Significance: one-sided test that the variant beats the baseline by at least '
        f"{rep.margin_nats:g} nats at p &lt; {rep.alpha:g}; {base}. ✓ = significant.</p>",
        _scores(rep.groups),
        '<h2 id="budgets">Budgets and compliance</h2>',
        f'<p class="note">Caps: artifact {rep.caps.artifact_bytes:,} bytes (decimal), train {rep.caps.train_seconds:g} s, '
        f"eval {rep.caps.eval_seconds:g} s; at least {rep.min_seeds} seeds of one config hash.</p>",
        _budgets(rep.groups), _compliance(rep.groups),
        '<h2 id="plots">Plots</h2>',
    ]
    if not rep.plots:
        parts.append('<p class="note">No plots: no finished run has a score yet.</p>')
    parts.append('<div class="plots">')
    for p in rep.plots:
        src, width = _img(p.png)
        wide = ' class="wide"' if width > 1000 else ""
        parts.append(f'<figure id="plot-{esc(p.name)}"{wide}><img alt="{esc(p.title)}" src="{src}">'
                     f"<figcaption><b>{esc(p.title)}.</b> {esc(p.caption)}</figcaption></figure>")
    parts.append("</div>")
    parts += ['<h2 id="runs">All trial runs</h2>',
              '<p class="note">Every launched trial, including failed and killed ones. "counted" says which run '
              "represents each (config hash, seed): the newest finished one.</p>",
              _runs(d.runs), '<h2 id="invocations">Invocations</h2>', _parents(d.parents), "</body></html>"]
    return "\n".join(parts)
