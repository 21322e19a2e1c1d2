"""Prices, trial cost, the budget ledger and `pgolf plan` (no Ray)."""
from __future__ import annotations

import os

import pytest

from orch_helpers import ROOT, SMOKE, run_cli
from pgolf import cost

PR691 = os.path.join(ROOT, "experiments", "stacks", "pr691.toml")


class _Res:
    gpu_hour_usd = 2.0
    cpu_hour_usd = 0.0


def test_price_precedence_cli_env_file():
    assert cost.resolve_prices(_Res(), env={}).gpu_hour_usd == 2.0
    p = cost.resolve_prices(_Res(), env={cost.GPU_ENV: "3.5"})
    assert p.gpu_hour_usd == 3.5 and p.source == f"${cost.GPU_ENV}"
    assert cost.resolve_prices(_Res(), gpu_hour_usd=4.0, env={cost.GPU_ENV: "3.5"}).gpu_hour_usd == 4.0
    none = cost.resolve_prices(None, env={})
    assert not none.priced and none.usd(3600, 3600) is None  # never a made-up dollar figure
    with pytest.raises(cost.PriceError, match=cost.GPU_ENV):
        cost.resolve_prices(None, env={cost.GPU_ENV: "cheap"})
    with pytest.raises(cost.PriceError, match="--cpu-hour-usd"):
        cost.resolve_prices(None, cpu_hour_usd=-1.0, env={})


def test_trial_metrics_and_parent_sums():
    p = cost.Prices(gpu_hour_usd=3.0, cpu_hour_usd=0.5, source="test")
    m = cost.trial_metrics(8, 16, 1800.0, p)
    assert m["cost/gpu_seconds"] == 8 * 1800 and m["cost/usd"] == pytest.approx(8 * 0.5 * 3 + 16 * 0.5 * 0.5)
    assert "cost/usd" not in cost.trial_metrics(8, 16, 1800.0, cost.Prices())
    sums = cost.sum_costs([{"status": "FINISHED", "cost/gpu_seconds": 100.0, "cost/usd": 1.0},
                           {"status": "FAILED", "cost/gpu_seconds": 40.0, "cost/usd": 0.4},
                           {"status": "KILLED", "cost/gpu_seconds": 10.0, "cost/usd": 0.1}])
    assert sums["cost/gpu_seconds_useful"] == 100 and sums["cost/gpu_seconds_failed"] == 50
    assert sums["cost/usd_failed"] == pytest.approx(0.5)


def test_ledger_never_starts_what_the_worst_case_cannot_pay():
    worst = cost.TrialCost.of(8, 8, 1505.0, cost.Prices())  # 12,040 GPU-seconds = 3.344 GPU-hours
    led = cost.Ledger(max_gpu_hours=7.0)  # 25,200 GPU-seconds
    assert led.check(worst) == "start"
    led.start("a", worst)
    assert led.check(worst) == "start"  # 2 x 12,040 <= 25,200
    led.start("b", worst)
    assert led.check(worst) == "wait"  # running trials hold the room
    led.finish("a", 8 * 600.0, None)  # a used 4,800: 25,200 - 4,800 - 12,040 held by b = 8,360 left
    assert led.check(worst) == "wait"
    led.finish("b", 8 * 600.0, None)  # 15,600 left
    assert led.check(worst) == "start"
    assert "4.333 of 7 GPU-hours left" in led.left_text()


def test_ledger_outcomes_exactly():
    worst = cost.TrialCost.of(8, 8, 1505.0, cost.Prices())
    led = cost.Ledger(max_gpu_hours=3.5)
    led.start("a", worst)
    assert led.check(worst) == "wait"
    led.finish("a", worst.gpu_seconds, None)
    assert led.check(worst) == "never"  # nothing running and not enough left: NOT STARTED (budget)
    with pytest.raises(cost.PriceError, match="needs a price"):
        cost.Ledger(max_usd=10).check(worst)
    with pytest.raises(cost.PriceError, match="--max-gpu-hours"):
        cost.Ledger(max_gpu_hours=-1)


