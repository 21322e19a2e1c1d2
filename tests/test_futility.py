"""Known-answer tests for the futility bounds (pgolf.futility) against brute force.

Brute force knows nothing of the closed form: it evaluates the t statistic of pgolf.stats' tests (a
vectorized numpy copy for the dense grids, the stats functions themselves at the optimum) over a dense
grid of values for the unfinished seeds, then polishes the best points with scipy.optimize over every
free value separately (not only equal ones)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

from pgolf import futility, stats

GRID = np.concatenate([-np.logspace(-5, 8, 160), np.linspace(-0.05, 0.05, 81), np.logspace(-5, 8, 160)])


def _t(z_done: np.ndarray, free: np.ndarray, w: float) -> np.ndarray:
    """t = mean / sqrt(var/n + w) for every row of `free` (shape (rows, m)) appended to z_done."""
    rows = free.shape[0]
    allv = np.concatenate([np.broadcast_to(z_done, (rows, z_done.size)), free], axis=1)
    n = allv.shape[1]
    var = allv.var(axis=1, ddof=1)
    se = np.sqrt(var / n + w)
    with np.errstate(divide="ignore", invalid="ignore"):
        return allv.mean(axis=1) / se


def brute_sup(z_done, m, w, rng) -> tuple[float, np.ndarray]:
    z = np.asarray(z_done, dtype=np.float64)
    cand = [np.repeat(GRID[:, None], m, axis=1)]
    if m >= 2:  # unequal free values too: pairs of grid points and random spreads
        sub = GRID[::8]
        a, b = np.meshgrid(sub, sub)
        pair = np.stack([a.ravel(), b.ravel()], axis=1)
        cand.append(np.concatenate([pair, np.repeat(pair[:, :1], m - 2, axis=1)], axis=1))
        cand.append(rng.normal(0, 1, size=(300, m)) * 10 ** rng.uniform(-3, 4, size=(300, 1)))
    free = np.concatenate(cand)
    neg = -_t(z, free, w)
    neg[~np.isfinite(neg)] = -np.inf
    order = np.argsort(neg)[-2:]
    best, best_y = float(neg[order[-1]]), free[order[-1]]
    for i in order:  # polish over every free value separately
        res = optimize.minimize(lambda y: float(_t(z, y[None, :], w)[0]), free[i], method="Nelder-Mead",
                                options={"maxiter": 600, "xatol": 1e-12, "fatol": 1e-14})
        if np.isfinite(res.fun) and -res.fun > best:
            best, best_y = float(-res.fun), res.x
    return best, best_y


def _case(rng, kind):
    k, m = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    s = 10 ** rng.uniform(-3.5, -1.5)
    z = rng.normal(rng.uniform(-4, 1.5) * s, s, size=k)
    w = (s * rng.uniform(0.2, 2.0)) ** 2 / int(rng.integers(2, 6)) if kind == "welch" else 0.0
    return z, m, w


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Nelder-Mead meeting inf at a far point
@pytest.mark.parametrize("kind", ["one_sample", "welch"])
def test_closed_form_sup_matches_brute_force(kind):
    rng = np.random.default_rng(7 if kind == "one_sample" else 8)
    for _ in range(30):
        z, m, w = _case(rng, kind)
        sup, attained, arg = futility.sup_neg_t(z, m, w)
        brute, _ = brute_sup(z, m, w, rng)
        if math.isinf(sup):
            assert z.size == 1 or z.min() == z.max()
            continue
        assert brute <= sup * (1 + 1e-9) + 1e-12, (z, m, w, sup, brute)  # nothing beats the bound
        assert brute >= sup * (1 - 2e-3), (z, m, w, sup, brute)  # and brute force gets there
        if attained and arg is not None:  # the claimed argmax attains it
            assert -_t(z, np.full((1, m), arg), w)[0] == pytest.approx(sup, rel=1e-9)


def test_one_sample_formula_is_the_textbook_one():
    """sup t^2 = (n-1) [n zbar^2 / ((k-1) s^2) + m/k] for zbar < 0 (docs/futility.md)."""
    z, m = np.array([-0.002, -0.0005, -0.0011]), 2
    k, n = z.size, z.size + m
    s2 = z.var(ddof=1)
    expect = math.sqrt((n - 1) * (n * z.mean() ** 2 / ((k - 1) * s2) + m / k))
    assert futility.sup_neg_t(z, m)[0] == pytest.approx(expect, rel=1e-12)
    # one finished seed above the threshold, two to go: t can never get below -2 (< 6.965 needed)
    assert futility.sup_neg_t([0.3], 2)[0] == pytest.approx(2.0)


def _setup(rng, kind):
    """(done {seed: nats}, remaining seeds, baseline for stats.compare, z of done, w, n_b)."""
    k, m = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    s = 10 ** rng.uniform(-3.3, -2.3)
    base_level = 2.5
    if kind == "one_sample":
        x = base_level + rng.normal(rng.uniform(-5, 1) * s, s, size=k)
        baseline = base_level + 0.005
        return dict(enumerate(x)), list(range(k, k + m)), baseline, x - base_level, 0.0
    if kind == "paired":
        bvals = base_level + rng.normal(0, s, size=k + m)
        x = bvals[:k] + rng.normal(rng.uniform(-5, 1) * s, s, size=k) - 0.005
        return (dict(enumerate(x)), list(range(k, k + m)), dict(enumerate(bvals)), x - bvals[:k] + 0.005, 0.0)
    nb = int(rng.integers(2, 6))
    bvals = base_level + rng.normal(0, s, size=nb)
    x = bvals.mean() + rng.normal(rng.uniform(-6, 1) * s, s, size=k) - 0.005
    return (dict(enumerate(x)), list(range(100, 100 + m)), list(bvals), x - (bvals.mean() - 0.005),
            float(np.var(bvals, ddof=1)) / nb)


def _free_nats(kind, y_z, baseline, seeds, margin):
    """Free values in z units (value minus the test's threshold) back to nats of the new runs."""
    y = np.asarray(y_z, dtype=np.float64)
    if kind == "paired":
        return list(y - margin + np.asarray([baseline[s] for s in seeds]))
    ref = float(np.mean(baseline)) if kind == "welch" else float(baseline)
    return list(y + ref - margin)


def _exact_completion_passes(kind, done, remaining, baseline, dec, margin, alpha):
    """For a non-futile decision of an exact kind: the bound's own argmax (or, for a supremum that is a
    limit, a completion far below) passes the real test in pgolf.stats. None when no exact bound decided."""
    live = [b for b in dec.bounds if b.exact and b.sup_neg_t > b.t_crit * (1 + 1e-9)]
    if not live:
        return None
    b = max(live, key=lambda b: b.sup_neg_t / b.t_crit)
    seeds = remaining[:b.m_free]
    arg = b.argmax_nats if b.argmax_nats is not None else -1e9
    free = _free_nats(kind, np.full(b.m_free, arg), baseline, seeds, margin)
    new = {**done, **dict(zip(seeds, free))}
    if kind == "paired":
        return stats.paired_vs_baseline(new, baseline, margin_nats=margin, alpha=alpha).significant
    return stats.one_sample_vs_record(list(new.values()), baseline, margin_nats=margin, alpha=alpha).significant


@pytest.mark.parametrize("kind", ["one_sample", "paired", "welch"])
def test_decision_agrees_with_brute_force(kind):
    rng = np.random.default_rng({"one_sample": 11, "paired": 12, "welch": 13}[kind])
    alpha, margin = 0.01, 0.005
    outcomes = {True: 0, False: 0}
    for _ in range(30):
        done, remaining, baseline, z, w = _setup(rng, kind)
        dec = futility.decide(done, remaining, baseline, margin_nats=margin, alpha=alpha)
        outcomes[dec.futile] += 1
        m_all = len(remaining)
        if dec.futile:
            # paired: the all-seeds case is the paired test (fewer seeds fall back to Welch, covered there)
            for m in ([m_all] if kind == "paired" else range(1, m_all + 1)):
                brute, y = brute_sup(z, m, w, rng)
                n = z.size + m
                tc = stats.t_critical(alpha, n + len(baseline) - 2 if kind == "welch" else n - 1)
                assert brute < tc * (1 + 1e-6), (done, remaining, m, brute, tc)
                seeds = remaining[:m]
                new = {**done, **dict(zip(seeds, _free_nats(kind, y, baseline, seeds, margin)))}
                if kind == "paired":
                    res = stats.paired_vs_baseline(new, baseline, margin_nats=margin, alpha=alpha)
                elif kind == "welch":
                    res = stats.welch_vs_baseline(list(new.values()), baseline, margin_nats=margin, alpha=alpha)
                else:
                    res = stats.one_sample_vs_record(list(new.values()), baseline, margin_nats=margin, alpha=alpha)
                assert not res.significant, (done, new)
        elif kind != "welch":
            assert _exact_completion_passes(kind, done, remaining, baseline, dec, margin, alpha) in (True, None)
    assert outcomes[True] >= 5 and outcomes[False] >= 5, outcomes  # both sides were exercised


@pytest.mark.parametrize("kind", ["one_sample", "paired", "welch"])
def test_just_inside_the_bound_is_never_cancelled(kind):
    rng = np.random.default_rng(21)
    alpha, margin = 0.01, 0.005
    checked = passed = 0
    while checked < 10:
        done, remaining, baseline, z, w = _setup(rng, kind)
        dec = futility.decide(done, remaining, baseline, margin_nats=margin, alpha=alpha)
        if not dec.futile or dec.shift_nats <= 0:
            continue
        checked += 1
        inside = {s: v - dec.shift_nats * (1 + 1e-6) - 1e-12 for s, v in done.items()}
        outside = {s: v - dec.shift_nats * (1 - 1e-6) for s, v in done.items()}
        d_in = futility.decide(inside, remaining, baseline, margin_nats=margin, alpha=alpha)
        d_out = futility.decide(outside, remaining, baseline, margin_nats=margin, alpha=alpha)
        assert not d_in.futile, (inside, remaining, baseline)
        assert d_out.futile, (outside, remaining, baseline)
        if kind != "welch":  # exact: just inside, a completion exists that passes the real test
            ok = _exact_completion_passes(kind, inside, remaining, baseline, d_in, margin, alpha)
            assert ok in (True, None)
            passed += ok is True
    if kind == "one_sample":
        assert passed == checked


def test_cases_that_can_never_be_cancelled():
    # one finished seed below the threshold: the others may equal it exactly (se 0, p 0)
    assert not futility.decide({1: 2.0}, [2, 3], 2.1, margin_nats=0.005, alpha=0.01).futile
    # many seeds to go: even a bad first seed can be outvoted (sqrt(m (n-1) / k) > t_crit)
    assert not futility.decide({1: 9.0}, list(range(2, 11)), 2.0, margin_nats=0.005, alpha=0.01).futile
    # the unbeatable smoke case of the end-to-end test: 1 done far above, 2 to go -> futile
    dec = futility.decide({1: 3.5}, [2, 3], 0.1, margin_nats=0.005, alpha=0.01)
    assert dec.futile and dec.exact and "nats lower" in dec.reason
    assert dec.shift_nats == pytest.approx(3.5 - (0.1 - 0.005), rel=1e-9)


def test_paired_falls_back_to_welch_when_a_seed_may_fail():
    base = {1: 2.50, 2: 2.51, 3: 2.49}
    dec = futility.decide({1: 2.60}, [2, 3], base, margin_nats=0.005, alpha=0.01)
    kinds = {(b.m_free, b.test) for b in dec.bounds}
    assert kinds == {(2, stats.PAIRED), (1, stats.WELCH)}


def test_conditional_power_is_labelled_and_sane():
    far = futility.conditional_power({1: 2.0, 2: 2.001}, [3], 2.5, margin_nats=0.005, alpha=0.01,
                                     seed_std_nats=0.001, draws=200)
    hopeless = futility.conditional_power({1: 2.6}, [2, 3], 2.5, margin_nats=0.005, alpha=0.01,
                                          seed_std_nats=0.001, draws=200)
    assert far > 0.9 and hopeless == 0.0
