"""Seed statistics and the record significance tests.

The challenge rule: a new record must beat the current one by at least 0.005 nats of val_loss at p < 0.01.
Scores are published in bits per byte, so every test here runs on val_loss (nats per token) and converts
deltas to BPB only for display, using the run's own measured tokens per byte.

Sign convention: lower loss is better, so every test is one-sided "new mean < baseline mean - margin",
t is negative when the new runs look better, and `delta_nats = new mean - baseline mean` is negative for
an improvement.

Only numpy and scipy are imported: the driver, the dashboards and the tests all use this module and
must not pull in torch, Ray or MLflow.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as _sps

from pgolf.formatting import json_safe as _clean

__all__ = [
    "LN2",
    "HolmResult",
    "Summary",
    "TestResult",
    "bpb_to_nats",
    "compare",
    "holm",
    "nats_to_bpb",
    "one_sample_vs_record",
    "paired_vs_baseline",
    "describe",
    "t_critical",
    "welch_df",
    "welch_vs_baseline",
]

LN2 = math.log(2.0)

# Beyond this many seeds a "seeds needed" estimate is no longer advice anyone would act on.
_MAX_SEEDS_SEARCH = 1000


# --------------------------------------------------------------------------------------------------
# helpers


def _as_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, Mapping):
        values = list(values.values())
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: no values")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        # A diverged seed has no loss to average; the caller reports it as failed instead.
        raise ValueError(f"{what}: non-finite values at positions {bad.tolist()}: {arr[bad].tolist()}")
    return arr


def _check_alpha_margin(alpha: float, margin_nats: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not math.isfinite(margin_nats) or margin_nats < 0:
        raise ValueError(f"margin_nats must be finite and >= 0, got {margin_nats}")


def _sample_std(arr: np.ndarray) -> float:
    if arr.size < 2:
        return math.nan
    # Identical values must give exactly 0 (not rounding noise from the mean) so the zero-spread limit applies.
    return 0.0 if arr.min() == arr.max() else float(np.std(arr, ddof=1))


def t_critical(alpha: float, df: float) -> float:
    """One-sided critical value t_{1-alpha, df} (df=2, alpha=0.01 -> 6.965)."""
    if not (math.isfinite(df) and df > 0):
        return math.nan
    return float(_sps.t.ppf(1.0 - alpha, df))


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom for two samples with sample variances var_a, var_b."""
    qa, qb = var_a / n_a, var_b / n_b
    denom = (qa * qa / (n_a - 1) if n_a > 1 else math.inf) + (qb * qb / (n_b - 1) if n_b > 1 else math.inf)
    if denom == 0 or not math.isfinite(denom):
        return math.nan
    return float((qa + qb) ** 2 / denom)


def _t_and_p(gap: float, se: float, df: float, scipy_test) -> tuple[float, float]:
    """t and one-sided ("less") p of `scipy_test()` (a scipy.stats t-test, alternative="less"), where
    gap = mean - threshold and se its standard error.

    Identical seeds (se == 0) happen with deterministic CPU smoke runs; scipy then has no answer, but
    the limit of the test is certain, not undefined, unless the mean sits exactly on the threshold."""
    if not math.isfinite(se) or not math.isfinite(df):
        return math.nan, math.nan
    if se == 0.0:
        if gap < 0:
            return -math.inf, 0.0
        if gap > 0:
            return math.inf, 1.0
        return math.nan, math.nan
    res = scipy_test()
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------------------------------
# units


def nats_to_bpb(delta_nats: Any, tokens_per_byte: float) -> Any:
    """nats per token -> bits per byte: divide by ln 2 (nats -> bits), multiply by tokens per byte.

    Works for absolute losses and for deltas alike (the map is linear with no offset)."""
    _check_tpb(tokens_per_byte)
    out = np.asarray(delta_nats, dtype=np.float64) / LN2 * tokens_per_byte
    return float(out) if out.ndim == 0 else out


def bpb_to_nats(delta_bpb: Any, tokens_per_byte: float) -> Any:
    """bits per byte -> nats per token; the inverse of `nats_to_bpb`."""
    _check_tpb(tokens_per_byte)
    out = np.asarray(delta_bpb, dtype=np.float64) * LN2 / tokens_per_byte
    return float(out) if out.ndim == 0 else out


def _check_tpb(tokens_per_byte: float) -> None:
    if not (isinstance(tokens_per_byte, (int, float, np.floating)) and math.isfinite(tokens_per_byte)
            and tokens_per_byte > 0):
        raise ValueError(f"tokens_per_byte must be a positive finite number, got {tokens_per_byte!r}")


