"""Budget caps and futility stopping end to end on CPU (the session's Ray, tiny smoke trials)."""
import json

import pytest

from orch_helpers import SMOKE, children, run_cli, tiny_args
from pgolf import tracking

CPU_PRICE = 1.0  # $/CPU-hour: a smoke trial holds 1 CPU, so dollars follow its wall time


def _common(tmp_path, data_root):
    return ["--data-dir", str(data_root), "--runs-dir", str(tmp_path / "runs"), "--max-concurrent", "1",
            "--cpu-hour-usd", str(CPU_PRICE)]


def _summary(tracking_uri, parent, tmp_path):
    c = tracking.client(tracking_uri)
    return json.load(open(c.download_artifacts(parent.info.run_id, "validation_summary.json", str(tmp_path))))


def test_stop_futile_runs_one_seed_and_cancels_two(ray_session, tracking_uri, data_root, tmp_path, capsys):
    # A record of 0.1 nats cannot be beaten; after one seed, no values of the other two can make a
    # 3-seed one-sample test significant (sup t bound 2 < 6.965), so they never start.
    baseline = ["baseline.record=0.1", "baseline.unit=nats", "baseline.name=unbeatable"]
    rc, out = run_cli(["validate", SMOKE, *_common(tmp_path, data_root), "--stop-futile", *tiny_args(baseline)],
                      capsys)
    assert rc == 1, out  # not every requested seed finished
    assert "futility: smoke: cancelled 2 seed(s) (2, 3)" in out and "[exact bound]" in out
    assert "--stop-futile cancelled 2 seed(s), saving" in out
    parents, kids = children(tracking_uri, "smoke")
    by_seed = {r.data.tags["seed"]: r for r in kids}
    assert by_seed["1"].info.status == "FINISHED" and by_seed["1"].data.metrics["cost/gpu_seconds"] == 0.0
    assert by_seed["1"].data.metrics["cost/cpu_seconds"] > 0 and by_seed["1"].data.metrics["cost/usd"] > 0
    for s in ("2", "3"):  # recorded, never launched
        r = by_seed[s]
        assert r.info.status == "KILLED" and r.data.tags["pgolf.outcome"] == "CANCELLED"
        assert "futile" in r.data.tags["status_reason"] and "nats lower" in r.data.tags["status_reason"]
        assert "ray_trial_id" not in r.data.tags
    pm = parents[0].data.metrics
    assert pm["futility/cancelled"] == 2 and pm["cost/saved_usd_expected"] == pytest.approx(2 * 1200 / 3600)
    assert pm["cost/usd"] == pytest.approx(by_seed["1"].data.metrics["cost/usd"])
    assert "smoke-s2: CANCELLED: futile" in out
    summary = _summary(tracking_uri, parents[0], tmp_path)
    assert summary["gate"]["futility"]["smoke"]["futile"] is True
    # the cancelled seeds are evidence against the config: no records folder unless --non-record
    from pgolf import submission

    h = by_seed["1"].data.tags["config_hash"]
    with pytest.raises(submission.SubmissionRefused) as refused:
        submission.build_submission(tracking_uri, h, str(tmp_path / "rec"), run_self_check=False, progress=None)
    assert sum("cancelled as futile by validate --stop-futile" in r for r in refused.value.reasons) == 2
    res = submission.build_submission(tracking_uri, h, str(tmp_path / "nonrec"), non_record=True,
                                      run_self_check=False, progress=None)
    assert any("cancelled as futile" in r for r in res.refused_reasons)


def test_budget_cap_leaves_trials_not_started_for_resume(ray_session, tracking_uri, data_root, tmp_path, capsys):
    # Worst case per trial: (600 s deadline + 5 s kill grace) x 1 CPU x $1/h. A cap a hair above it
    # admits the first trial; after it, whatever it spent, less than one worst case is left.
    worst_usd = (600 + 5) * CPU_PRICE / 3600
    cap = worst_usd * (1 + 1e-6)
    rc, out = run_cli(["validate", SMOKE, *_common(tmp_path, data_root), "--max-usd", repr(cap), *tiny_args()],
                      capsys)
    assert rc == 1, out
    assert "2 seed(s) NOT STARTED (budget): --resume runs them" in out
    parents, kids = children(tracking_uri, "smoke")
    status = {r.data.tags["seed"]: (r.info.status, r.data.tags.get("pgolf.outcome")) for r in kids}
    assert status == {"1": ("FINISHED", None), "2": ("KILLED", "NOT STARTED (budget)"),
                      "3": ("KILLED", "NOT STARTED (budget)")}
    pm = parents[0].data.metrics
    assert pm["budget/not_started"] == 2 and pm["cost/usd"] <= cap
    assert "smoke-s2: NOT STARTED (budget): budget: its worst case" in out
    # --resume would run exactly the two that never started
    rc, plan = run_cli(["plan", SMOKE, "--resume", "--data-dir", str(data_root), *tiny_args()], capsys)
    assert rc == 0 and "smoke (2 trial(s) to run" in plan and "skip smoke-s1: finished earlier" in plan


def test_max_usd_without_a_price_fails_before_anything_starts(tracking_uri, data_root, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.delenv("PGOLF_GPU_HOUR_USD", raising=False)
    monkeypatch.delenv("PGOLF_CPU_HOUR_USD", raising=False)
    rc, _ = run_cli(["validate", SMOKE, "--data-dir", str(data_root), "--max-usd", "5"])
    assert rc == 2 and "--max-usd needs a price" in capsys.readouterr().err
