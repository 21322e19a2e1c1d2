"""The gate between the pending trials and Ray Tune: a Tune Searcher that hands out one trial at a time
and, before each start, consults the budget caps (--max-gpu-hours / --max-usd) and, for validate
--stop-futile, the futility bound of the trial's variant.

Trials it does not start are recorded as MLflow child runs that never ran (status KILLED, tag
`pgolf.outcome` = "NOT STARTED (budget)" or "CANCELLED", the reason in `status_reason`, zero cost), so
the parent run and the table show them and `--resume` runs them later. A running trial is never stopped
by the gate: it only decides what starts (R3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgolf import cost, futility, tracking
from pgolf.trainers.contract import FINAL_LOSS, TOKENS_PER_BYTE

OUTCOME = "pgolf.outcome"
NOT_STARTED = "NOT STARTED (budget)"
CANCELLED = "CANCELLED"


@dataclass
class GateState:
    """Plain data, so Tune may pickle the searcher."""
    pending: list[str]  # spec keys not yet handed out, in order
    variant_of: dict[str, str]
    seed_of: dict[str, int]
    worst: cost.TrialCost
    expected: cost.TrialCost
    ledger: cost.Ledger
    stop_futile: bool = False
    power_below: float = 0.0  # second rule, an assumption: cancel when conditional power < this
    seed_std_nats: float = 0.0
    done: dict[str, dict[int, float]] = field(default_factory=dict)  # variant -> {seed: final/val_loss}
    failed: dict[str, set] = field(default_factory=dict)  # variant -> seeds that ended without a value
    running: dict[str, str] = field(default_factory=dict)  # Tune trial id -> spec key
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (outcome, reason)
    tokens_per_byte: list[float] = field(default_factory=list)
    decisions: dict[str, dict] = field(default_factory=dict)  # variant -> futility.Decision.to_dict()
    decided: dict[str, tuple] = field(default_factory=dict)  # variant -> the inputs of its last "keep" verdict


def make_searcher(inv: Any, ledger: cost.Ledger, *, stop_futile: bool, prices: cost.Prices,
                  power_below: float = 0.0, seed_std_nats: float = 0.0):
    """The Searcher for `inv` (an orchestrate.Invocation with fixed specs)."""
    from ray.tune.search import Searcher

    exp = inv.exp
    state = _state(inv, ledger, prices, pending=[s.key for s in inv.plan.to_run],
                   variant_of={s.key: s.variant for s in inv.plan.specs}, seed_of={s.key: s.seed for s in inv.plan.specs},
                   stop_futile=stop_futile, power_below=power_below, seed_std_nats=seed_std_nats)
    for key, run in inv.plan.resumed.items():  # seeds finished earlier count for futility
        v = run.data.metrics.get(FINAL_LOSS)
        if v is not None:
            state.done.setdefault(state.variant_of[key], {})[state.seed_of[key]] = float(v)
    hashes = {s.variant: s.config_hash for s in inv.plan.specs}

    class Gate(Searcher):
        def __init__(self):
            super().__init__(metric=None, mode=None)
            self.state = state

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id: str):
            st = self.state
            while st.pending:
                key = st.pending[0]
                if st.stop_futile and self._cancel_if_futile(st.variant_of[key]):
                    continue
                verdict = st.ledger.check(st.worst)
                if verdict == "wait":
                    return None
                if verdict == "never":
                    reason = _over_budget(st)
                    for k in list(st.pending):
                        self._record(k, NOT_STARTED, reason)
                    st.pending.clear()
                    break
                st.pending.pop(0)
                st.ledger.start(key, st.worst)
                st.running[trial_id] = key
                return {"key": key}
            return Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            st = self.state
            key = _charge(st, trial_id, result)
            if key is None:
                return
            r = result or {}
            variant, seed = st.variant_of[key], st.seed_of[key]
            loss = r.get(FINAL_LOSS) if r.get("ok") else None
            if isinstance(loss, (int, float)):
                st.done.setdefault(variant, {})[seed] = float(loss)
                if isinstance(r.get(TOKENS_PER_BYTE), (int, float)):
                    st.tokens_per_byte.append(float(r[TOKENS_PER_BYTE]))
            else:
                st.failed.setdefault(variant, set()).add(seed)
            if st.stop_futile:
                self._cancel_if_futile(variant)

        def _cancel_if_futile(self, variant: str) -> bool:
            st = self.state
            pending = [k for k in st.pending if st.variant_of[k] == variant]
            if not pending or not st.done.get(variant):
                return False
            if exp.baseline.config_hash and hashes.get(variant) == exp.baseline.config_hash:
                return False  # the baseline itself is not tested
            baseline = self._baseline()
            if baseline is None:
                return False
            running = [st.seed_of[k] for k in st.running.values() if st.variant_of[k] == variant]
            remaining = running + [st.seed_of[k] for k in pending]
            inputs = (tuple(sorted(st.done[variant].items())), tuple(sorted(remaining)))
            if st.decided.get(variant) == inputs:  # Tune asks often; nothing changed since "keep"
                return False
            b = exp.baseline
            dec = futility.decide(st.done[variant], remaining, baseline, margin_nats=b.margin_nats, alpha=b.alpha)
            st.decisions[variant] = dec.to_dict()
            reason = dec.reason
            if not dec.futile and st.power_below > 0:
                power = futility.conditional_power(st.done[variant], remaining, baseline, margin_nats=b.margin_nats,
                                                   alpha=b.alpha, seed_std_nats=st.seed_std_nats)
                st.decisions[variant]["conditional_power"] = power
                if not power < st.power_below:
                    st.decided[variant] = inputs
                    return False
                reason = (f"low conditional power (an assumption, not a bound): P(significant) = {power:.3f} < "
                          f"{st.power_below:g} if the unfinished seeds score like Normal(mean of the finished ones, "
                          f"{st.seed_std_nats:g} nats); {dec.reason}")
            elif not dec.futile:
                st.decided[variant] = inputs
                return False
            for k in pending:
                st.pending.remove(k)
                self._record(k, CANCELLED, reason)
            print(f"  futility: {variant}: cancelled {len(pending)} seed(s) "
                  f"({', '.join(str(st.seed_of[k]) for k in pending)}); {reason}; saved "
                  f"{_saved_text(st.expected, st.worst, len(pending))}", flush=True)
            return True

        def _baseline(self):
            """The baseline in nats, or None while it is unknown or still being run here."""
            from pgolf.summary import _baseline_nats

            b = exp.baseline
            if b.config_hash:
                base_keys = [s.key for s in inv.plan.specs if s.config_hash == b.config_hash]
                if any(k in self.state.pending or k in self.state.running.values() for k in base_keys):
                    return None
            tpb = (sum(self.state.tokens_per_byte) / len(self.state.tokens_per_byte)
                   if self.state.tokens_per_byte else None)
            try:
                value, _, _ = _baseline_nats(exp, tpb, inv.uri, inv.experiment_id)
            except Exception:  # noqa: BLE001 - no baseline, no decision: the seeds run
                return None
            return value

        def _record(self, key: str, outcome: str, reason: str) -> None:
            self.state.outcomes[key] = (outcome, reason)
            record_unstarted(inv, key, outcome, reason)

        def save(self, checkpoint_path: str) -> None:  # the gate's decisions live in MLflow
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

    return Gate()


def make_budget_searcher(inv: Any, inner: Any, ledger: cost.Ledger, *, prices: cost.Prices, **_futility):
    """Budget caps around a searcher that picks its own points (tune with search = "optuna"): the same
    rule as for fixed specs (start only when the worst case fits), the points left to `inner`. Samples
    never started have no config yet, so they are counted on the parent run, not recorded as child runs."""
    from ray.tune.search import Searcher

    state = _state(inv, ledger, prices, pending=[], variant_of={}, seed_of={})
    total = inv.exp.sweep.num_samples * len(inv.seeds)

    class BudgetGate(Searcher):
        def __init__(self):
            super().__init__(metric=inner.metric, mode=inner.mode)
            self.state, self.handed = state, 0

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return inner.set_search_properties(metric, mode, config, **spec)

        def suggest(self, trial_id: str):
            st = self.state
            verdict = st.ledger.check(st.worst) if self.handed < total else "start"
            if verdict == "wait":
                return None
            if verdict == "never":
                reason = _over_budget(st)
                for i in range(self.handed, total):
                    st.outcomes[f"sample-{i + 1}"] = (NOT_STARTED, reason)
                print(f"  {total - self.handed} of {total} trial(s) NOT STARTED (budget): {reason}", flush=True)
                self.handed = total
                return Searcher.FINISHED
            config = inner.suggest(trial_id)
            if config is not None and config != Searcher.FINISHED:
                self.handed += 1
                st.ledger.start(trial_id, st.worst)
                st.running[trial_id] = trial_id
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            inner.on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            _charge(self.state, trial_id, result)
            inner.on_trial_complete(trial_id, result=result, error=error)

        def save(self, checkpoint_path: str) -> None:
            inner.save(checkpoint_path)

        def restore(self, checkpoint_path: str) -> None:
            inner.restore(checkpoint_path)

    return BudgetGate()


def _state(inv: Any, ledger: cost.Ledger, prices: cost.Prices, **kw) -> GateState:
    g, c = inv.exp.resources.gpus, max(inv.exp.resources.cpus, 1)
    return GateState(worst=cost.TrialCost.of(g, c, cost.worst_seconds(inv.ctx.deadline_seconds), prices),
                     expected=cost.TrialCost.of(g, c, cost.expected_seconds(inv.exp.budget), prices),
                     ledger=ledger, **kw)


def _over_budget(st: GateState) -> str:
    return (f"budget: its worst case ({cost.fmt_hours(st.worst.gpu_seconds)} GPU-hours"
            f"{', ' + cost.fmt_usd(st.worst.usd) if st.worst.usd is not None else ''}) exceeds "
            f"what is left ({st.ledger.left_text()}); run --resume with a larger cap")


def _charge(st: GateState, trial_id: str, result: dict | None) -> str | None:
    """Move a finished trial's reservation to its actual spend; the key it ran, or None if not ours."""
    key = st.running.pop(trial_id, None)
    if key is None:
        return None
    r = result or {}
    if "cost/gpu_seconds" in r:
        st.ledger.finish(key, float(r["cost/gpu_seconds"]), r.get("cost/usd"))
    else:  # no report (platform error): charge the worst case, the only safe figure
        st.ledger.finish(key, st.worst.gpu_seconds, st.worst.usd)
    return key


