"""Tests for pgolf.compliance: caps at their boundaries, the phase policy, TTT verdict propagation and the
cross-seed rules."""
from __future__ import annotations

import copy
import json

import pytest

from pgolf.compliance import (
    DEFAULT_POLICY,
    Caps,
    PhasePolicy,
    check_seed,
    check_variant,
    eval_seconds,
    hardware_class,
    is_record_hardware,
    train_seconds,
)

H100_ENV = {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 8, "torch": "2.8.0"}

PHASES = {
    "warmup": 20.0, "train": 560.0, "ema_apply": 0.5, "swa_apply": 0.5, "gptq_calibration": 8.0,
    "quantize": 30.0, "compress": 65.0, "serialize": 1.0, "prequant_eval": 12.0,
    "dequantize": 2.0, "roundtrip_eval": 40.0, "sliding_eval": 120.0, "ttt": 400.0,
}


def make_result(seed: int = 42, **over) -> dict:
    r = {
        "seed": seed,
        "config_hash": "abc123",
        "final/val_bpb": 1.12,
        "final/val_loss": 1.89,
        "artifact/bytes": 15_900_000,
        "artifact/code_bytes": 60_000,
        "artifact/model_bytes": 15_840_000,
        "phases": dict(PHASES),
        "ttt": {"mode": "score_first_chunked",
                "trace_verdict": {"compliant": True, "reasons": []}},
        "env": dict(H100_ENV),
        "data": {"val_in_train": False},
    }
    r.update(over)
    return r


# ------------------------------------------------------------------------------------------------ phases


def test_phase_sums_with_default_policy():
    # train cap: loop + EMA + SWA + GPTQ calibration (reads train data); warmup is excluded like the baseline.
    assert train_seconds(PHASES) == pytest.approx(560.0 + 0.5 + 0.5 + 8.0)
    # eval cap: dequantize + roundtrip + sliding + TTT; pre-quant eval, quantize/compress/serialize are
    # reported only.
    assert eval_seconds(PHASES) == pytest.approx(2.0 + 40.0 + 120.0 + 400.0)
    totals = DEFAULT_POLICY.totals(PHASES)
    assert totals.report_only == pytest.approx(20.0 + 30.0 + 65.0 + 1.0 + 12.0)
    assert totals.unknown == []


def test_unknown_phases_count_as_eval_and_are_listed():
    phases = {"train": 100.0, "ngram_cache_build": 7.0, "roundtrip_eval": 3.0}
    totals = DEFAULT_POLICY.totals(phases)
    assert totals.eval == pytest.approx(10.0) and totals.unknown == ["ngram_cache_build"]
    v = check_seed(make_result(phases=phases))
    assert v.unknown_phases == ["ngram_cache_build"]
    assert "ngram_cache_build" in v.check("eval_under_cap").detail


def test_policy_is_data_and_validated():
    p = PhasePolicy.from_dict({"phases": {"compress": "eval"}, "unknown": "train"})
    assert p.budget_of("compress") == "eval" and p.budget_of("something_new") == "train"
    assert p.budget_of("ttt") == "eval"  # defaults kept
    assert DEFAULT_POLICY.budget_of("compress") == "report_only"  # the default is not mutated
    assert p.with_overrides(warmup="train").train_seconds({"warmup": 5.0, "train": 1.0}) == 6.0
    with pytest.raises(ValueError, match="warmup"):
        PhasePolicy(phases={"warmup": "training"})
    with pytest.raises(ValueError, match="unknown keys"):
        PhasePolicy.from_dict({"phase": {}})
    with pytest.raises(ValueError, match="train"):
        DEFAULT_POLICY.totals({"train": -1.0})
    assert PhasePolicy.from_dict(p.to_dict()) == p


def test_policy_changes_verdict():
    r = make_result(phases={"train": 590.0, "gptq_calibration": 15.0, "roundtrip_eval": 10.0})
    assert check_seed(r).check("train_under_cap").passed is False  # 605 s > 600 s
    lenient = DEFAULT_POLICY.with_overrides(gptq_calibration="report_only")
    assert check_seed(r, policy=lenient).check("train_under_cap").passed is True


# ------------------------------------------------------------------------------------------------ caps