# --------------------------------------------------------------------------------------------------
# summary


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample std (ddof=1); nan when n < 2
    sem: float
    ci_low: float  # t-based interval at `confidence`
    ci_high: float
    min: float
    max: float
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


def describe(values: Any, confidence: float = 0.95) -> Summary:
    """n, mean, sample std, standard error, t-based confidence interval, min and max of seed scores."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = _as_array(values, "describe")
    n = int(arr.size)
    mean = float(arr.mean())
    std = _sample_std(arr)
    sem = std / math.sqrt(n) if n >= 2 else math.nan
    lo = hi = math.nan
    if n >= 2:
        lo, hi = (mean, mean) if sem == 0 else map(float, _sps.t.interval(confidence, n - 1, loc=mean, scale=sem))
    return Summary(n=n, mean=mean, std=std, sem=sem, ci_low=lo, ci_high=hi,
                   min=float(arr.min()), max=float(arr.max()), confidence=confidence)


# --------------------------------------------------------------------------------------------------
# tests


ONE_SAMPLE = "one-sample t (one-sided)"
WELCH = "Welch t (one-sided)"
PAIRED = "paired t (one-sided)"


@dataclass(frozen=True)
class TestResult:
    """Outcome of one significance test, in nats (the rule's unit) with BPB copies for display.

    `required_improvement_nats` is how far below the threshold (baseline mean - margin) the new mean has to
    sit for p < alpha at this n, given the observed spread: t_crit(1 - alpha, df) * SE. Compare it with
    `improvement_over_threshold_nats`; `seeds_needed` is the smallest number of new seeds that would reach
    significance if mean and std stayed as observed (None when the mean does not beat the threshold)."""

    __test__ = False  # not a pytest test class despite the name

    test: str
    n: int
    df: float
    t: float
    p: float
    alpha: float
    margin_nats: float
    mean_nats: float
    baseline_mean_nats: float
    threshold_nats: float
    delta_nats: float
    std_nats: float
    se_nats: float
    t_crit: float
    required_improvement_nats: float
    improvement_over_threshold_nats: float
    significant: bool
    n_baseline: int | None = None
    seeds_needed: int | None = None
    tokens_per_byte: float | None = None
    delta_bpb: float | None = None
    required_improvement_bpb: float | None = None
    margin_bpb: float | None = None
    seeds: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _finish(*, test: str, n: int, df: float, gap: float, se: float, scipy_test, alpha: float, margin_nats: float,
            mean: float, baseline_mean: float, std: float, tokens_per_byte: float | None,
            n_baseline: int | None = None, seeds_needed: int | None = None,
            seeds: list[int] | None = None, notes: list[str] | None = None) -> TestResult:
    t, p = _t_and_p(gap, se, df, scipy_test)
    crit = t_critical(alpha, df)
    required = 0.0 if se == 0.0 else crit * se
    delta = mean - baseline_mean
    bpb = {}
    if tokens_per_byte is not None:
        bpb = dict(delta_bpb=nats_to_bpb(delta, tokens_per_byte),
                   required_improvement_bpb=(nats_to_bpb(required, tokens_per_byte)
                                             if math.isfinite(required) else math.nan),
                   margin_bpb=nats_to_bpb(margin_nats, tokens_per_byte))
    return TestResult(
        test=test, n=n, df=df, t=t, p=p, alpha=alpha, margin_nats=margin_nats, mean_nats=mean,
        baseline_mean_nats=baseline_mean, threshold_nats=baseline_mean - margin_nats, delta_nats=delta,
        std_nats=std, se_nats=se, t_crit=crit, required_improvement_nats=required,
        improvement_over_threshold_nats=-gap, significant=bool(p < alpha) if math.isfinite(p) else False,
        n_baseline=n_baseline, seeds_needed=seeds_needed, tokens_per_byte=tokens_per_byte, seeds=seeds,
        notes=list(notes or []), **bpb)


def _seeds_needed_one_sample(gap: float, std: float, alpha: float) -> int | None:
    """Smallest n whose t_crit(n-1) * std / sqrt(n) is beaten by the observed improvement -gap."""
    if not (math.isfinite(gap) and math.isfinite(std)) or gap >= 0:
        return None
    if std == 0.0:
        return 2
    for n in range(2, _MAX_SEEDS_SEARCH + 1):
        if t_critical(alpha, n - 1) * std / math.sqrt(n) < -gap:
            return n
    return None


def _few_seeds_note(n: int) -> list[str]:
    return [f"n={n}: a t-test needs at least 2 values; t and p are undefined"] if n < 2 else []


def one_sample_vs_record(values_nats: Any, record_nats: float, margin_nats: float = 0.005,
                         alpha: float = 0.01, *, tokens_per_byte: float | None = None) -> TestResult:
    """One-sided one-sample t-test, H0: mean >= record - margin (the README rule against a published number):
    scipy.stats.ttest_1samp(values, record - margin, alternative="less")."""
    _check_alpha_margin(alpha, margin_nats)
    arr = _as_array(values_nats, "one_sample_vs_record")
    n = int(arr.size)
    mean, std = float(arr.mean()), _sample_std(arr)
    threshold = float(record_nats) - margin_nats
    se = std / math.sqrt(n) if n >= 2 else math.nan
    gap = mean - threshold
    return _finish(test=ONE_SAMPLE, n=n, df=float(n - 1) if n >= 2 else math.nan, gap=gap, se=se,
                   scipy_test=lambda: _sps.ttest_1samp(arr, threshold, alternative="less"), alpha=alpha, margin_nats=margin_nats, mean=mean, baseline_mean=float(record_nats),
                   std=std, tokens_per_byte=tokens_per_byte,
                   seeds_needed=_seeds_needed_one_sample(gap, std, alpha), notes=_few_seeds_note(n))


def welch_vs_baseline(values_nats: Any, baseline_nats: Any, margin_nats: float = 0.005,
                      alpha: float = 0.01, *, tokens_per_byte: float | None = None) -> TestResult:
    """One-sided Welch test that the new mean is below (baseline mean - margin): the baseline seeds are
    shifted down by the margin, scipy.stats.ttest_ind(new, baseline - margin, equal_var=False,
    alternative="less"); df is Welch-Satterthwaite."""
    _check_alpha_margin(alpha, margin_nats)
    a = _as_array(values_nats, "welch_vs_baseline (new)")
    b = _as_array(baseline_nats, "welch_vs_baseline (baseline)")
    na, nb = int(a.size), int(b.size)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    va, vb = _sample_std(a) ** 2, _sample_std(b) ** 2
    notes = _few_seeds_note(na)
    if nb < 2:
        notes.append(f"baseline has n={nb}; Welch needs at least 2 baseline values (use the one-sample test)")
    gap = mean_a - (mean_b - margin_nats)
    if na >= 2 and nb >= 2:
        se = math.sqrt(va / na + vb / nb)
        df = welch_df(va, na, vb, nb)
        if se == 0.0:
            df = float(na + nb - 2)  # both samples constant: df is 0/0; any value gives the same limit
    else:
        se, df = math.nan, math.nan
    return _finish(test=WELCH, n=na, df=df, gap=gap, se=se, alpha=alpha, margin_nats=margin_nats,
                   mean=mean_a, baseline_mean=mean_b, std=math.sqrt(va) if na >= 2 else math.nan,
                   scipy_test=lambda: _sps.ttest_ind(a, b - margin_nats, equal_var=False, alternative="less"),
                   tokens_per_byte=tokens_per_byte, n_baseline=nb,
                   seeds_needed=_seeds_needed_welch(gap, va, vb, nb, alpha), notes=notes)


def _seeds_needed_welch(gap: float, va: float, vb: float, nb: int, alpha: float) -> int | None:
    """Smallest new-seed count that reaches significance with the baseline seeds held fixed. The
    baseline's own variance puts a floor under the SE, so this can be None however many seeds are added."""
    if not (math.isfinite(gap) and math.isfinite(va) and math.isfinite(vb)) or gap >= 0 or nb < 2:
        return None
    for n in range(2, _MAX_SEEDS_SEARCH + 1):
        se = math.sqrt(va / n + vb / nb)
        if se == 0.0:
            return n
        df = welch_df(va, n, vb, nb)
        if t_critical(alpha, df) * se < -gap:
            return n
    return None


def _normalize_seeds(by_seed: Mapping[Any, float], what: str) -> dict[int, float]:
    """Seeds arrive as ints from configs and as strings from MLflow tags and JSON keys; compare them as ints."""
    out: dict[int, float] = {}
    for k, v in by_seed.items():
        try:
            seed = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: seed {k!r} is not an integer") from None
        if seed in out:
            raise ValueError(f"{what}: seed {seed} appears twice")
        out[seed] = float(v)
    return out


def paired_vs_baseline(values_by_seed: Mapping[Any, float], baseline_by_seed: Mapping[Any, float],
                       margin_nats: float = 0.005, alpha: float = 0.01, *,
                       tokens_per_byte: float | None = None) -> TestResult:
    """Paired one-sided t-test on per-seed differences, H0: mean(new - baseline) >= -margin.

    Valid only when both arms ran the same seed list (the seed fixes init and data order, so pairing
    removes the between-seed variance); any mismatch is an error naming the seeds."""
    _check_alpha_margin(alpha, margin_nats)
    new = _normalize_seeds(values_by_seed, "paired_vs_baseline (new)")
    base = _normalize_seeds(baseline_by_seed, "paired_vs_baseline (baseline)")
    only_new, only_base = sorted(set(new) - set(base)), sorted(set(base) - set(new))
    if only_new or only_base:
        raise ValueError("paired test needs identical seed lists: "
                         f"only in new runs {only_new}, only in baseline {only_base}")
    seeds = sorted(new)
    a = _as_array([new[s] for s in seeds], "paired_vs_baseline (new)")
    b = _as_array([base[s] for s in seeds], "paired_vs_baseline (baseline)")
    d = a - b
    n = int(d.size)
    std = _sample_std(d)
    se = std / math.sqrt(n) if n >= 2 else math.nan
    gap = float(d.mean()) + margin_nats
    return _finish(test=PAIRED, n=n, df=float(n - 1) if n >= 2 else math.nan, gap=gap, se=se, alpha=alpha,
                   scipy_test=lambda: _sps.ttest_1samp(d, -margin_nats, alternative="less"),
                   margin_nats=margin_nats, mean=float(a.mean()), baseline_mean=float(b.mean()), std=std,
                   tokens_per_byte=tokens_per_byte, n_baseline=n,
                   seeds_needed=_seeds_needed_one_sample(gap, std, alpha), seeds=seeds,
                   notes=_few_seeds_note(n))


def compare(new_by_seed: Mapping[Any, float] | Sequence[float], baseline: Any, *,
            margin_nats: float = 0.005, alpha: float = 0.01,
            tokens_per_byte: float | None = None) -> TestResult:
    """Pick the strongest valid test for the baseline at hand (all values in nats):

    - `baseline` is a number (a published record score)          -> one-sample vs (baseline - margin)
    - a {seed: value} mapping with exactly the new runs' seeds    -> paired
    - two or more values (a mapping with other seeds, or a list)  -> Welch
    - a single value in a list or mapping                          -> one-sample against it
    """
    kw = dict(margin_nats=margin_nats, alpha=alpha, tokens_per_byte=tokens_per_byte)
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, bool):
        return one_sample_vs_record(_values(new_by_seed), float(baseline), **kw)
    if isinstance(baseline, Mapping):
        if isinstance(new_by_seed, Mapping):
            new_seeds = set(_normalize_seeds(new_by_seed, "compare (new)"))
            base_seeds = set(_normalize_seeds(baseline, "compare (baseline)"))
            if new_seeds == base_seeds and len(new_seeds) >= 2:
                return paired_vs_baseline(new_by_seed, baseline, **kw)
        base_values = list(baseline.values())
    elif isinstance(baseline, (Sequence, np.ndarray)) and not isinstance(baseline, (str, bytes)):
        base_values = list(np.asarray(baseline, dtype=np.float64).reshape(-1))
    else:
        raise TypeError(f"baseline must be a number, a list of values or a {{seed: value}} mapping, "
                        f"got {type(baseline).__name__}")
    if len(base_values) == 0:
        raise ValueError("compare: baseline has no values")
    if len(base_values) == 1:
        return one_sample_vs_record(_values(new_by_seed), float(base_values[0]), **kw)
    return welch_vs_baseline(_values(new_by_seed), base_values, **kw)


def _values(x: Mapping[Any, float] | Sequence[float]) -> list[float]:
    return list(x.values()) if isinstance(x, Mapping) else list(x)


# --------------------------------------------------------------------------------------------------
# multiple comparisons


class HolmResult(NamedTuple):
    adjusted_p: float
    reject: bool


def holm(pvalues: Mapping[str, float], alpha: float = 0.01) -> dict[str, HolmResult]:
    """Holm-Bonferroni step-down over a family of tests (e.g. sweep variants vs one baseline).

    Adjusted p for the i-th smallest of m p-values is max over j <= i of min(1, (m - j + 1) * p_(j)); a
    hypothesis is rejected when its adjusted p < alpha, strict like the challenge's "p < 0.01". Returned in
    the input order."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    items = list(pvalues.items())
    for name, p in items:
        if not (isinstance(p, (int, float, np.floating)) and 0.0 <= float(p) <= 1.0):
            raise ValueError(f"holm: p-value for {name!r} must be in [0, 1], got {p!r}")
    m = len(items)
    order = sorted(range(m), key=lambda i: float(items[i][1]))
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(items[i][1])))
        adjusted[items[i][0]] = running
    return {name: HolmResult(adjusted[name], adjusted[name] < alpha) for name, _ in items}