def _saved_text(expected: cost.TrialCost, worst: cost.TrialCost, n: int) -> str:
    usd = f", {cost.fmt_usd(expected.usd * n)}" if expected.usd is not None else ""
    return (f"{cost.fmt_hours(expected.gpu_seconds * n)} GPU-hours{usd} expected "
            f"(worst case {cost.fmt_hours(worst.gpu_seconds * n)})")


def record_unstarted(inv: Any, key: str, outcome: str, reason: str) -> str:
    """A child run for a trial the gate did not start: never launched, so it costs nothing."""
    spec = next(s for s in inv.plan.specs if s.key == key)
    c = tracking.client(inv.uri)
    tags = {"mlflow.parentRunId": inv.parent_id, tracking.KIND: tracking.KIND_TRIAL,
            "config_hash": spec.config_hash, "seed": str(spec.seed), "variant": spec.variant,
            "pgolf.spec_key": key, OUTCOME: outcome, "status_reason": f"{outcome}: {reason}"}
    run = c.create_run(inv.experiment_id, run_name=tracking.trial_run_name(spec.variant, spec.seed), tags=tags)
    tracking.log_metrics(c, run.info.run_id, [("cost/gpu_seconds", 0.0, 0), ("trial/ok", 0.0, 0)])
    c.set_terminated(run.info.run_id, status="KILLED")
    return run.info.run_id


def saved_metrics(state: GateState) -> dict[str, float]:
    """Parent-run metrics: what the gate kept from being spent."""
    n_c = sum(o == CANCELLED for o, _ in state.outcomes.values())
    n_b = sum(o == NOT_STARTED for o, _ in state.outcomes.values())
    out = {"futility/cancelled": float(n_c), "budget/not_started": float(n_b),
           "cost/saved_gpu_seconds_expected": state.expected.gpu_seconds * n_c,
           "cost/saved_gpu_seconds_worst": state.worst.gpu_seconds * n_c}
    if state.expected.usd is not None:
        out["cost/saved_usd_expected"] = state.expected.usd * n_c
    return out
