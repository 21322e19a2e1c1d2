"""Futility bounds: can the seeds that have not finished still make a variant's test significant?

After some seeds of a variant have finished, `validate --stop-futile` asks, for the one-sided test that
`pgolf.stats.compare` will run at the end: is there ANY set of values for the unfinished seeds that
gives p < alpha? If not, the variant cannot pass whatever those seeds score, and starting them only
spends money. The math is in docs/futility.md; in short:

With z = x - threshold for the k finished values (one-sample: threshold = record - margin; paired:
x = new - baseline per seed and threshold = -margin; Welch: threshold = baseline mean - margin) and m
free values, the t statistic is a ratio of the mean to a standard error that grows with the spread,
so it stays bounded. Writing zbar and SS for the finished values' mean and sum of squared deviations,
n = k + m and w = var(baseline) / n_baseline (0 for one-sample and paired):

    sup over the free values of -t  =  sqrt(zbar^2 / R + m (n - 1) / k)   if zbar < 0
                                      sqrt(m (n - 1) / k)                   if zbar >= 0 (a limit)
    with R = SS / (n (n - 1)) + w         (R = 0 and zbar < 0: unbounded, never futile)

For one-sample and paired tests df = n - 1 is fixed, so "sup -t <= t_crit(n - 1)" is exact: futile if
and only if no completion is significant. For Welch, df depends on the free values; comparing with the
smallest critical value any df can reach (df <= n + n_baseline - 2) is conservative: it may keep a
variant that is in fact futile, never the reverse.

Only numpy and scipy (through pgolf.stats): the driver and the tests import this without Ray or torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pgolf import stats

# "sup -t < t_crit" is decided with this relative slack, so rounding in scipy's t quantile or in the
# final test can never turn a completion that sits exactly on the boundary into a cancelled winner.
SAFETY = 1e-9


@dataclass(frozen=True)
class Bound:
    """The best any completion can do for one final test (one test kind and one final seed count)."""
    test: str
    n_final: int  # finished values + free values in this final test
    m_free: int
    sup_neg_t: float  # supremum of -t over the free values (inf: unbounded)
    attained: bool  # False when the supremum is only approached as the free values go to -infinity
    argmax_nats: float | None  # the free value (all equal) that attains it, in the test's own units
    t_crit: float  # the critical value compared against
    exact: bool  # True: futile <=> no completion is significant; False: conservative (Welch)
    shift_nats: float  # how much lower the finished values' mean must be for this case to stay viable

    @property
    def futile(self) -> bool:
        return self.sup_neg_t < self.t_crit * (1.0 - SAFETY)


def sup_neg_t(done_z: Sequence[float], m: int, w: float = 0.0) -> tuple[float, bool, float | None]:
    """(sup of -t, attained, argmax free value in z units) over m free values all taking any real value.

    `done_z` are the finished values minus the threshold; t = mean(z) / sqrt(var(z) / n + w) over all
    n = k + m values (w = 0: the one-sample statistic). Free values that are all equal are optimal: for a
    fixed mean, equal values minimize the variance and so maximize -t when the mean is below 0."""
    z = np.asarray(done_z, dtype=np.float64).reshape(-1)
    k = int(z.size)
    if k < 1 or m < 1:
        raise ValueError(f"sup_neg_t needs at least one finished and one free value, got k={k}, m={m}")
    if w < 0 or not math.isfinite(w):
        raise ValueError(f"w must be finite and >= 0, got {w}")
    n = k + m
    zbar = float(z.mean())
    ss = 0.0 if z.min() == z.max() else float(((z - zbar) ** 2).sum())
    limit = math.sqrt(m * (n - 1) / k)
    r = ss / (n * (n - 1)) + w
    if zbar >= 0:
        return limit, zbar == 0 and r == 0, None
    if r == 0:
        return math.inf, True, zbar  # every value equal and below the threshold: se 0, t = -inf
    p = k * m / (n * n * (n - 1))
    u = (m / n) * r / (zbar * p)  # argmax offset from the finished mean (negative)
    return math.sqrt(zbar * zbar / r + limit * limit), True, zbar + u


def _shift(zbar: float, r: float, limit: float, t_crit: float) -> float:
    """Smallest drop of the finished mean after which this case is no longer futile (0 when it is not)."""
    if limit >= t_crit * (1.0 - SAFETY):
        return 0.0
    need = -math.sqrt(r * (t_crit * t_crit - limit * limit)) if r > 0 else 0.0
    return max(0.0, zbar - need)


def bound(test: str, done_z: Sequence[float], m: int, alpha: float, *, var_b: float = 0.0,
          n_b: int = 0) -> Bound:
    """The bound for one final test of `len(done_z) + m` values."""
    z = np.asarray(done_z, dtype=np.float64)
    k, n = int(z.size), int(z.size) + m
    if test == stats.WELCH:
        if n_b < 2:
            raise ValueError("Welch needs at least 2 baseline values")
        w = var_b / n_b
        tc, exact = stats.t_critical(alpha, n + n_b - 2), False
    elif test in (stats.ONE_SAMPLE, stats.PAIRED):
        w = 0.0
        tc, exact = stats.t_critical(alpha, n - 1), True
    else:
        raise ValueError(f"unknown test {test!r}")
    sup, attained, arg = sup_neg_t(z, m, w)
    zbar = float(z.mean())
    ss = 0.0 if z.min() == z.max() else float(((z - zbar) ** 2).sum())
    r = ss / (n * (n - 1)) + w
    return Bound(test=test, n_final=n, m_free=m, sup_neg_t=sup, attained=attained, argmax_nats=arg,
                 t_crit=tc, exact=exact, shift_nats=_shift(zbar, r, math.sqrt(m * (n - 1) / k), tc))


@dataclass(frozen=True)
class Decision:
    futile: bool
    bounds: list[Bound]
    reason: str
    shift_nats: float  # the finished seeds' mean would have to be this much lower to keep a chance
    exact: bool  # every bound that decided it is exact
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return stats._clean({"futile": self.futile, "reason": self.reason, "shift_nats": self.shift_nats,
                             "exact": self.exact, "notes": self.notes,
                             "bounds": [dict(vars(b), futile=b.futile) for b in self.bounds]})


def _final_cases(done: Mapping[int, float], remaining: Sequence[int], baseline: Any) -> list[tuple[int, str]]:
    """(free-value count, test kind) for every final seed set this variant can end with: any non-empty
    subset of the unfinished seeds may finish (the others fail), and stats.compare picks the test from
    the seed set exactly as here."""
    k, rem = len(done), set(remaining)
    cases: list[tuple[int, str]] = []
    for m in range(1, len(rem) + 1):
        if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            cases.append((m, stats.ONE_SAMPLE))
            continue
        base_seeds = set(baseline) if isinstance(baseline, Mapping) else None
        n_base = len(baseline)
        paired_possible = (base_seeds is not None and k + m >= 2 and set(done) <= base_seeds
                           and len(base_seeds) == k + m and base_seeds - set(done) <= rem)
        other_possible = math.comb(len(rem), m) > (1 if paired_possible else 0)
        if paired_possible:
            cases.append((m, stats.PAIRED))
        if other_possible:
            cases.append((m, stats.ONE_SAMPLE if n_base == 1 else stats.WELCH))
    return cases


def _single(baseline: Any) -> float:
    """The one number a one-sample test compares with: a record, or a baseline of one value."""
    if isinstance(baseline, Mapping):
        return float(next(iter(baseline.values())))
    if isinstance(baseline, (list, tuple, np.ndarray)):
        return float(baseline[0])
    return float(baseline)


def decide(done: Mapping[int, float], remaining: Sequence[int], baseline: Any, *, margin_nats: float,
           alpha: float) -> Decision:
    """Whether no values of the `remaining` seeds can make the final test significant.

    `done`: {seed: final/val_loss in nats} of the finished OK seeds; `remaining`: seeds that have not
    finished (running or not started; failed seeds are neither). `baseline` as for stats.compare: a
    number, a {seed: value} mapping or a list of values, all in nats. Holm's correction over several
    variants only raises p, so a variant futile on its own test is futile under Holm too."""
    stats._check_alpha_margin(alpha, margin_nats)
    done = {int(s): float(v) for s, v in done.items()}
    remaining = [int(s) for s in remaining if int(s) not in done]
    if not done or not remaining:
        why = "no finished seed yet" if not done else "no unfinished seed left"
        return Decision(False, [], why, 0.0, True)
    seeds = sorted(done)
    x = np.array([done[s] for s in seeds])
    bounds = []
    for m, test in _final_cases(done, remaining, baseline):
        if test == stats.ONE_SAMPLE:
            ref = _single(baseline)
            bounds.append(bound(test, x - (ref - margin_nats), m, alpha))
        elif test == stats.PAIRED:
            d = np.array([done[s] - float(baseline[s]) for s in seeds])
            bounds.append(bound(test, d + margin_nats, m, alpha))
        else:
            b = np.asarray(list(baseline.values()) if isinstance(baseline, Mapping) else baseline, dtype=np.float64)
            var_b = float(np.var(b, ddof=1)) if b.min() != b.max() else 0.0
            bounds.append(bound(test, x - (float(b.mean()) - margin_nats), m, alpha, var_b=var_b, n_b=int(b.size)))
    futile = bool(bounds) and all(b.futile for b in bounds)
    best = max(bounds, key=lambda b: b.sup_neg_t / b.t_crit) if bounds else None
    shift = min((b.shift_nats for b in bounds), default=0.0) if futile else 0.0
    if futile and best is not None:
        kind = "exact" if all(b.exact for b in bounds) else "conservative (Welch: smallest t_crit over every df)"
        reason = (f"futile: whatever the {len(remaining)} unfinished seed(s) score, the best reachable "
                  f"{best.test} has t >= {-best.sup_neg_t:.3f} > -{best.t_crit:.3f} (t_crit, alpha {alpha}); "
                  f"the {len(done)} finished seed(s) would need a mean {shift:.5f} nats lower to keep a chance "
                  f"[{kind} bound]")
    else:
        reason = (f"still viable: {best.test} can reach t = {-best.sup_neg_t:.3f} vs -{best.t_crit:.3f}"
                  if best is not None else "no final test applies")
    return Decision(futile, bounds, reason, shift, all(b.exact for b in bounds))


# --------------------------------------------------------------------------------------------------
# second rule (an assumption, clearly separate): conditional power


def conditional_power(done: Mapping[int, float], remaining: Sequence[int], baseline: Any, *, margin_nats: float,
                      alpha: float, seed_std_nats: float, draws: int = 2000, rng_seed: int = 0) -> float:
    """P(final test significant) if every unfinished seed finishes with a value drawn from
    Normal(mean of the finished seeds, seed_std_nats^2). This rests on that assumed spread (techniques.md
    section 6: 0.0005-0.0015 nats between seeds of one record); `decide` rests on nothing."""
    if not seed_std_nats > 0:
        raise ValueError(f"seed_std_nats must be > 0, got {seed_std_nats}")
    done = {int(s): float(v) for s, v in done.items()}
    remaining = [int(s) for s in remaining if int(s) not in done]
    if not done or not remaining:
        return math.nan
    rng = np.random.default_rng(rng_seed)
    mu = float(np.mean(list(done.values())))
    hits = 0
    for row in rng.normal(mu, seed_std_nats, size=(draws, len(remaining))):
        new = {**done, **dict(zip(remaining, row.tolist()))}
        res = stats.compare(new, baseline, margin_nats=margin_nats, alpha=alpha)
        hits += bool(res.significant)
    return hits / draws
