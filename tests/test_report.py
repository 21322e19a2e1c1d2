"""`pgolf report` and pgolf.dashboards.query on MLflow stores with zero, one and many variants, with
failed, killed and re-run seeds; significance against a baseline; the import rule of dashboards/."""
import contextlib
import io
import os
import subprocess
import sys

import pandas as pd
import pytest

import report_store as S
from pgolf import stats
from pgolf.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def template():
    return S.template_db()


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


A, B, C, D = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd"


@pytest.fixture(scope="module")
def many(template, tmp_path_factory):
    """Four variants of one sweep: A clean (seed 2 failed once, then re-ran), B with a seed that ran out
    of budget, C where every seed failed, D over the artifact cap."""
    where = tmp_path_factory.mktemp("store_many")
    uri, root = S.new_store(template, where)
    exp = S.experiment(uri, root, "sweep-demo")
    pid = S.parent(uri, exp, kind="sweep", name="sweep-20260101-000000")
    ids = {}
    for seed, bpb in ((1, 1.2210), (2, 1.2225), (3, 1.2218)):
        if seed == 2:
            S.trial(uri, exp, pid, variant="lr=0.02", seed=2, config_hash=A, status="FAILED",
                    reason="trainer crashed (exit 1) after step 10: CUDA error")
        ids[("A", seed)] = S.trial(uri, exp, pid, variant="lr=0.02", seed=seed, config_hash=A,
                                   result=S.synthetic_result(seed=seed, config_hash=A, bpb=bpb),
                                   params={"optim.matrix_lr": 0.02}, overrides={"optim.matrix_lr": 0.02})
    for seed, bpb in ((1, 1.2290), (2, 1.2301)):
        S.trial(uri, exp, pid, variant="lr=0.04", seed=seed, config_hash=B,
                result=S.synthetic_result(seed=seed, config_hash=B, bpb=bpb), params={"optim.matrix_lr": 0.04},
                overrides={"optim.matrix_lr": 0.04})
    S.trial(uri, exp, pid, variant="lr=0.04", seed=3, config_hash=B, status="FAILED",
            reason="over budget: train 612.0 s > cap 600 s",
            result=S.synthetic_result(seed=3, config_hash=B, bpb=1.2280, train_s=612.0),
            params={"optim.matrix_lr": 0.04}, overrides={"optim.matrix_lr": 0.04})
    S.trial(uri, exp, pid, variant="lr=0.08", seed=1, config_hash=C, status="FAILED",
            reason="trainer killed by SIGKILL after step 3 (out of memory)", params={"optim.matrix_lr": 0.08})
    S.trial(uri, exp, pid, variant="lr=0.08", seed=2, config_hash=C, status="KILLED",
            reason="timed out: no result within the trial deadline of 1500 s", params={"optim.matrix_lr": 0.08})
    for seed, bpb in ((1, 1.2150), (2, 1.2160), (3, 1.2155)):
        S.trial(uri, exp, pid, variant="lr=0.01", seed=seed, config_hash=D,
                result=S.synthetic_result(seed=seed, config_hash=D, bpb=bpb, artifact_bytes=16_000_123),
                params={"optim.matrix_lr": 0.01}, overrides={"optim.matrix_lr": 0.01})
    return uri, exp, pid, ids, where


