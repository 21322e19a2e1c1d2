"""`pgolf validate` and `pgolf tune` end to end on CPU through the session's local Ray, and experiment
files that must fail before anything starts."""
import json
import os
import textwrap

import pytest

from orch_helpers import SMOKE, children, run_cli, tiny_args
from pgolf import tracking


def _common(tmp_path, data_root):
    return ["--data-dir", str(data_root), "--runs-dir", str(tmp_path / "runs")]


def test_validate_smoke_end_to_end(ray_session, tracking_uri, data_root, tmp_path, capsys):
    # A published record to beat (in nats, far above what 6 steps reach) exercises the significance path.
    baseline = ["baseline.record=9.0", "baseline.unit=nats", "baseline.name=made-up"]
    rc, out = run_cli(["validate", SMOKE, *_common(tmp_path, data_root), *tiny_args(baseline)], capsys)
    assert rc == 0, out
    assert "final/val_bpb mean ± std" in out and "all 3 requested seed(s) finished OK" in out
    assert "significance vs made-up 9 nats" in out and "one-sample t (one-sided) n=3" in out
    assert "-> significant" in out

    parents, kids = children(tracking_uri, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert sorted(r.info.run_name for r in kids) == ["smoke-s1", "smoke-s2", "smoke-s3"]
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert len({r.data.tags["config_hash"] for r in kids}) == 1
    c = tracking.client(tracking_uri)
    for r in kids:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["seed"] in {"1", "2", "3"} and r.data.tags["variant"] == "smoke"
        assert r.data.tags["ray_trial_id"] != "local" and r.data.tags["node_class"].startswith("cpu")
        for key in ("final/val_bpb", "final/val_loss", "artifact/bytes", "time/train_s", "data/tokens_per_byte"):
            assert key in r.data.metrics, key
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val/bpb")] == [0, 3, 6]

    pm = parent.data.metrics
    bpbs = [r.data.metrics["final/val_bpb"] for r in kids]
    assert pm["final/val_bpb_mean"] == pytest.approx(sum(bpbs) / 3)
    assert pm["smoke/n_ok"] == 3 and pm["smoke/compliant"] == 1.0 and pm["test_p"] < 0.01
    summary = json.load(open(c.download_artifacts(parent.info.run_id, "validation_summary.json", str(tmp_path))))
    v = summary["variants"]["smoke"]
    assert summary["all_ok"] and v["n_ok"] == 3 and v["final/val_bpb"]["n"] == 3
    assert v["compliance"]["compliant"] is True


def _sweep_file(tmp_path, search, axes, extra=""):
    path = tmp_path / f"sweep_{search}.toml"
    path.write_text(textwrap.dedent(f"""
        extends = "{SMOKE}"
        [experiment]
        name = "sweep-{search}"
        seeds = [1, 2]
        [sweep]
        search = "{search}"
        seed = 3
        {extra}
        [sweep.axes]
    """) + axes)
    return str(path)


def _by_variant(kids):
    out = {}
    for r in kids:
        out.setdefault(r.data.tags["variant"], set()).add(int(r.data.tags["seed"]))
    return out


def test_tune_grid_with_asha(ray_session, tracking_uri, data_root, tmp_path, capsys):
    # ASHA may stop any of these at the step-3 rung (which ones depends on timing): a stop is recorded as
    # KILLED with its reason and is not a failure of the sweep.
    path = _sweep_file(tmp_path, "grid", '"optim.matrix_lr" = [0.01, 0.02, 0.05]\n', extra='scheduler = "asha"')
    rc, out = run_cli(["tune", path, "--seeds", "1", *_common(tmp_path, data_root), *tiny_args()], capsys)
    assert rc == 0, out
    parents, kids = children(tracking_uri, "sweep-grid")
    assert parents[0].data.tags["pgolf.kind"] == "sweep"
    assert _by_variant(kids) == {"matrix_lr=0.01": {1}, "matrix_lr=0.02": {1}, "matrix_lr=0.05": {1}}
    for r in kids:
        assert r.data.params["optim.matrix_lr"] == r.data.tags["variant"].split("=")[1]
        assert r.info.status == "FINISHED" or (r.info.status == "KILLED"
                                               and r.data.tags["status_reason"].startswith("stopped")), r.data.tags
    assert "best: matrix_lr=" in out


def test_tune_random_repeats_each_sampled_config_over_seeds(tmp_path, data_root):
    """Random points are drawn on the driver, once, and become trial specs exactly like grid points
    (which test_tune_grid_with_asha runs through Ray): checked here without training."""
    from pgolf.experiment import load_experiment
    from pgolf.specs import sweep_points, sweep_specs

    path = _sweep_file(tmp_path, "random", '"optim.matrix_lr" = {type = "loguniform", low = 0.01, high = 0.1}\n',
                       extra="num_samples = 2")
    exp = load_experiment(path)
    points = sweep_points(exp)
    assert points == sweep_points(load_experiment(path)) and len({p["optim.matrix_lr"] for p in points}) == 2
    assert all(0.01 <= p["optim.matrix_lr"] <= 0.1 for p in points)
    specs = sweep_specs(exp, exp.meta.seeds, str(data_root))
    by_variant = {}
    for s in specs:
        by_variant.setdefault(s.variant, set()).add(s.seed)
        assert s.cfg.optim.matrix_lr == s.overrides["optim.matrix_lr"] and s.cfg.run.seed == s.seed
    assert len(by_variant) == 2 and all(seeds == {1, 2} for seeds in by_variant.values())
    assert {s.cfg.optim.matrix_lr for s in specs} == {p["optim.matrix_lr"] for p in points}
    assert len({s.config_hash for s in specs}) == 2  # one per point: the hash leaves the seed out


def test_tune_optuna_repeats_each_suggestion_over_seeds(ray_session, tracking_uri, data_root, tmp_path, capsys):
    path = _sweep_file(tmp_path, "optuna", '"optim.matrix_lr" = {type = "uniform", low = 0.01, high = 0.08}\n'
                       '"optim.muon_backend_steps" = [3, 5]\n', extra="num_samples = 2")
    rc, out = run_cli(["tune", path, *_common(tmp_path, data_root), *tiny_args()], capsys)
    assert rc == 0, out
    parents, kids = children(tracking_uri, "sweep-optuna")
    assert len(kids) == 4
    by_variant = _by_variant(kids)
    assert all(seeds == {1, 2} for seeds in by_variant.values()), by_variant
    summary = json.load(open(tracking.client(tracking_uri).download_artifacts(
        parents[0].info.run_id, "validation_summary.json", str(tmp_path))))
    assert summary["ranking"] and set(summary["ranking"]) == set(by_variant)


BAD_FILES = {
    "unknown key": ('[experiment]\nseedz = [1]\n', "unknown key 'seedz' in [experiment]"),
    "wrong type": ('[resources]\ngpus = "eight"\n', "[resources] gpus"),
    "unknown config key": ('[config.optim]\nmatrix_lrr = 0.1\n', "config.optim.matrix_lrr"),
    "bad variant": ('[variants.a]\n"model.num_layerz" = 3\n', "model.num_layerz"),
    "bad sweep axis": ('[sweep]\nsearch = "grid"\n[sweep.axes]\n"optim.matrix_lr" = {type = "uniform", low = 0.1, high = 0.01}\n',
                       "low < high"),
    "grid over a range": ('[sweep]\nsearch = "grid"\n[sweep.axes]\n"optim.matrix_lr" = {type = "uniform", low = 0.01, high = 0.1}\n',
                          "grid search needs a list of values"),
    "bad search": ('[sweep]\nsearch = "bayes"\n[sweep.axes]\n"optim.matrix_lr" = [0.1]\n', "search = 'bayes'"),
    "bad baseline unit": ('[baseline]\nrecord = 1.2\nunit = "bits"\n', "unit = 'bits'"),
    "bad baseline seed": ('[baseline.per_seed]\nfirst = 1.2\n', "key 'first' is not a seed number"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_experiment_fails_before_any_trial(case, tmp_path, monkeypatch, capsys, data_root):
    import ray

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start for a bad experiment file")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGOLF_TRACKING_URI", raising=False)
    body, message = BAD_FILES[case]
    path = tmp_path / "bad.toml"
    path.write_text(f'extends = "{SMOKE}"\n' + body)
    command = "tune" if "sweep" in body else "validate"
    rc, _ = run_cli([command, str(path), "--data-dir", str(data_root)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "bad.toml" in err
    assert not (tmp_path / "mlflow.db").exists()  # nothing was recorded either


def test_ui_dry_run_prints_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGOLF_TRACKING_URI", raising=False)
    rc, out = run_cli(["ui", "--dry-run", "--port", "5055"], capsys)
    assert rc == 0
    assert f"--backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out and "--host 127.0.0.1" in out
    assert "URL: http://127.0.0.1:5055" in out
    assert os.path.basename(out.split()[0]).startswith("python")


SWEEPS = sorted(os.path.join(os.path.dirname(SMOKE), "sweeps", f)
                for f in os.listdir(os.path.join(os.path.dirname(SMOKE), "sweeps")) if f.endswith(".toml"))


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_sweep_files_resolve_on_the_pr691_stack(path, data_root):
    """Every shipped sweep extends the #691 stack, names real config fields and expands (no Ray here;
    `pgolf tune FILE --smoke` runs them)."""
    from pgolf.experiment import load_experiment
    from pgolf.specs import build_spec, check_sweep, optuna_space, sweep_points

    exp = load_experiment(path, smoke=True)
    assert exp.lineage[-2].endswith(os.path.join("stacks", "pr691.toml"))
    check_sweep(exp, "sweep")
    if exp.sweep.search == "optuna":
        space = optuna_space(exp)
        assert set(space) == set(exp.sweep.axes)
        point = {axis: spec["low"] if isinstance(spec, dict) else spec[0] for axis, spec in exp.sweep.axes.items()}
        points = [point]
    else:
        points = sweep_points(exp)
        assert len(points) > 1
    specs = [build_spec(exp, None, exp.meta.seeds[0], p, str(data_root)) for p in points]
    assert len({s.config_hash for s in specs}) == len(specs)  # every point is a distinct config
    for spec, point in zip(specs, points):
        for axis, value in point.items():
            section, key = axis.split(".")
            assert spec.config[section][key] == value


def test_significance_against_published_per_seed_bpb(tmp_path):
    """Published per-seed BPB converted with tokens_per_byte, paired when the seeds match, Holm across
    variants; computed here by hand from the same numbers."""
    import math

    from pgolf.experiment import load_experiment
    from pgolf.summary import significance

    path = tmp_path / "b.toml"
    path.write_text(textwrap.dedent(f"""
        extends = "{SMOKE}"
        [baseline]
        name = "record"
        unit = "bpb"
        tokens_per_byte = 0.4
        per_seed = {{1 = 1.20, 2 = 1.21, 3 = 1.19}}
    """))
    exp = load_experiment(str(path))
    to_nats = math.log(2) / 0.4
    new = {"1": 1.15, "2": 1.16, "3": 1.14}  # bpb, 0.05 better on every seed
    variants = {name: {"config_hash": name, "tokens_per_byte": 0.4,
                       "seeds": {s: {"final/val_loss": (v + off) * to_nats} for s, v in new.items()}}
                for name, off in (("better", 0.0), ("same", 0.05))}
    sig = significance(exp, variants, [], "sqlite:///unused.db", "0")
    better, same = sig["tests"]["better"], sig["tests"]["same"]
    assert better["test"].startswith("paired") and better["n"] == 3
    assert better["delta_nats"] == pytest.approx(-0.05 * to_nats)
    assert better["delta_bpb"] == pytest.approx(-0.05)
    assert better["significant"] and not same["significant"]
    assert better["holm_p"] < 0.01 and same["holm_p"] == pytest.approx(1.0)