def test_artifact_cap_boundary():
    at_cap = check_seed(make_result(**{"artifact/bytes": 16_000_000, "artifact/model_bytes": 15_940_000}))
    assert at_cap.check("artifact_under_cap").passed is True and at_cap.compliant
    over = check_seed(make_result(**{"artifact/bytes": 16_000_001, "artifact/model_bytes": 15_940_001}))
    c = over.check("artifact_under_cap")
    assert c.passed is False and not over.compliant
    assert "16,000,001" in c.detail and any(r.startswith("artifact_under_cap") for r in over.reasons)
    # 16 MiB is not the cap.
    assert check_seed(make_result(**{"artifact/bytes": 16_777_216, "artifact/code_bytes": None})).compliant is False


def test_artifact_total_cannot_undercut_its_parts():
    r = make_result(**{"artifact/bytes": 15_000_000})  # code 60,000 + model 15,840,000 > total
    assert check_seed(r).check("artifact_under_cap").passed is False
    extra = make_result(**{"artifact/bytes": 15_950_000})  # tokenizer files counted on top: fine
    assert check_seed(extra).check("artifact_under_cap").passed is True
    missing = make_result()
    del missing["artifact/bytes"]
    assert check_seed(missing).check("artifact_under_cap").passed is False


def test_time_cap_boundaries():
    exact = make_result(phases={"train": 600.0, "roundtrip_eval": 600.0})
    assert check_seed(exact).compliant
    late = make_result(phases={"train": 600.0, "gptq_calibration": 0.01, "roundtrip_eval": 10.0})
    assert check_seed(late).check("train_under_cap").passed is False
    slow_eval = make_result(phases={"train": 500.0, "sliding_eval": 273.0, "ttt": 422.0})  # like #264
    v = check_seed(slow_eval)
    assert v.check("eval_under_cap").passed is False and v.eval_seconds == pytest.approx(695.0)
    custom = check_seed(slow_eval, caps=Caps(eval_seconds=700.0))
    assert custom.check("eval_under_cap").passed is True


def test_timing_fallback_and_missing():
    r = make_result(**{"time/train_s": 599.0, "time/eval_s": 100.0})
    del r["phases"]
    v = check_seed(r)
    assert v.compliant and v.train_seconds == 599.0 and "time/*_s" in v.check("train_under_cap").detail
    del r["time/train_s"]
    v = check_seed(r)
    assert v.check("train_under_cap").passed is False and not v.compliant


# ------------------------------------------------------------------------------------------------ TTT, data


def test_no_ttt_passes():
    for ttt in (None, {"mode": "off"}, {"mode": "none"}):
        r = make_result(ttt=ttt)
        if ttt is None:
            del r["ttt"]
        assert check_seed(r).check("ttt_legal").passed is True


def test_ttt_trace_verdict_propagates():
    reasons = ["token 0 trained on before it was scored", "all val tokens seen 3 times before scoring"]
    # The verdict, not the mode name or the PR number, decides: a full-val pre-eval mode fails because its
    # own trace says so.
    r = make_result(ttt={"mode": "pre_eval_full_val", "trace_verdict": {"compliant": False, "reasons": reasons}})
    v = check_seed(r)
    c = v.check("ttt_legal")
    assert c.passed is False and not v.compliant
    for reason in reasons:
        assert reason in c.detail
    assert any(reason in line for line in v.reasons for reason in reasons)
    legal = make_result(ttt={"mode": "pre_eval_full_val", "trace_verdict": {"compliant": True, "reasons": []}})
    assert check_seed(legal).check("ttt_legal").passed is True


def test_ttt_without_verdict_fails():
    v = check_seed(make_result(ttt={"mode": "score_first_chunked"}))
    assert v.check("ttt_legal").passed is False and "no trace verdict" in v.check("ttt_legal").detail


def test_val_in_train():
    assert check_seed(make_result(data={"val_in_train": True})).check("no_val_in_train").passed is False
    assert check_seed(make_result(data={})).check("no_val_in_train").passed is False  # unproven
    assert check_seed(make_result()).check("no_val_in_train").passed is True


# ------------------------------------------------------------------------------------------------ hardware


