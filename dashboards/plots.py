"""Report figures, each written as PNG (for the HTML report) and SVG (for papers and PRs).

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot, so
they need no display, leave no global figure state behind and do not change the caller's backend.

Every plotting function takes the tables of `pgolf.dashboards.query` and returns a `PlotFile`, or None
with nothing written when there is nothing to draw (e.g. a sweep-axis plot for a single variant).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pgolf import compliance
from pgolf.trainers.contract import ARTIFACT_BYTES, EVAL_SECONDS, FINAL_BPB, TRAIN_LOSS, VAL_BPB

__all__ = [
    "PlotFile",
    "bpb_vs_bytes",
    "curves",
    "phase_times",
    "seed_scatter",
    "sweep_axes",
    "variant_colors",
]

ARTIFACT_CAP = 16_000_000
MAX_LEGEND = 12
DPI = 110


@dataclass
class PlotFile:
    name: str  # file stem, e.g. "seed_scatter"
    title: str
    png: str
    svg: str
    caption: str = ""


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir: str, name: str, title: str, caption: str = "") -> PlotFile:
    fig.suptitle(title, fontsize=11)  # every figure says what it is, also when copied out of the report
    os.makedirs(out_dir, exist_ok=True)
    png, svg = os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}.svg")
    # Fixed metadata keeps the files byte-stable across runs of the same data (reviewable diffs).
    from matplotlib import rc_context

    fig.savefig(png, format="png", metadata={"Software": None})
    # Text stays text in the SVG: searchable, selectable, a fraction of the size of glyph paths.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "pgolf"}):
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return PlotFile(name, title, png, svg, caption)


def variant_colors(names: Sequence[str]) -> dict[str, tuple]:
    """Stable colors per variant in table order (tab10, tab20 beyond ten variants, then a colormap)."""
    from matplotlib import colormaps

    n = len(names)
    cmap = colormaps["tab10"] if n <= 10 else colormaps["tab20"] if n <= 20 else colormaps["viridis"]
    return {name: cmap(i if n <= 20 else i / max(n - 1, 1)) for i, name in enumerate(names)}


def _label(row: Mapping) -> str:
    return f"{row['variant']} ({row['config_hash'][:8]})" if row.get("config_hash") else str(row["variant"])


def _counted_ok(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["counted"] == "yes") & (runs["status"] == "FINISHED")]


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------------------------------
# seeds


def seed_scatter(runs: pd.DataFrame, groups: pd.DataFrame, out_dir: str, *, threshold_bpb: float | None = None,
                 threshold_label: str = "record threshold") -> PlotFile | None:
    """final/val_bpb of every counted seed per variant, the mean with its 95% CI, and the score a
    record has to beat (baseline minus the margin, in BPB)."""
    if groups.empty:
        return None
    ok = _counted_ok(runs)
    n = len(groups)
    fig = _figure(min(max(6.0, 1.1 * n + 3), 18.0), 4.6 if n <= 10 else 5.6)
    ax = fig.add_subplot()
    colors = variant_colors(list(groups["config_hash"]))
    rng = np.random.default_rng(0)
    ticks = []
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, row in enumerate(groups.to_dict("records")):
        g = ok[ok["config_hash"] == row["config_hash"]]
        y = g[FINAL_BPB].dropna().to_numpy()
        x = i + rng.uniform(-0.12, 0.12, size=len(y))
        ax.scatter(x, y, s=36, color=colors[row["config_hash"]], edgecolor="black", linewidth=0.5, zorder=3,
                   label=once("seeds") if len(y) else None)
        for xi, yi, s in zip(x, y, g.loc[g[FINAL_BPB].notna(), "seed"]):
            ax.annotate(str(s), (xi, yi), xytext=(5, 0), textcoords="offset points", fontsize=7, va="center", color="#444")
        if row["bpb_mean"] is not None and not pd.isna(row["bpb_mean"]):
            lo, hi = row["bpb_ci_low"], row["bpb_ci_high"]
            if lo is not None and not pd.isna(lo):
                ax.errorbar([i + 0.3], [row["bpb_mean"]], yerr=[[row["bpb_mean"] - lo], [hi - row["bpb_mean"]]],
                            fmt="none", ecolor="black", capsize=4, lw=1.2, zorder=4,
                            label=once("95% CI"))
            ax.plot([i - 0.25, i + 0.35], [row["bpb_mean"]] * 2, color="black", lw=2, zorder=4,
                    label=once("mean"))
        fails = f", {row['n_failed']} failed" if row["n_failed"] else ""
        ticks.append(f"{_short(str(row['variant']), 22)}\n{row['config_hash'][:8]}\n{row['n_ok']} ok{fails}")
    if n <= 10:
        ax.set_xticks(range(n), ticks, fontsize=8)
    else:  # a wide sweep: one slanted line per variant keeps the labels readable
        ax.set_xticks(range(n), [t.replace("\n", " ") for t in ticks], fontsize=6.5, rotation=60, ha="right")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("final/val_bpb (bits per byte, lower is better)")
    ax.grid(axis="y", alpha=0.3)
    caption = "Each dot is one seed; black bar: mean; error bar: t-based 95% CI."
    if threshold_bpb is not None and math.isfinite(threshold_bpb):
        lo, hi = ax.get_ylim()
        span = hi - lo
        if lo - 1.5 * span <= threshold_bpb <= hi + 1.5 * span:
            ax.axhline(threshold_bpb, color="crimson", ls="--", lw=1.2, label=f"{threshold_label} {threshold_bpb:.4f}")
        else:
            where = "below" if threshold_bpb < lo else "above"
            ax.text(0.01, 0.02 if where == "below" else 0.95, f"{threshold_label} {threshold_bpb:.4f} bpb is far {where} this range",
                    transform=ax.transAxes, color="crimson", fontsize=8)
        caption += f" Red: {threshold_label} ({threshold_bpb:.4f} BPB)."
    else:
        caption += " No baseline given, so no record threshold is drawn (pgolf report --baseline ...)."
    _legend(ax, fontsize=8, loc="best")
    return _save(fig, out_dir, "seed_scatter", "Seeds per variant", caption)


# --------------------------------------------------------------------------------------------------
# size


def bpb_vs_bytes(runs: pd.DataFrame, groups: pd.DataFrame, out_dir: str, *, cap: int = ARTIFACT_CAP) -> PlotFile | None:
    """Score against artifact size for every finished seed, with the decimal 16,000,000-byte cap."""
    ok = _counted_ok(runs).dropna(subset=[FINAL_BPB, ARTIFACT_BYTES])
    if ok.empty:
        return None
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    colors = variant_colors(list(groups["config_hash"]))
    for row in groups.to_dict("records")[:MAX_LEGEND * 3]:
        g = ok[ok["config_hash"] == row["config_hash"]]
        if g.empty:
            continue
        over = g[ARTIFACT_BYTES] > cap
        ax.scatter(g[ARTIFACT_BYTES] / 1e6, g[FINAL_BPB], s=36, color=colors[row["config_hash"]],
                   edgecolor=np.where(over, "crimson", "black"), linewidth=np.where(over, 1.8, 0.5),
                   label=_short(_label(row), 40), zorder=3)
    # Zoomed to the data: at smoke scale the artifacts are a few percent of the cap, and a 0..16 MB axis
    # would squeeze every seed into one column. The cap is a line when it is near, else a note.
    lo, hi = float(ok[ARTIFACT_BYTES].min()), float(ok[ARTIFACT_BYTES].max())
    pad = max((hi - lo) * 0.15, hi * 0.01)
    x0, x1 = (lo - pad) / 1e6, (hi + pad) / 1e6
    if cap / 1e6 <= x1 + (x1 - x0):
        x1 = max(x1, cap / 1e6 * 1.01)
        ax.axvline(cap / 1e6, color="crimson", ls="--", lw=1.2, label=f"cap {cap:,} bytes")
    else:
        ax.text(0.99, 0.02, f"cap {cap:,} bytes: {cap / hi:.1f}x the largest artifact, off this scale",
                transform=ax.transAxes, ha="right", color="crimson", fontsize=8)
    ax.set_xlim(x0, x1)
    ax.set_xlabel("artifact bytes (code + compressed model), millions (decimal)")
    ax.set_ylabel(FINAL_BPB)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[:MAX_LEGEND + 1], labels[:MAX_LEGEND + 1], fontsize=7, loc="best")
    n_over = int((ok[ARTIFACT_BYTES] > cap).sum())
    caption = (f"Every finished seed; dashed line: the {cap:,}-byte cap (decimal, not MiB)."
               + (f" {n_over} seed(s) over the cap (red edge)." if n_over else ""))
    return _save(fig, out_dir, "bpb_vs_bytes", "Score vs artifact bytes", caption)


# --------------------------------------------------------------------------------------------------
# curves


def _band(sub: pd.DataFrame) -> pd.DataFrame:
    """Per step: mean, min and max over seeds. Seeds that logged different steps (wall-clock-limited
    runs) are interpolated onto the union of steps within each seed's own range, never extrapolated."""
    pivot = sub.pivot_table(index="step", columns="run_id", values="value", aggfunc="last").sort_index()
    pivot = pivot.interpolate(method="index", limit_area="inside")
    return pd.DataFrame({"mean": pivot.mean(axis=1), "lo": pivot.min(axis=1), "hi": pivot.max(axis=1),
                         "n": pivot.notna().sum(axis=1)})


