"""Known-answer tests for pgolf.stats.

Expected values are computed here independently: the t statistic, df and SE from their textbook formulas
with numpy, p from scipy.stats.t.sf/cdf, and where possible cross-checked with scipy's own ttest_* functions
and with numbers published in record READMEs (techniques.md sections 1.5 and 6, ray-mlflow-notes section 4).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from pgolf import records as R
from pgolf import stats as S

LN2 = math.log(2.0)
TPB_SP1024 = 0.5923 * LN2  # BPB/nats ratio measured from sp1024 logs (techniques.md 1.5)


# ------------------------------------------------------------------------------------------------ units


def test_unit_conversion_round_trip():
    x = np.array([-0.005, 0.0, 0.0123, 2.0359])
    back = S.bpb_to_nats(S.nats_to_bpb(x, 0.41), 0.41)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-15)
    assert S.bpb_to_nats(S.nats_to_bpb(0.005, 0.3), 0.3) == pytest.approx(0.005, abs=1e-15)


def test_unit_conversion_matches_published_ratios():
    # val_bpb = val_loss / ln2 * tokens_per_byte; at sp1024 0.005 nats is about 0.0030 BPB.
    assert S.nats_to_bpb(0.005, TPB_SP1024) == pytest.approx(0.0030, abs=5e-5)
    assert S.nats_to_bpb(0.005, TPB_SP1024) == pytest.approx(0.005 * 0.5923, rel=1e-12)
    # LongContextSeq2048 seed 1337 logged val_loss 2.0359 / val_bpb 1.2058 (tokens per byte ~0.4105).
    assert S.nats_to_bpb(2.0359, 0.4105) == pytest.approx(1.2058, abs=2e-4)
    # A README quotes -0.00218 BPB = -0.00564 nats/token at SP8192 (ratio 0.3871).
    assert S.bpb_to_nats(-0.00218, R.TOKENS_PER_BYTE_APPROX["sp8192"]) == pytest.approx(-0.00564, abs=2e-5)


@pytest.mark.parametrize("tpb", [0.0, -0.4, math.nan, math.inf])
def test_unit_conversion_rejects_bad_ratio(tpb):
    with pytest.raises(ValueError, match="tokens_per_byte"):
        S.nats_to_bpb(0.005, tpb)


# ------------------------------------------------------------------------------------------------ summary


def test_summarize_hand_computed():
    s = S.describe([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5.0 / 3.0)  # sum of squared deviations 5, n-1 = 3
    assert (s.n, s.mean, s.min, s.max) == (4, 2.5, 1.0, 4.0)
    assert s.std == pytest.approx(sd, rel=1e-12)
    assert s.sem == pytest.approx(sd / 2.0, rel=1e-12)
    half = 3.182446305284263 * sd / 2.0  # t_{0.975, 3}
    assert (s.ci_low, s.ci_high) == (pytest.approx(2.5 - half, rel=1e-9), pytest.approx(2.5 + half, rel=1e-9))


def test_summarize_single_value_has_nan_spread_and_json_nulls():
    s = S.describe([1.2])
    assert s.n == 1 and s.mean == 1.2 and math.isnan(s.std) and math.isnan(s.ci_low)
    d = s.to_dict()
    assert d["std"] is None and d["sem"] is None
    json.dumps(d, allow_nan=False)


def test_summarize_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="no values"):
        S.describe([])
    with pytest.raises(ValueError, match="non-finite"):
        S.describe([1.0, math.nan])


def test_std_convention_record_180():
    # #180 README printed 0.00016 (population std); the t-test needs the sample std, 0.00020.
    s = S.describe(R.RECORD_PRESETS["#180"].per_seed_bpb)
    assert round(s.std, 5) == 0.00020
    assert round(float(np.std(R.RECORD_PRESETS["#180"].per_seed_bpb, ddof=0)), 5) == 0.00016
    assert round(s.mean, 5) == 1.14276


@pytest.mark.parametrize("name, mean, std", [("#414", 1.1233, 0.00046), ("#549", 1.1194, 0.00057),
                                             ("long_context_seq2048", 1.20637, 0.00072)])
def test_record_presets_match_techniques_table(name, mean, std):
    s = S.describe(R.RECORD_PRESETS[name].per_seed_bpb)
    assert s.mean == pytest.approx(mean, abs=5e-5)
    assert s.std == pytest.approx(std, abs=5e-6)


# ------------------------------------------------------------------------------------------------ t critical


def test_t_critical_values_from_notes():
    assert round(S.t_critical(0.01, 2), 3) == 6.965
    assert round(S.t_critical(0.01, 3), 3) == 4.541
    assert round(S.t_critical(0.01, 4), 3) == 3.747
    assert round(S.t_critical(0.01, 9), 3) == 2.821


# ------------------------------------------------------------------------------------------------ one-sample


def test_one_sample_reproduces_long_context_readme():
    # R/2026-03-18_LongContextSeq2048: "one-sided one-sample t-test against 1.2193657 (Naive Baseline
    # 1.2243657 - 0.005): t=31.42, df=2, p=0.00051". That README applied the 0.005 margin to BPB values,
    # so feeding BPB reproduces its arithmetic (our t is negative: lower is better).
    preset = R.RECORD_PRESETS["long_context_seq2048"]
    r = S.one_sample_vs_record(preset.per_seed_bpb, 1.2243657, margin_nats=0.005)
    assert r.test == "one-sample t (one-sided)"
    assert r.n == 3 and r.df == 2
    assert round(-r.t, 2) == 31.42
    assert round(r.p, 5) == 0.00051
    assert r.significant
    assert r.threshold_nats == pytest.approx(1.2193657, abs=1e-12)


def test_one_sample_hand_computation_and_scipy():
    x = np.array([2.0312, 2.0298, 2.0335, 2.0301])
    record, margin = 2.0500, 0.005
    mean, sd = x.mean(), np.sqrt(((x - x.mean()) ** 2).sum() / 3)
    t = (mean - (record - margin)) / (sd / 2.0)
    p = sps.t.sf(-t, 3)  # one-sided "less": P(T <= t) = P(T >= -t)
    r = S.one_sample_vs_record(x, record, margin, alpha=0.01)
    assert r.t == pytest.approx(t, rel=1e-12)
    assert r.p == pytest.approx(p, rel=1e-10)
    ref = sps.ttest_1samp(x, record - margin, alternative="less")
    assert r.t == pytest.approx(ref.statistic, rel=1e-12) and r.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.delta_nats == pytest.approx(mean - record, rel=1e-12)
    assert r.required_improvement_nats == pytest.approx(sps.t.ppf(0.99, 3) * sd / 2.0, rel=1e-12)
    assert r.improvement_over_threshold_nats == pytest.approx(record - margin - mean, rel=1e-12)


def test_required_improvement_matches_power_arithmetic():
    # techniques.md 6: s = 0.0015 nats needs ~0.011 nats total improvement at n=3 and ~0.0075 at n=5.
    s = 0.0015
    three = 1.9 + s * np.array([-1.0, 0.0, 1.0])
    five = 1.9 + s * np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / math.sqrt(2.5)
    r3 = S.one_sample_vs_record(three, 2.0)
    r5 = S.one_sample_vs_record(five, 2.0)
    assert r3.std_nats == pytest.approx(s) and r5.std_nats == pytest.approx(s)
    assert r3.required_improvement_nats == pytest.approx(6.965 * s / math.sqrt(3), rel=1e-4)
    assert r3.required_improvement_nats + 0.005 == pytest.approx(0.011, abs=1e-4)
    assert r5.required_improvement_nats + 0.005 == pytest.approx(0.0075, abs=1e-4)
    # "mean - threshold must exceed about 4x the sample std at n = 3"
    assert r3.required_improvement_nats / s == pytest.approx(4.02, abs=0.01)


def test_one_sample_not_significant_and_seeds_needed():
    x = np.array([1.990, 1.994, 1.992])  # beats threshold 1.995 by 0.003 with sd 0.002
    r = S.one_sample_vs_record(x, 2.000, 0.005, tokens_per_byte=0.41)
    assert not r.significant and 0.01 < r.p < 0.2
    n = r.seeds_needed
    assert n is not None and n > 3
    assert sps.t.ppf(0.99, n - 1) * 0.002 / math.sqrt(n) < 0.003
    assert sps.t.ppf(0.99, n - 2) * 0.002 / math.sqrt(n - 1) >= 0.003
    assert r.delta_bpb == pytest.approx(-0.008 / LN2 * 0.41, rel=1e-9)
    assert r.margin_bpb == pytest.approx(0.005 / LN2 * 0.41, rel=1e-12)
    worse = S.one_sample_vs_record([2.01, 2.02, 2.03], 2.0)
    assert worse.seeds_needed is None and worse.p > 0.5


def test_one_sample_degenerate_inputs():
    one = S.one_sample_vs_record([1.9], 2.0)
    assert one.n == 1 and math.isnan(one.p) and not one.significant and one.notes
    json.dumps(one.to_dict(), allow_nan=False)
    same = S.one_sample_vs_record([1.9, 1.9, 1.9], 2.0)  # deterministic CPU runs: zero spread
    assert same.t == -math.inf and same.p == 0.0 and same.significant
    with pytest.raises(ValueError, match="alpha"):
        S.one_sample_vs_record([1.9, 1.8], 2.0, alpha=0.0)
    with pytest.raises(ValueError, match="margin"):
        S.one_sample_vs_record([1.9, 1.8], 2.0, margin_nats=-0.1)


# ------------------------------------------------------------------------------------------------ Welch


def test_welch_df_hand_worked():
    # var_a = 1, n_a = 3 -> 1/3; var_b = 10, n_b = 5 -> 2.
    # df = (1/3 + 2)^2 / ((1/3)^2 / 2 + 2^2 / 4) = (49/9) / (19/18) = 98/19.
    assert S.welch_df(1.0, 3, 10.0, 5) == pytest.approx(98.0 / 19.0, rel=1e-12)


def test_welch_hand_computed_case():
    a = np.array([1.0, 2.0, 3.0])            # mean 2, var 1
    b = np.array([2.0, 4.0, 6.0, 8.0, 10.0])  # mean 6, var 10
    margin = 0.5
    se = math.sqrt(1.0 / 3.0 + 10.0 / 5.0)
    t = (2.0 - (6.0 - margin)) / se
    df = 98.0 / 19.0
    r = S.welch_vs_baseline(a, b, margin_nats=margin, alpha=0.05)
    assert r.test == "Welch t (one-sided)"
    assert (r.n, r.n_baseline) == (3, 5)
    assert r.df == pytest.approx(df, rel=1e-12)
    assert r.t == pytest.approx(t, rel=1e-12)
    assert r.p == pytest.approx(sps.t.sf(-t, df), rel=1e-10)
    assert r.delta_nats == pytest.approx(-4.0)
    assert r.required_improvement_nats == pytest.approx(sps.t.ppf(0.95, df) * se, rel=1e-12)
    ref = sps.ttest_ind(a, b - margin, equal_var=False, alternative="less")
    assert r.t == pytest.approx(ref.statistic, rel=1e-12) and r.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_welch_between_published_records():
    # #549 vs #414, both sp1024, in nats: 0.0040 BPB better is 0.0067 nats, only 0.0017 past the margin,
    # which three seeds per side cannot show at p < 0.01.
    new = R.RECORD_PRESETS["#549"].values_nats(TPB_SP1024)
    base = R.RECORD_PRESETS["#414"].values_nats(TPB_SP1024)
    r = S.compare(new, base, tokens_per_byte=TPB_SP1024)
    assert r.test == "Welch t (one-sided)"
    assert r.delta_bpb == pytest.approx(R.RECORD_PRESETS["#549"].mean_bpb - R.RECORD_PRESETS["#414"].mean_bpb,
                                        abs=1e-12)
    ref = sps.ttest_ind(new, np.array(base) - 0.005, equal_var=False, alternative="less")
    assert r.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert not r.significant
    json.dumps(r.to_dict(), allow_nan=False)


# ------------------------------------------------------------------------------------------------ paired


def test_paired_hand_computed():
    new = {42: 2.010, 1337: 2.030, 2024: 2.000}
    base = {1337: 2.040, 42: 2.022, 2024: 2.009}
    d = np.array([2.010 - 2.022, 2.030 - 2.040, 2.000 - 2.009])  # seeds sorted: 42, 1337, 2024
    margin = 0.005
    sd = np.sqrt(((d - d.mean()) ** 2).sum() / 2)
    t = (d.mean() + margin) / (sd / math.sqrt(3))
    r = S.paired_vs_baseline(new, base, margin, 0.01)
    assert r.test == "paired t (one-sided)" and r.seeds == [42, 1337, 2024]
    assert r.df == 2 and r.t == pytest.approx(t, rel=1e-9)
    assert r.p == pytest.approx(sps.t.sf(-t, 2), rel=1e-9)
    assert r.delta_nats == pytest.approx(d.mean(), rel=1e-9)
    assert r.required_improvement_nats == pytest.approx(6.964556734283272 * sd / math.sqrt(3), rel=1e-9)
    ref = sps.ttest_rel([2.010, 2.030, 2.000], np.array([2.022, 2.040, 2.009]) - margin, alternative="less")
    assert r.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_paired_mismatched_seeds_named():
    with pytest.raises(ValueError, match=r"only in new runs \[7\], only in baseline \[2024\]"):
        S.paired_vs_baseline({42: 1.0, 7: 1.1}, {42: 1.0, 2024: 1.2}, 0.005, 0.01)


def test_paired_accepts_string_seed_keys():
    r = S.paired_vs_baseline({"1": 1.0, "2": 1.1, "3": 1.05}, {1: 1.02, 2: 1.12, 3: 1.08}, 0.005, 0.01)
    assert r.seeds == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ compare


def test_compare_dispatch():
    new = {1: 1.90, 2: 1.91, 3: 1.905}
    assert S.compare(new, 2.0).test == "one-sample t (one-sided)"
    assert S.compare(new, [2.0]).test == "one-sample t (one-sided)"
    assert S.compare(new, {1: 1.95, 2: 1.96, 3: 1.955}).test == "paired t (one-sided)"
    assert S.compare(new, {4: 1.95, 5: 1.96}).test == "Welch t (one-sided)"
    assert S.compare(list(new.values()), {1: 1.95, 2: 1.96, 3: 1.955}).test == "Welch t (one-sided)"
    assert S.compare(new, np.array([1.95, 1.96])).test == "Welch t (one-sided)"
    with pytest.raises(ValueError):
        S.compare(new, [])
    with pytest.raises(TypeError):
        S.compare(new, "2.0")


def test_compare_one_sample_equals_direct_call_with_bpb():
    new = {1: 1.90, 2: 1.91, 3: 1.905}
    r = S.compare(new, 2.0, margin_nats=0.005, alpha=0.01, tokens_per_byte=0.41)
    direct = S.one_sample_vs_record(list(new.values()), 2.0, 0.005, 0.01)
    assert r.t == direct.t and r.p == direct.p
    assert r.delta_bpb == pytest.approx(S.nats_to_bpb(r.delta_nats, 0.41))
    d = r.to_dict()
    for key in ("test", "n", "df", "t", "p", "alpha", "margin_nats", "delta_nats", "delta_bpb",
                "significant", "required_improvement_nats"):
        assert key in d
    json.dumps(d, allow_nan=False)


# ------------------------------------------------------------------------------------------------ Holm


def test_holm_hand_worked():
    # Sorted: d .005, a .01, c .03, b .04 (m = 4)
    #   d: 4 x .005 = .02 ; a: 3 x .01 = .03 ; c: 2 x .03 = .06 ; b: 1 x .04 = .04 -> max so far .06
    out = S.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}, alpha=0.05)
    assert list(out) == ["a", "b", "c", "d"]
    expected = {"a": (0.03, True), "b": (0.06, False), "c": (0.06, False), "d": (0.02, True)}
    for k, (adj, rej) in expected.items():
        assert out[k].adjusted_p == pytest.approx(adj, abs=1e-15)
        assert out[k].reject is rej
        assert tuple(out[k]) == (pytest.approx(adj, abs=1e-15), rej)


def test_holm_caps_at_one_and_strict_alpha():
    out = S.holm({"x": 0.6, "y": 0.9, "z": 0.005}, alpha=0.015)
    assert out["x"].adjusted_p == 1.0 and out["y"].adjusted_p == 1.0
    assert out["z"].adjusted_p == pytest.approx(0.015) and out["z"].reject is False  # p < alpha is strict
    assert S.holm({}, 0.01) == {}
    with pytest.raises(ValueError):
        S.holm({"bad": 1.5}, 0.01)