def test_plan_pr691_three_seeds(capsys, monkeypatch):
    monkeypatch.delenv(cost.GPU_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc, out = run_cli(["plan", PR691, "--seeds", "1337", "42", "2024"], capsys)
    assert rc == 0
    assert "pr691-s1337" in out and "pr691-s2024" in out
    assert "total (3)" in out and "10.033" in out and "8.000" in out  # 3 x 8 x (1505 | 1200) s
    assert "GPU-hours only" in out and "worst $" not in out
    assert "cannot start there" in out and "worst 1:15:15, expected 1:00:00" in out


def test_plan_prices_caps_and_concurrency(capsys, monkeypatch):
    monkeypatch.setenv(cost.GPU_ENV, "2.5")
    rc, out = run_cli(["plan", PR691, "--seeds", "1", "2", "3", "--max-concurrent", "3", "--max-gpu-hours", "7"],
                      capsys)
    assert rc == 0
    assert "$2.5/GPU-hour ($PGOLF_GPU_HOUR_USD)" in out and "$25.08" in out and "$20.00" in out
    assert "wall time at 3 trial(s) at a time (--max-concurrent): worst 0:25:05" in out
    assert "at least 2 of 3 trial(s) start" in out and "about 2 if" in out


@pytest.mark.parametrize("argv, message", [
    (["--set", "resources.gpus=eight"], "resources"),
    (["--gpu-hour-usd", "-3"], "--gpu-hour-usd"),
    (["--max-usd", "5"], "--max-usd needs a price"),
])
def test_plan_bad_input_exits_2(argv, message, capsys, monkeypatch):
    monkeypatch.delenv(cost.GPU_ENV, raising=False)
    rc, _ = run_cli(["plan", PR691] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err


def test_plan_resume_leaves_out_finished_pairs(tracking_uri, data_root, capsys):
    from pgolf import tracking
    from pgolf.experiment import load_experiment
    from pgolf.specs import validate_specs

    exp = load_experiment(SMOKE)
    spec = validate_specs(exp, [2], str(data_root))[0]
    exp_id = tracking.get_or_create_experiment(tracking_uri, "smoke", None)
    c = tracking.client(tracking_uri)
    run = c.create_run(exp_id, tags={tracking.KIND: tracking.KIND_TRIAL, "config_hash": spec.config_hash, "seed": "2"})
    c.set_terminated(run.info.run_id, "FINISHED")
    rc, out = run_cli(["plan", SMOKE, "--resume", "--data-dir", str(data_root)], capsys)
    assert rc == 0
    assert "smoke (2 trial(s) to run" in out and f"skip smoke-s2: finished earlier in MLflow run {run.info.run_id}" in out


def test_report_shows_cost_per_variant_and_per_accepted_improvement(tmp_path):
    import report_store as S
    from pgolf.dashboards import html
    from pgolf.dashboards.report import build_report, format_text

    uri, exp_id, pid = S.store_with_parent(tmp_path, "costs")
    spend = {"base": (1.1300, 3600.0, 9.0), "better": (1.1200, 7200.0, 18.0), "worse": (1.1400, 3600.0, 9.0)}
    for variant, (bpb, gpu_s, usd) in spend.items():
        h = {"base": "aaaaaaaaaaaa", "better": "bbbbbbbbbbbb", "worse": "cccccccccccc"}[variant]
        for seed in (1, 2, 3):
            r = S.synthetic_result(seed=seed, config_hash=h, bpb=bpb + 0.0001 * seed)
            r.update({"cost/gpu_seconds": gpu_s, "cost/usd": usd})
            S.trial(uri, exp_id, pid, variant=variant, seed=seed, config_hash=h, result=r)
    # one failed attempt of `worse`, paid for too
    S.trial(uri, exp_id, pid, variant="worse", seed=4, config_hash="cccccccccccc", status="FAILED",
            reason="trainer crashed", result=None)
    rep = build_report(uri, "costs", baseline="aaaaaaaaaaaa", curves=False)
    g = rep.groups.set_index("variant")
    assert g.loc["better", "gpu_hours"] == pytest.approx(6.0) and g.loc["better", "usd"] == pytest.approx(54.0)
    text = format_text(rep)
    # tested: better + worse = 6 + 3 GPU-hours, $54 + $27; one accepted
    assert "1 of 2 tested variant(s) accepted: 9.000 GPU-hours ($81.00) per accepted improvement" in text
    assert "GPU-h (failed)" in text and "6.000 (0.000)" in text
    page = html.render(rep)
    assert "per accepted improvement" in page and "of which failed" in page


def _gate_inv(seeds, sets, data_root, monkeypatch):
    """An orchestrate.Invocation-shaped object for pgolf.gate without Ray or MLflow: the 8-GPU pr691
    stack; the gate's records of unstarted trials are captured instead of written."""
    from types import SimpleNamespace

    from pgolf import gate
    from pgolf.experiment import load_experiment
    from pgolf.specs import make_plan, validate_specs
    from pgolf.trial import deadline_for

    exp = load_experiment(PR691, overrides=sets)
    plan = make_plan(validate_specs(exp, seeds, str(data_root)), None)
    recorded = []
    monkeypatch.setattr(gate, "record_unstarted", lambda inv, key, outcome, reason: recorded.append((key, outcome, reason)))
    inv = SimpleNamespace(exp=exp, plan=plan, ctx=SimpleNamespace(deadline_seconds=deadline_for(exp.budget)),
                          uri="sqlite:///unused", experiment_id="0", parent_id="p")
    return inv, recorded


def test_gate_max_gpu_hours_on_8_gpu_trials_without_ray(tmp_path, monkeypatch):
    from ray.tune.search import Searcher

    from pgolf import gate

    inv, recorded = _gate_inv([1, 2, 3], [], tmp_path, monkeypatch)
    s = gate.make_searcher(inv, cost.Ledger(max_gpu_hours=7.0), stop_futile=False, prices=cost.Prices())
    assert s.suggest("t1") == {"key": "pr691-s1"} and s.suggest("t2") == {"key": "pr691-s2"}  # 2 x 3.344 <= 7
    assert s.suggest("t3") is None  # the two running ones hold the room: wait, never kill
    s.on_trial_complete("t1", {"cost/gpu_seconds": 8 * 1200.0})
    assert s.suggest("t3") is None  # 7 h - 2.667 h spent - 3.344 h held < 3.344 h
    s.on_trial_complete("t2", {"cost/gpu_seconds": 8 * 1200.0})
    assert s.suggest("t3") == Searcher.FINISHED
    assert [(k, o) for k, o, _ in recorded] == [("pr691-s3", gate.NOT_STARTED)]
    assert "exceeds what is left (1.667 of 7 GPU-hours left)" in recorded[0][2]
    assert gate.saved_metrics(s.state)["budget/not_started"] == 1


def test_gate_futility_and_the_labelled_power_rule_without_ray(tmp_path, monkeypatch):
    from ray.tune.search import Searcher

    from pgolf import gate

    sets = ["baseline.record=2.0", "baseline.unit=nats"]
    inv, recorded = _gate_inv([1, 2, 3], sets, tmp_path, monkeypatch)
    s = gate.make_searcher(inv, cost.Ledger(), stop_futile=True, prices=cost.Prices(gpu_hour_usd=3.0))
    assert s.suggest("t1") == {"key": "pr691-s1"}
    s.on_trial_complete("t1", {"ok": True, "final/val_loss": 2.3, "cost/gpu_seconds": 9600.0, "cost/usd": 8.0})
    assert s.suggest("t2") == Searcher.FINISHED
    assert [(k, o) for k, o, _ in recorded] == [("pr691-s2", gate.CANCELLED), ("pr691-s3", gate.CANCELLED)]
    saved = gate.saved_metrics(s.state)
    assert saved["cost/saved_gpu_seconds_expected"] == 2 * 8 * 1200 and saved["cost/saved_usd_expected"] == 16.0

    # ten seeds: one bad seed can still be outvoted (not futile), but not under an assumed 0.0015-nat spread
    seeds = list(range(1, 11))
    inv, recorded = _gate_inv(seeds, sets, tmp_path, monkeypatch)
    plain = gate.make_searcher(inv, cost.Ledger(), stop_futile=True, prices=cost.Prices())
    plain.suggest("t1")
    plain.on_trial_complete("t1", {"ok": True, "final/val_loss": 2.01})
    assert plain.suggest("t2") == {"key": "pr691-s2"} and not recorded
    power = gate.make_searcher(inv, cost.Ledger(), stop_futile=True, prices=cost.Prices(), power_below=0.05,
                               seed_std_nats=0.0015)
    power.suggest("t1")
    power.on_trial_complete("t1", {"ok": True, "final/val_loss": 2.01})
    assert power.suggest("t2") == Searcher.FINISHED and len(recorded) == 9
    assert "an assumption, not a bound" in recorded[0][2]


def test_budget_caps_wrap_the_optuna_searcher_without_ray(tmp_path):
    """tune --max-usd with search = "optuna": the gate wraps the real Repeater(OptunaSearch) and starts a
    sample only while its worst case fits; the samples it never starts are counted, never launched."""
    from types import SimpleNamespace

    from ray.tune.search import Repeater, Searcher
    from ray.tune.search.optuna import OptunaSearch

    from pgolf import gate
    from pgolf.experiment import load_experiment
    from pgolf.specs import optuna_space
    from pgolf.trial import deadline_for

    path = tmp_path / "opt.toml"
    path.write_text(f'extends = "{SMOKE}"\n[sweep]\nsearch = "optuna"\nnum_samples = 3\nseed = 3\n'
                    '[sweep.axes]\n"optim.matrix_lr" = {type = "uniform", low = 0.01, high = 0.08}\n')
    exp = load_experiment(str(path))
    inv = SimpleNamespace(exp=exp, seeds=[1, 2], ctx=SimpleNamespace(deadline_seconds=deadline_for(exp.budget)))
    prices = cost.Prices(cpu_hour_usd=1.0)
    worst = cost.TrialCost.of(0, 1, cost.worst_seconds(deadline_for(exp.budget)), prices).usd
    inner = Repeater(OptunaSearch(metric="final/val_bpb", mode="min", seed=3), repeat=2, set_index=True)
    s = gate.make_budget_searcher(inv, inner, cost.Ledger(max_usd=2 * worst * (1 + 1e-6)), prices=prices,
                                  stop_futile=False)
    s.set_search_properties(None, None, {"axes": optuna_space(exp)})
    a, b = s.suggest("t1"), s.suggest("t2")
    assert 0.01 <= a["axes"]["optim.matrix_lr"] <= 0.08 and a["axes"] == b["axes"]  # one sample, two seeds
    assert s.suggest("t3") is None  # the two running ones hold the whole cap: wait, never kill
    s.on_trial_complete("t1", {"final/val_bpb": 2.0, "cost/gpu_seconds": 0.0, "cost/usd": worst})
    assert s.suggest("t3") is None
    s.on_trial_complete("t2", {"final/val_bpb": 2.1, "cost/gpu_seconds": 0.0, "cost/usd": worst})
    assert s.suggest("t3") == Searcher.FINISHED
    assert gate.saved_metrics(s.state)["budget/not_started"] == 4  # 3 samples x 2 seeds, 2 ran
    assert all("exceeds what is left" in r for _, r in s.state.outcomes.values())