def curves(curve_data: pd.DataFrame, runs: pd.DataFrame, groups: pd.DataFrame, out_dir: str,
           keys: Sequence[str] = (TRAIN_LOSS, VAL_BPB)) -> PlotFile | None:
    """Training loss and periodic validation BPB against step: one line per variant (mean over its
    seeds) with a band from the lowest to the highest seed."""
    if curve_data is None or curve_data.empty:
        return None
    ok = _counted_ok(runs)
    keys = [k for k in keys if (curve_data["key"] == k).any()]
    if not keys:
        return None
    fig = _figure(6.0 * len(keys), 4.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colors = variant_colors(list(groups["config_hash"]))
    shown = groups.head(MAX_LEGEND)
    for ax, key in zip(axes, keys):
        for row in shown.to_dict("records"):
            ids = set(ok.loc[ok["config_hash"] == row["config_hash"], "run_id"])
            sub = curve_data[(curve_data["key"] == key) & curve_data["run_id"].isin(ids)]
            if sub.empty:
                continue
            b = _band(sub)
            c = colors[row["config_hash"]]
            # Markers when points are few: a run with one validation point is a dot, not an empty panel.
            ax.plot(b.index, b["mean"], color=c, lw=1.6, marker="o" if len(b) <= 30 else None, ms=4,
                    label=f"{_short(_label(row), 36)} (n={len(ids)})")
            if len(ids) > 1:
                ax.fill_between(b.index, b["lo"], b["hi"], color=c, alpha=0.22, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7, loc="best")
    more = f" Only the {MAX_LEGEND} best variants are drawn." if len(groups) > MAX_LEGEND else ""
    return _save(fig, out_dir, "curves", "Training and validation curves",
                 "Line: mean over finished seeds; band: lowest to highest seed." + more)


# --------------------------------------------------------------------------------------------------
# sweep axes


def sweep_axes(runs: pd.DataFrame, groups: pd.DataFrame, axes: Mapping[str, pd.Series], out_dir: str,
               max_axes: int = 8) -> PlotFile | None:
    """final/val_bpb against each config key that varies between variants: seeds as dots, the
    per-variant mean as a line (numeric axes) or a bar tick (categorical ones)."""
    if not axes:
        return None
    ok = _counted_ok(runs)
    if ok[FINAL_BPB].notna().sum() == 0:
        return None
    names = list(axes)[:max_axes]
    cols = min(3, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig = _figure(4.6 * cols, 3.8 * rows_n)
    grid = fig.subplots(rows_n, cols, squeeze=False)
    for k, name in enumerate(names):
        ax = grid[k // cols][k % cols]
        values = axes[name].loc[ok.index]
        y = ok[FINAL_BPB]
        mask = y.notna() & values.notna()
        numeric = pd.api.types.is_numeric_dtype(values)
        if numeric:
            xv = values[mask].astype(float)
            ax.scatter(xv, y[mask], s=22, color="tab:blue", alpha=0.7, edgecolor="black", linewidth=0.4, label="seed")
            means = y[mask].groupby(xv).mean().sort_index()
            ax.plot(means.index, means.to_numpy(), color="black", lw=1.4, marker="o", ms=4, label="mean")
            pos = xv[xv > 0]
            if len(pos) == len(xv) and len(pos) and pos.max() / pos.min() >= 30:
                ax.set_xscale("log")
        else:
            cats = sorted(values[mask].astype(str).unique())
            index = {c: i for i, c in enumerate(cats)}
            xv = values[mask].astype(str).map(index).astype(float)
            jitter = np.random.default_rng(k).uniform(-0.1, 0.1, size=len(xv))
            ax.scatter(xv + jitter, y[mask], s=22, color="tab:blue", alpha=0.7, edgecolor="black", linewidth=0.4, label="seed")
            means = y[mask].groupby(xv).mean()
            for xi, m in means.items():
                ax.plot([xi - 0.25, xi + 0.25], [m, m], color="black", lw=2, label="mean" if xi == means.index[0] else None)
            ax.set_xticks(range(len(cats)), [_short(c, 14) for c in cats], fontsize=8, rotation=20)
        ax.set_xlabel(name)
        ax.set_ylabel(FINAL_BPB)
        ax.grid(alpha=0.3)
        if k == 0:
            _legend(ax, fontsize=7)
    for k in range(len(names), rows_n * cols):
        grid[k // cols][k % cols].set_visible(False)
    extra = f" First {max_axes} of {len(axes)} axes shown." if len(axes) > max_axes else ""
    return _save(fig, out_dir, "sweep_axes", "Sweep axes vs score",
                 "Config keys that differ between variants; dots are seeds, black is the mean per value." + extra)


# --------------------------------------------------------------------------------------------------
# time budgets


def _phases_of(run_id: str, row: pd.Series, results: Mapping[str, dict]) -> dict[str, float]:
    res = results.get(run_id) or {}
    phases = res.get("phases")
    if isinstance(phases, Mapping) and phases:
        return {str(k): float(v) for k, v in phases.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    out = {}
    for col in row.index:
        m = re.fullmatch(r"time/(.+)_s", str(col))
        if m and col not in (EVAL_SECONDS,) and pd.notna(row[col]):
            out[m.group(1)] = float(row[col])
    return out


def phase_times(runs: pd.DataFrame, groups: pd.DataFrame, results: Mapping[str, dict], out_dir: str, *,
                caps: compliance.Caps = compliance.Caps(),
                policy: compliance.PhasePolicy = compliance.DEFAULT_POLICY) -> PlotFile | None:
    """Per variant, the slowest seed's timed phases stacked into the budget each counts against
    (train, eval, neither), next to the 600 s caps. Which phase counts where is the compliance policy."""
    ok = _counted_ok(runs)
    if ok.empty:
        return None
    per_variant = []
    for row in groups.to_dict("records"):
        g = ok[ok["config_hash"] == row["config_hash"]]
        worst: dict[str, dict[str, float]] = {}
        for budget in ("train", "eval", "report_only"):
            best_total, best = -1.0, {}
            for rid, r in zip(g["run_id"], (g.loc[i] for i in g.index)):
                ph = {k: v for k, v in _phases_of(rid, r, results).items() if policy.budget_of(k) == budget}
                tot = sum(ph.values())
                if tot > best_total:
                    best_total, best = tot, ph
            worst[budget] = best
        if any(worst.values()):
            per_variant.append((row, worst))
    if not per_variant:
        return None
    per_variant = per_variant[:MAX_LEGEND * 2]
    phases = sorted({p for _, w in per_variant for d in w.values() for p in d})
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    pcolor = {p: cmap(i % 20) for i, p in enumerate(phases)}
    n = len(per_variant)
    fig = _figure(max(7.0, 1.6 * n + 3.5), 4.8)
    ax = fig.add_subplot()
    width = 0.26
    offsets = {"train": -width, "eval": 0.0, "report_only": width}
    tops = [sum(d.values()) for _, w in per_variant for d in w.values()]
    ymax = max(max(tops) * 1.25, max(caps.train_seconds, caps.eval_seconds) * 1.12)
    visible = ymax * 0.004  # a slice thinner than this is not seen, so it gets no legend entry either
    seen = set()
    cap_of = {"train": caps.train_seconds, "eval": caps.eval_seconds}
    cap_style = {"train": ("crimson", "train cap"), "eval": ("darkorange", "eval cap")}
    for i, (row, worst) in enumerate(per_variant):
        for budget, d in worst.items():
            bottom = 0.0
            x = i + offsets[budget]
            for p in phases:
                if p in d and d[p] > 0:
                    show = d[p] >= visible and p not in seen
                    ax.bar(x, d[p], width * 0.92, bottom=bottom, color=pcolor[p], edgecolor="white", lw=0.4,
                           label=p if show else None)
                    seen.update([p] if show else [])
                    bottom += d[p]
            cap = cap_of.get(budget)
            pct = f"\n{100 * bottom / cap:.0f}%" if cap else ""
            ax.text(x, bottom, f"{budget.replace('report_only', 'other')}\n{bottom:.1f}s{pct}", ha="center",
                    va="bottom", fontsize=6.5)
            if cap:  # each cap drawn over the bars it judges, so equal caps do not hide each other
                color, name = cap_style[budget]
                ax.hlines(cap, x - width / 2, x + width / 2, colors=color, linestyles="--", lw=1.4,
                          label=f"{name} {cap:g} s" if i == 0 else None)
    ax.set_ylim(0, ymax)
    ax.set_xticks(range(n), [f"{_short(str(r['variant']), 20)}\n{r['config_hash'][:8]}" for r, _ in per_variant], fontsize=8)
    ax.set_ylabel("seconds (slowest seed per budget)")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, fontsize=7, loc="upper right", ncols=2)
    return _save(fig, out_dir, "phase_times", "Phase times vs caps",
                 "Per variant three bars: phases charged to the train cap, to the eval cap, and to neither "
                 "(compile warmup, quantization, compression), from the slowest seed of each.")