@pytest.mark.parametrize("env, record, cls", [
    ({"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 8}, True, "8xH100 80GB HBM3"),
    ({"gpu_name": "NVIDIA H100 SXM5 80GB", "gpu_count": 8}, True, "8xH100 SXM5 80GB"),
    ({"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 1}, False, "1xH100 80GB HBM3"),
    ({"gpu_name": "NVIDIA H100 PCIe", "gpu_count": 8}, False, "8xH100 PCIe"),
    ({"gpu_name": "NVIDIA H100 NVL", "gpu_count": 8}, False, "8xH100 NVL"),
    ({"gpu_name": "NVIDIA H200", "gpu_count": 8}, False, "8xH200"),
    ({"gpu_name": "NVIDIA A100-SXM4-80GB", "gpu_count": 4}, False, "4xA100-SXM4-80GB"),
    ({"gpu_name": None, "gpu_count": 0, "device": "cpu"}, False, "cpu"),
    ({}, False, "unknown"),
])
def test_hardware_classification(env, record, cls):
    assert is_record_hardware(env) is record
    assert hardware_class(env) == cls


def test_hardware_never_blocks_compliance():
    v = check_seed(make_result(env={"gpu_count": 0, "device": "cpu"}))
    assert v.compliant and not v.record_grade
    assert v.check("record_hardware").passed is False and v.check("record_hardware").blocking is False
    assert check_seed(make_result()).record_grade


# ------------------------------------------------------------------------------------------------ variant


def test_variant_compliant_and_json():
    vv = check_variant([make_result(s) for s in (42, 1337, 2024)])
    assert vv.compliant and vv.record_grade and vv.config_hash == "abc123"
    assert vv.n_seeds == 3 and vv.n_compliant == 3
    assert vv.hardware_classes == ["8xH100 80GB HBM3"]
    d = vv.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["compliant"] is True and len(d["seeds"]) == 3 and d["pass_fractions"]["artifact_under_cap"] == 1.0
    assert {c["name"] for c in d["seeds"][0]["checks"]} == {
        "artifact_under_cap", "train_under_cap", "eval_under_cap", "ttt_legal", "no_val_in_train",
        "record_hardware"}


def test_variant_mixed_hashes_rejected():
    results = [make_result(42), make_result(1337, config_hash="def456"), make_result(2024)]
    vv = check_variant(results)
    c = vv.check("single_config_hash")
    assert c.passed is False and not vv.compliant and vv.config_hash is None
    assert "abc123" in c.detail and "def456" in c.detail and "1337" in c.detail


def test_variant_too_few_and_duplicate_seeds():
    vv = check_variant([make_result(42), make_result(1337)])
    assert vv.check("enough_seeds").passed is False and not vv.compliant
    assert check_variant([make_result(42), make_result(1337)], min_seeds=2).compliant
    dup = check_variant([make_result(42), make_result(42), make_result(1337)])
    c = dup.check("enough_seeds")
    assert c.passed is False and "repeated seeds [42]" in c.detail
    assert not check_variant([]).compliant


def test_variant_one_bad_seed_fails_all():
    results = [make_result(42), make_result(1337, **{"artifact/bytes": 16_221_863,
                                                     "artifact/model_bytes": 16_161_863}), make_result(2024)]
    vv = check_variant(results)
    assert not vv.compliant and vv.n_compliant == 2
    assert "seed 1337" in vv.check("all_seeds_compliant").detail
    assert vv.pass_fractions()["artifact_under_cap"] == pytest.approx(2 / 3)


def test_variant_hardware_consistency():
    other = make_result(2024, env={"gpu_name": "NVIDIA H100 PCIe", "gpu_count": 8})
    vv = check_variant([make_result(42), make_result(1337), other])
    c = vv.check("consistent_hardware")
    assert c.passed is False and "8xH100 PCIe" in c.detail and not vv.compliant and not vv.record_grade
    cpu = {"gpu_count": 0, "device": "cpu"}
    local = check_variant([make_result(s, env=dict(cpu)) for s in (1, 2, 3)])
    assert local.compliant and not local.record_grade


def test_check_seed_does_not_mutate_input():
    r = make_result()
    before = copy.deepcopy(r)
    check_seed(r)
    assert r == before
