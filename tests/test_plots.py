"""Report figures: every plot writes a real PNG and SVG with the lines that carry the rules (record
threshold, 16,000,000-byte cap, 600 s caps), failed runs do not break them, and they are byte-stable."""
import hashlib
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

import report_store as S
from pgolf import compliance

H = {"base": "111111111111", "wd": "222222222222", "dead": "333333333333", "big": "444444444444"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pgolf.dashboards import query as Q

    where = tmp_path_factory.mktemp("plots_store")
    uri, exp, pid = S.store_with_parent(where / "s", "plots", kind="sweep")
    for seed, bpb in ((1, 1.1230), (2, 1.1236), (3, 1.1233)):
        S.trial(uri, exp, pid, variant="base", seed=seed, config_hash=H["base"], params={"optim.muon_wd": 0.0},
                result=S.synthetic_result(seed=seed, config_hash=H["base"], bpb=bpb))
        S.trial(uri, exp, pid, variant="wd", seed=seed, config_hash=H["wd"], params={"optim.muon_wd": 0.04},
                result=S.synthetic_result(seed=seed, config_hash=H["wd"], bpb=bpb - 0.004, train_s=640.0, ttt="legal"))
    S.trial(uri, exp, pid, variant="dead", seed=1, config_hash=H["dead"], status="FAILED", reason="crashed",
            params={"optim.muon_wd": 0.08})
    S.trial(uri, exp, pid, variant="big", seed=1, config_hash=H["big"], params={"optim.muon_wd": 0.02},
            result=S.synthetic_result(seed=1, config_hash=H["big"], bpb=1.1190, artifact_bytes=16_400_000))
    d = Q.load_runs(uri, "plots")
    groups = Q.group_table(d.runs, d.results, data=d)
    curves = Q.load_curves(uri, d.runs.loc[d.runs["status"] == "FINISHED", "run_id"])
    return d, groups, curves, Q.sweep_axes(d.runs)


def check_files(pf, *, texts=()):
    assert pf is not None
    with open(pf.png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    img = imread(pf.png)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert np.std(img[..., :3]) > 0.05  # not a blank canvas
    root = ET.parse(pf.svg).getroot()
    assert root.tag.endswith("svg")
    svg = open(pf.svg, encoding="utf-8").read()
    for t in texts:
        assert t in svg, f"{t!r} not in {pf.svg}"
    return svg


def test_seed_scatter_with_threshold_and_failures(data, tmp_path):
    from pgolf.dashboards import plots

    d, groups, _, _ = data
    pf = plots.seed_scatter(d.runs, groups, str(tmp_path), threshold_bpb=1.1205, threshold_label="record threshold")
    svg = check_files(pf, texts=("record threshold 1.1205", "1 failed", "3 ok", "95% CI", "mean"))
    assert "dead" in svg  # the variant with no finished seed still has its column
    far = plots.seed_scatter(d.runs, groups, str(tmp_path / "far"), threshold_bpb=0.5)
    check_files(far, texts=("far below this range",))
    none = plots.seed_scatter(d.runs, groups, str(tmp_path / "none"))
    assert "No baseline" in none.caption


def test_bpb_vs_bytes_draws_the_decimal_cap(data, tmp_path):
    from pgolf.dashboards import plots

    d, groups, _, _ = data
    pf = plots.bpb_vs_bytes(d.runs, groups, str(tmp_path))
    check_files(pf, texts=("cap 16,000,000 bytes",))
    assert "1 seed(s) over the cap" in pf.caption


def test_curves_have_one_line_per_variant_with_seed_bands(data, tmp_path):
    from pgolf.dashboards import plots

    d, groups, curves, _ = data
    assert set(curves["key"]) == {"train/loss", "val/bpb"}
    pf = plots.curves(curves, d.runs, groups, str(tmp_path))
    svg = check_files(pf, texts=("train/loss", "val/bpb", "(n=3)", "(n=1)"))
    assert svg.count("<path") > 10
    assert plots.curves(curves.iloc[0:0], d.runs, groups, str(tmp_path / "x")) is None


def test_curve_band_interpolates_inside_each_seed_only():
    from pgolf.dashboards.plots import _band

    df = pd.DataFrame({"run_id": ["a", "a", "a", "b", "b"], "step": [0, 10, 20, 0, 20],
                       "value": [3.0, 2.0, 1.0, 4.0, 2.0]})
    b = _band(df)
    assert b.loc[10, "lo"] == 2.0 and b.loc[10, "hi"] == 3.0 and b.loc[10, "n"] == 2
    df2 = pd.DataFrame({"run_id": ["a", "a", "b"], "step": [0, 20, 0], "value": [3.0, 1.0, 4.0]})
    assert _band(df2).loc[20, "n"] == 1  # b stopped at step 0: never extrapolated


def test_sweep_axes_plot_and_single_variant_gives_none(data, tmp_path):
    from pgolf.dashboards import plots

    d, groups, _, axes = data
    assert list(axes) == ["optim.muon_wd"]
    check_files(plots.sweep_axes(d.runs, groups, axes, str(tmp_path)), texts=("optim.muon_wd", "final/val_bpb"))
    assert plots.sweep_axes(d.runs, groups, {}, str(tmp_path / "none")) is None


def test_phase_times_stack_against_the_caps(data, tmp_path):
    from pgolf.dashboards import plots

    d, groups, _, _ = data
    pf = plots.phase_times(d.runs, groups, d.results, str(tmp_path), caps=compliance.Caps())
    svg = check_files(pf, texts=("train cap 600 s", "gptq_calibration", "sliding_eval", "compress"))
    assert "640.0s" in svg  # the slow variant's train bar total (train + GPTQ calibration)
    pf2 = plots.phase_times(d.runs, groups, d.results, str(tmp_path / "caps"),
                            caps=compliance.Caps(train_seconds=600, eval_seconds=300))
    check_files(pf2, texts=("eval cap 300 s",))


def test_plots_are_byte_stable(data, tmp_path):
    from pgolf.dashboards import plots

    d, groups, _, _ = data
    a = plots.bpb_vs_bytes(d.runs, groups, str(tmp_path / "a"))
    b = plots.bpb_vs_bytes(d.runs, groups, str(tmp_path / "b"))
    for x, y in ((a.png, b.png), (a.svg, b.svg)):
        assert hashlib.sha256(open(x, "rb").read()).digest() == hashlib.sha256(open(y, "rb").read()).digest()


def test_nothing_finished_gives_no_score_plots(tmp_path):
    from pgolf.dashboards import plots
    from pgolf.dashboards import query as Q

    runs = Q._normalize_runs(pd.DataFrame([{"run_id": "r1", "status": "FAILED", "tags.config_hash": "h",
                                             "tags.seed": "1", "tags.variant": "v", "start_time": 1}]))
    groups = Q.group_table(runs, {})
    assert groups.loc[0, "n_failed"] == 1 and not groups.loc[0, "compliant"]
    assert plots.bpb_vs_bytes(runs, groups, str(tmp_path)) is None
    assert plots.phase_times(runs, groups, {}, str(tmp_path)) is None
    check_files(plots.seed_scatter(runs, groups, str(tmp_path)), texts=("1 failed",))


def _figure_of(monkeypatch, plots, call):
    """Run a plot function and return its matplotlib Figure instead of the saved files."""
    seen = {}

    def keep(fig, out_dir, name, title, caption=""):
        fig.suptitle(title)
        seen["fig"], seen["caption"] = fig, caption
        return fig

    monkeypatch.setattr(plots, "_save", keep)
    assert call() is not None
    return seen["fig"]


def test_every_figure_has_a_title(data, tmp_path):
    from pgolf.dashboards import plots

    d, groups, curves, axes = data
    for pf in (plots.seed_scatter(d.runs, groups, str(tmp_path)), plots.bpb_vs_bytes(d.runs, groups, str(tmp_path)),
               plots.curves(curves, d.runs, groups, str(tmp_path)),
               plots.sweep_axes(d.runs, groups, axes, str(tmp_path)),
               plots.phase_times(d.runs, groups, d.results, str(tmp_path))):
        assert pf.title and pf.title in open(pf.svg, encoding="utf-8").read(), pf.name


def test_curves_with_one_point_per_run_draw_markers(data, tmp_path, monkeypatch):
    from pgolf.dashboards import plots

    d, groups, curves, _ = data
    one = curves[curves["key"] == "val/bpb"].groupby("run_id").tail(1)
    fig = _figure_of(monkeypatch, plots, lambda: plots.curves(one, d.runs, groups, str(tmp_path)))
    lines = [ln for ax in fig.axes for ln in ax.lines if len(ln.get_xdata()) == 1]
    assert lines and all(ln.get_marker() not in (None, "", "None") for ln in lines)


def test_score_vs_bytes_zooms_to_small_artifacts(tmp_path, monkeypatch):
    from pgolf.dashboards import plots
    from pgolf.dashboards import query as Q

    uri, exp, pid = S.store_with_parent(tmp_path / "s", "small")
    for seed in (1, 2, 3):
        S.trial(uri, exp, pid, variant="smoke", seed=seed, config_hash=H["base"],
                result=S.synthetic_result(seed=seed, config_hash=H["base"], bpb=1.97 + seed / 1000,
                                          artifact_bytes=600_000 + 1000 * seed))
    d = Q.load_runs(uri, "small")
    groups = Q.group_table(d.runs, d.results, data=d)
    fig = _figure_of(monkeypatch, plots, lambda: plots.bpb_vs_bytes(d.runs, groups, str(tmp_path)))
    lo, hi = fig.axes[0].get_xlim()
    assert 0.5 < lo < 0.601 and 0.603 < hi < 0.7  # millions of bytes around the data, not 0..16.6
    assert any("cap 16,000,000 bytes" in t.get_text() for t in fig.axes[0].texts)


def test_phase_legend_lists_visible_phases_and_both_caps(data, tmp_path, monkeypatch):
    from pgolf.dashboards import plots

    d, groups, _, _ = data
    results = {rid: {**r, "phases": {**r["phases"], "serialize": 1e-4}} if r and "phases" in r else r
               for rid, r in d.results.items()}
    fig = _figure_of(monkeypatch, plots, lambda: plots.phase_times(d.runs, groups, results, str(tmp_path)))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "serialize" not in labels and "compress" in labels
    assert "train cap 600 s" in labels and "eval cap 600 s" in labels