def test_zero_runs_store_and_missing_store_print_a_clear_message(template, tmp_path):
    uri, _ = S.new_store(template, tmp_path / "empty")
    rc, out, _ = run_cli("report", "--tracking-uri", uri, "--out", str(tmp_path / "r"))
    assert rc == 1
    assert "has no runs: nothing to report" in out and "pgolf validate experiments/smoke.toml" in out
    assert not (tmp_path / "r").exists()
    rc, out, _ = run_cli("report", "--tracking-uri", f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    assert rc == 1 and "no MLflow store at" in out


def test_experiment_without_trials_and_unknown_experiment(template, tmp_path):
    uri, root = S.new_store(template, tmp_path / "s")
    exp = S.experiment(uri, root, "only-parent")
    S.parent(uri, exp, status="FAILED")
    rc, out, _ = run_cli("report", "--tracking-uri", uri, "--experiment", "only-parent", "--out", str(tmp_path / "r"))
    assert rc == 1 and "no trial runs" in out
    rc, _, err = run_cli("report", "--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp_path / "r"))
    assert rc == 1 and "no MLflow experiment named 'nope'" in err and "only-parent" in err


def test_one_variant_table_matches_the_statistics_and_html_is_logged(template, tmp_path):
    uri, root = S.new_store(template, tmp_path / "one")
    exp = S.experiment(uri, root, "smoke")
    pid = S.parent(uri, exp)
    bpbs = {1: 1.1228, 2: 1.1236, 3: 1.1236}
    for seed, bpb in bpbs.items():
        S.trial(uri, exp, pid, variant="smoke", seed=seed, config_hash=A,
                result=S.synthetic_result(seed=seed, config_hash=A, bpb=bpb))
    out_dir = tmp_path / "reports"
    rc, out, err = run_cli("report", "--tracking-uri", uri, "--out", str(out_dir))
    assert rc == 0, err
    s = stats.describe(list(bpbs.values()))
    assert f"{s.mean:.4f} ± {s.std:.4f}" in out
    assert f"[{s.ci_low:.4f}, {s.ci_high:.4f}]" in out
    assert "3/3" in out and "15,000,000" in out and "1,000,000" in out  # bytes max and headroom
    assert "590.0 (600)" in out and "300.0 (600)" in out and "8xH100 80GB HBM3" in out
    line = next(x for x in out.splitlines() if x.startswith("smoke") and "8xH100" in x)
    assert line.rstrip().endswith("yes")
    html = (out_dir / "smoke" / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    for name in ("seed_scatter", "bpb_vs_bytes", "curves", "phase_times"):
        assert (out_dir / "smoke" / "plots" / f"{name}.png").exists()
        assert (out_dir / "smoke" / "plots" / f"{name}.svg").exists()
    assert not (out_dir / "smoke" / "plots" / "sweep_axes.png").exists()  # one variant: no axis
    arts = [a.path for a in S.client(uri).list_artifacts(pid, "report")]
    assert arts == ["report/report.html"]
    assert f"attached to parent run {pid}" in out


def test_many_variants_keep_failures_and_order_by_score(many):
    from pgolf.dashboards import query as Q

    uri, *_ = many
    data = Q.load_runs(uri, "sweep-demo")
    assert len(data.runs) == 12  # every launched trial, failed, killed and superseded included
    g = Q.group_table(data.runs, data.results, data=data).set_index("config_hash")
    assert list(g.index) == [D, A, B, C]  # by mean BPB, the variant without a score last
    assert g.loc[A, "n_ok"] == 3 and g.loc[A, "n_failed"] == 0 and g.loc[A, "compliant"]
    assert g.loc[B, "n_ok"] == 2 and g.loc[B, "failed"] == ["3:FAILED"] and not g.loc[B, "compliant"]
    assert any("over budget: train 612.0 s" in r for r in g.loc[B, "compliance_reasons"])
    assert g.loc[C, "n_ok"] == 0 and sorted(g.loc[C, "failed"]) == ["1:FAILED", "2:KILLED"]
    assert g.loc[C, "bpb_mean"] is None or g.loc[C, "bpb_mean"] != g.loc[C, "bpb_mean"]
    assert not g.loc[D, "compliant"] and any("16,000,123" in r for r in g.loc[D, "compliance_reasons"])
    counted = data.runs.set_index("run_name")
    assert sorted(data.runs.loc[data.runs["config_hash"] == A, "counted"]) == ["superseded", "yes", "yes", "yes"]
    assert counted.loc["lr=0.08-s1", "status"] == "FAILED"
    assert list(Q.sweep_axes(data.runs)) == ["optim.matrix_lr"]  # not run.seed, not data.data_path


def test_baseline_group_picks_the_test_and_applies_holm(many):
    from pgolf.dashboards import query as Q

    uri, *_ = many
    data = Q.load_runs(uri, "sweep-demo")
    base = Q.baseline_from_spec(B[:6], data.runs)
    assert base.kind == "group" and base.config_hash == B
    g = Q.group_table(data.runs, data.results, baseline=base, data=data).set_index("config_hash")
    a = data.runs[(data.runs["config_hash"] == A) & (data.runs["counted"] == "yes") & (data.runs["status"] == "FINISHED")]
    b = data.runs[(data.runs["config_hash"] == B) & (data.runs["counted"] == "yes") & (data.runs["status"] == "FINISHED")]
    expect = stats.compare(dict(zip(a["seed"].astype(int), a["final/val_loss"])),
                           dict(zip(b["seed"].astype(int), b["final/val_loss"])), tokens_per_byte=S.TOKENS_PER_BYTE)
    assert expect.test == stats.WELCH  # seeds {1,2,3} vs {1,2}: not pairable
    assert g.loc[A, "test"] == expect.test and g.loc[A, "p"] == pytest.approx(expect.p)
    assert g.loc[A, "delta_nats"] == pytest.approx(expect.delta_nats) and g.loc[A, "delta_nats"] < 0
    assert g.loc[A, "delta_bpb"] == pytest.approx(stats.nats_to_bpb(expect.delta_nats, S.TOKENS_PER_BYTE))
    assert g.loc[B, "test_source"] == "(baseline)" and pd.isna(g.loc[B, "p"])
    assert g.loc[A, "holm_p"] >= g.loc[A, "p"]  # A and D were both tested: Holm applies


def test_baseline_specs(many):
    from pgolf.dashboards import query as Q

    uri, *_ = many
    runs = Q.load_runs(uri, "sweep-demo", with_results=False).runs
    rec = Q.baseline_from_spec("1.2300", runs)
    assert rec.kind == "record" and rec.unit == "bpb" and rec.in_nats(0.41) == pytest.approx(stats.bpb_to_nats(1.23, 0.41))
    assert Q.baseline_from_spec("2.07 nats", runs).unit == "nats"
    assert Q.baseline_from_spec("#549", runs).kind == "seeds"
    assert Q.baseline_from_spec("lr=0.02", runs).config_hash == A
    with pytest.raises(ValueError, match="matches no finished variant"):
        Q.baseline_from_spec("lr=0.08", runs)  # nothing finished there


def test_logged_significance_is_shown_with_its_source(template, tmp_path):
    uri, root = S.new_store(template, tmp_path / "sig")
    exp = S.experiment(uri, root, "stack")
    test = stats.one_sample_vs_record([2.05, 2.051, 2.049], 2.07, tokens_per_byte=S.TOKENS_PER_BYTE).to_dict()
    pid = S.parent(uri, exp, summary=S.summary_for({"stack": (A, [(1, 1.2)])}, {"stack": test},
                                                   baseline="published record 2.07 nats"))
    for seed in (1, 2, 3):
        S.trial(uri, exp, pid, variant="stack", seed=seed, config_hash=A,
                result=S.synthetic_result(seed=seed, config_hash=A, bpb=1.19 + seed * 1e-4))
    rc, out, err = run_cli("report", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-log")
    assert rc == 0, err
    assert "one-sample t (one-sided)" in out
    assert f"{test['delta_nats']:+.4f}" in out
    assert "significance as logged by run validation-20260101-000000 against published record 2.07 nats" in out


def test_parent_filter(template, tmp_path):
    from pgolf.dashboards import query as Q

    uri, root = S.new_store(template, tmp_path)
    exp = S.experiment(uri, root, "two-invocations")
    first = S.parent(uri, exp, name="validation-first")
    S.trial(uri, exp, first, variant="v", seed=1, config_hash=A, result=S.synthetic_result(seed=1, config_hash=A, bpb=1.2))
    other = S.parent(uri, exp, name="validation-later")
    S.trial(uri, exp, other, variant="v", seed=9, config_hash=A, result=S.synthetic_result(seed=9, config_hash=A, bpb=1.2))
    d = Q.load_runs(uri, "two-invocations", parent_run_id=other[:10], with_results=False)
    assert list(d.runs["seed"]) == [9] and list(d.parents["run_id"]) == [other]
    assert len(Q.load_runs(uri, "two-invocations", with_results=False).runs) == 2
    with pytest.raises(LookupError):
        Q.load_runs(uri, "two-invocations", parent_run_id="ffffffff")


def test_many_variants_cli_in_a_fresh_interpreter_imports_neither_torch_nor_ray(many, tmp_path):
    """`pgolf report` end to end in a new process (load, aggregate, plot, HTML), then a look at
    sys.modules: the dashboards must run where torch and Ray are not installed."""
    uri, _, pid, _, _ = many
    code = (
        "import sys\n"
        "from pgolf.cli import main\n"
        f"rc = main(['report', '--tracking-uri', {uri!r}, '--out', {str(tmp_path)!r}, '--no-log'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))\n"
        "print('RC', rc, 'HEAVY', bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))
    out = proc.stdout
    assert proc.returncode == 0 and "RC 0 HEAVY []" in out, proc.stderr[-3000:] + out[-2000:]
    assert "lr=0.08" in out and "0/2" in out  # the variant where nothing finished is still a row
    assert "trainer killed by SIGKILL" in out and "timed out" in out and "superseded" in out
    assert "not compliant: failed seeds: seed 3 FAILED (over budget" in out
    assert (tmp_path / "sweep-demo" / "report.html").exists()
    assert (tmp_path / "sweep-demo" / "plots" / "sweep_axes.png").exists()
    assert not S.client(uri).list_artifacts(pid, "report")  # --no-log
    v = pd.read_csv(tmp_path / "sweep-demo" / "variants.csv")
    assert len(v) == 4 and set(v["config_hash"]) == {A, B, C, D}
    r = pd.read_csv(tmp_path / "sweep-demo" / "runs.csv")
    assert len(r) == 12 and (r["status"] != "FINISHED").sum() == 4
    for path in os.listdir(os.path.join(ROOT, "dashboards")):
        if path.endswith(".py"):
            text = open(os.path.join(ROOT, "dashboards", path), encoding="utf-8").read()
            assert "import torch" not in text and "import ray" not in text and "from ray" not in text, path
