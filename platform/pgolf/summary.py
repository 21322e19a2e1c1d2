"""One summary of an invocation's trials, read back from MLflow: a record per requested (variant, seed),
per-variant statistics and compliance, the significance test against [baseline], the printed table and
the metrics written onto the parent run."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgolf import tracking
from pgolf.formatting import finite, integer, num, text_table
from pgolf.trainers.contract import (ARTIFACT_BYTES, EVAL_SECONDS, FINAL_BPB, FINAL_LOSS, HEADROOM_BYTES, STEPS,
                                     TOKENS_PER_BYTE, TRAIN_SECONDS)
from pgolf.experiment import Experiment
from pgolf.specs import TrialPlan, TrialSpec


@dataclass
class SeedRecord:
    key: str
    variant: str
    seed: int
    config_hash: str
    status: str  # FINISHED | FAILED | KILLED | MISSING
    reason: str
    run_id: str | None
    result: dict | None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"

    @property
    def early_stopped(self) -> bool:
        return self.status == "KILLED" and self.reason.startswith("stopped")


def collect(uri: str, experiment_id: str, parent_run_id: str, plan: TrialPlan,
            extra_specs: list[TrialSpec] | None = None) -> list[SeedRecord]:
    """One record per requested (variant, seed), from MLflow. Within this invocation a spec may have
    several runs only by accident (a searcher repeating a point); the newest FINISHED one wins."""
    by_key: dict[str, Any] = {}
    for run in sorted(tracking.child_runs(uri, experiment_id, parent_run_id), key=lambda r: r.info.start_time or 0):
        key = run.data.tags.get("pgolf.spec_key")
        prev = by_key.get(key)
        if key and (prev is None or prev.info.status != "FINISHED" or run.info.status == "FINISHED"):
            by_key[key] = run
    records = []
    for spec in plan.specs + (extra_specs or []):
        src_key = plan.duplicate_of.get(spec.key, spec.key)
        resumed = plan.resumed.get(src_key)
        run = resumed or by_key.get(src_key)
        if run is None:
            records.append(SeedRecord(spec.key, spec.variant, spec.seed, spec.config_hash, "MISSING",
                                      "no MLflow run: the trial never started or could not reach the store",
                                      None, None))
            continue
        # a trial the gate never started (budget cap, futility) says so instead of KILLED
        status = run.data.tags.get("pgolf.outcome") or run.info.status
        reason = run.data.tags.get("status_reason", "").removeprefix(f"{status}: ")
        if resumed is not None:
            reason = f"resumed: finished earlier (run {run.info.run_id[:8]})"
        result = tracking.load_result(uri, run)
        records.append(SeedRecord(spec.key, spec.variant, spec.seed, run.data.tags.get("config_hash", spec.config_hash),
                                  status, reason, run.info.run_id, result, resumed=resumed is not None))
    return records


def seed_numbers(rows: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """The per-variant numbers every summary shows (validate's table, the report, submission.json),
    from the finished seeds' results (result.json dicts, or report rows with the same keys): score
    statistics, the largest artifact, the smallest headroom, the slowest train and eval, means of
    steps, ms/step and tokens per byte. None where no seed has the value."""
    from pgolf import stats

    def vals(key: str) -> list[float]:
        return [v for r in rows if (v := finite(r.get(key))) is not None]

    def mean(key: str) -> float | None:
        v = vals(key)
        return sum(v) / len(v) if v else None

    bpb, loss = vals(FINAL_BPB), vals(FINAL_LOSS)
    return {
        FINAL_BPB: stats.describe(bpb, confidence) if bpb else None,
        FINAL_LOSS: stats.describe(loss, confidence) if loss else None,
        "artifact_bytes_max": max(vals(ARTIFACT_BYTES), default=None),
        "model_bytes_max": max(vals("artifact/model_bytes"), default=None),
        "code_bytes_max": max(vals("artifact/code_bytes"), default=None),
        "headroom_bytes_min": min(vals(HEADROOM_BYTES), default=None),
        "train_seconds_max": max(vals(TRAIN_SECONDS), default=None),
        "eval_seconds_max": max(vals(EVAL_SECONDS), default=None),
        "steps_mean": mean(STEPS), "step_ms_mean": mean("train/step_ms"), "tokens_per_byte": mean(TOKENS_PER_BYTE),
    }


def aggregate(exp: Experiment, records: list[SeedRecord], uri: str, experiment_id: str, *, kind: str = "validation",
              overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per-variant statistics, compliance and the significance test against [baseline]."""
    from pgolf import compliance, stats

    overrides = overrides or {}

    caps = compliance.Caps(artifact_bytes=exp.budget.artifact_bytes, train_seconds=exp.budget.train_seconds,
                           eval_seconds=exp.budget.eval_seconds)
    variants: dict[str, list[SeedRecord]] = {}
    for r in records:
        variants.setdefault(r.variant, []).append(r)
    out: dict[str, Any] = {}
    for name, recs in variants.items():
        all_results = [r.result for r in recs if r.result]
        ok_results = [r.result for r in recs if r.ok and r.result]
        nums = seed_numbers(ok_results)
        entry: dict[str, Any] = {
            "config_hash": recs[0].config_hash, "n_requested": len(recs), "n_ok": sum(r.ok for r in recs),
            "overrides": overrides.get(name, {}),
            "seeds": {str(r.seed): {"status": r.status, "reason": r.reason, "run_id": r.run_id, "resumed": r.resumed,
                                    FINAL_BPB: (r.result or {}).get(FINAL_BPB) if r.ok else None,
                                    FINAL_LOSS: (r.result or {}).get(FINAL_LOSS) if r.ok else None}
                      for r in recs},
            **{k: (v.to_dict() if k in (FINAL_BPB, FINAL_LOSS) and v else v) for k, v in nums.items()
               if k in (FINAL_BPB, FINAL_LOSS, "artifact_bytes_max", "headroom_bytes_min", "train_seconds_max",
                        "eval_seconds_max", "tokens_per_byte")},
        }
        # A record claim needs 3 seeds; a sweep row is judged on the seeds it was asked to run.
        min_seeds = 3 if kind == "validation" else min(3, len(recs))
        verdict = compliance.check_variant(all_results, caps=caps, min_seeds=min_seeds) if all_results else None
        entry["compliance"] = verdict.to_dict() if verdict else {"compliant": False, "reasons": ["no seed produced a result"]}
        entry["compliant"] = bool(verdict and verdict.compliant and len(ok_results) == len(recs))
        if verdict and verdict.compliant and len(ok_results) < len(recs):
            entry["compliance"]["reasons"] = [f"{len(recs) - len(ok_results)} requested seed(s) did not finish"]
        out[name] = entry
    return {"variants": out, "significance": significance(exp, out, records, uri, experiment_id)}


def _baseline_nats(exp: Experiment, tpb: float | None, uri: str, experiment_id: str) -> tuple[Any, str, str | None]:
    """(baseline in nats: number | {seed: value} | None, description, the baseline's own config hash)."""
    from pgolf import stats

    b = exp.baseline
    if b.config_hash:
        exp_id = experiment_id
        if b.experiment:
            c = tracking.client(uri)
            e = c.get_experiment_by_name(b.experiment)
            if e is None:
                return None, f"[baseline] experiment {b.experiment!r} not found in {uri}", b.config_hash
            exp_id = e.experiment_id
        runs = tracking.runs_of_hash(uri, exp_id, b.config_hash)
        by_seed = {}
        for r in sorted(runs, key=lambda r: r.info.start_time or 0):
            v = r.data.metrics.get(FINAL_LOSS)
            if v is not None:
                by_seed[int(r.data.tags.get("seed", len(by_seed)))] = float(v)
        if not by_seed:
            return None, (f"[baseline] config_hash {b.config_hash}: no FINISHED runs in MLflow experiment "
                          f"{b.experiment or exp.meta.name!r}; run `pgolf validate` on the baseline first"), b.config_hash
        return by_seed, f"MLflow runs of config {b.config_hash} ({len(by_seed)} seeds)", b.config_hash
    if b.per_seed or b.record:
        unit = b.unit.lower()
        if unit not in ("nats", "bpb"):
            return None, f"{exp.path}: [baseline] unit must be 'nats' or 'bpb', got {b.unit!r}", None
        factor = 1.0
        if unit == "bpb":
            factor = b.tokens_per_byte or tpb or 0.0
            if not factor:
                return None, ("[baseline] is in bpb but no tokens_per_byte is known to convert it to nats: set "
                              "[baseline] tokens_per_byte or let at least one seed finish"), None

        def conv(v: float) -> float:
            return float(v) if unit == "nats" else float(stats.bpb_to_nats(float(v), factor))
        label = b.name or ("published per-seed scores" if b.per_seed else "published record")
        if b.per_seed:
            vals = {int(k): conv(v) for k, v in b.per_seed.items()}
            return vals, f"{label} ({len(vals)} seeds, {unit})", None
        return conv(b.record), f"{label} {b.record:g} {unit}", None
    return None, "", None


def significance(exp: Experiment, variants: dict[str, Any], records: list[SeedRecord], uri: str,
                 experiment_id: str) -> dict[str, Any]:
    from pgolf import stats

    b = exp.baseline
    tpbs = [v["tokens_per_byte"] for v in variants.values() if v.get("tokens_per_byte")]
    tpb = sum(tpbs) / len(tpbs) if tpbs else None
    try:
        baseline, desc, base_hash = _baseline_nats(exp, tpb, uri, experiment_id)
    except Exception as exc:  # noqa: BLE001 - a broken baseline lookup must not hide the table
        baseline, desc, base_hash = None, f"baseline lookup failed: {exc}", None
    out: dict[str, Any] = {"baseline": desc, "margin_nats": b.margin_nats, "alpha": b.alpha,
                           "tokens_per_byte": tpb, "tests": {}}
    if baseline is None:
        out["skipped"] = desc or f"no [baseline] in {exp.path}: significance test skipped"
        return out
    for name, v in variants.items():
        if base_hash and v["config_hash"] == base_hash:
            continue
        new = {int(s): d[FINAL_LOSS] for s, d in v["seeds"].items() if d[FINAL_LOSS] is not None}
        if not new:
            out["tests"][name] = {"error": "no finished seeds"}
            continue
        try:
            res = stats.compare(new, baseline, margin_nats=b.margin_nats, alpha=b.alpha,
                                tokens_per_byte=v.get("tokens_per_byte") or tpb)
            out["tests"][name] = res.to_dict()
        except (ValueError, TypeError) as exc:
            out["tests"][name] = {"error": str(exc)}
    pvals = {n: t["p"] for n, t in out["tests"].items() if isinstance(t.get("p"), (int, float))}
    if len(pvals) > 1:
        for n, h in stats.holm(pvals, alpha=b.alpha).items():
            out["tests"][n]["holm_p"] = h.adjusted_p
            out["tests"][n]["holm_significant"] = h.reject
    return out


def format_table(summary: dict[str, Any], order: list[str] | None = None) -> str:
    variants = summary["variants"]
    names = order or list(variants)
    head = ["variant", "hash", "ok", "final/val_bpb mean ± std", "95% CI", "final/val_loss mean ± std",
            "bytes max", "headroom min", "train s max", "eval s max", "compliant"]
    rows = []
    for n in names:
        v = variants[n]
        bpb, loss = v[FINAL_BPB], v[FINAL_LOSS]
        rows.append([
            n, v["config_hash"], f"{v['n_ok']}/{v['n_requested']}",
            f"{num(bpb['mean'])} ± {num(bpb['std'])}" if bpb else "-",
            f"[{num(bpb['ci_low'])}, {num(bpb['ci_high'])}]" if bpb else "-",
            f"{num(loss['mean'])} ± {num(loss['std'])}" if loss else "-",
            integer(v["artifact_bytes_max"]), integer(v["headroom_bytes_min"]),
            num(v["train_seconds_max"], ".1f"), num(v["eval_seconds_max"], ".1f"),
            "yes" if v["compliant"] else "no",
        ] + _cost_cells(v, variants))
    head += _cost_head(variants)
    return text_table(head, rows)


def _cost_head(variants: dict[str, Any]) -> list[str]:
    vs = variants.values()
    return ((["GPU-h"] if any(v.get("cost_gpu_seconds") for v in vs) else [])
            + (["$"] if any(v.get("cost_usd") is not None for v in vs) else []))


def _cost_cells(v: dict[str, Any], variants: dict[str, Any]) -> list[str]:
    """What each variant cost (every trial of this invocation, failed ones included); columns appear
    only when something was spent on GPUs or a price is set."""
    head = _cost_head(variants)
    cells = []
    if "GPU-h" in head:
        cells.append(f"{(v.get('cost_gpu_seconds') or 0.0) / 3600.0:.3f}")
    if "$" in head:
        cells.append("-" if v.get("cost_usd") is None else f"{v['cost_usd']:,.2f}")
    return cells


def format_details(summary: dict[str, Any]) -> str:
    lines = []
    for n, v in summary["variants"].items():
        for s, d in v["seeds"].items():
            if d["status"] != "FINISHED" or d.get("resumed"):
                lines.append(f"  {n}-s{s}: {d['status']}: {d['reason']}")
        if not v["compliant"]:
            reasons = v["compliance"].get("reasons") or []
            if reasons:
                lines.append(f"  {n}: not compliant: " + "; ".join(reasons))
    sig = summary["significance"]
    if sig.get("skipped"):
        lines.append(f"significance: {sig['skipped']}")
    else:
        lines.append(f"significance vs {sig['baseline']} (margin {sig['margin_nats']} nats, alpha {sig['alpha']}):")
        for n, t in sig["tests"].items():
            if "error" in t:
                lines.append(f"  {n}: {t['error']}")
                continue
            holm = f", Holm p={t['holm_p']:.3g}" if "holm_p" in t else ""
            verdict = "significant" if t.get("holm_significant", t["significant"]) else "not significant"
            dbpb = f" ({t['delta_bpb']:+.5f} bpb)" if t.get("delta_bpb") is not None else ""
            need = (f"; needs {t['required_improvement_nats']:.5f} nats below the threshold at this n"
                    if t.get("required_improvement_nats") is not None else "")
            lines.append(f"  {n}: {t['test']} n={t['n']} df={num(t['df'], '.1f')} t={num(t['t'], '.3f')} "
                         f"p={num(t['p'], '.3g')}{holm}; delta {t['delta_nats']:+.5f} nats{dbpb}{need} -> {verdict}")
    return "\n".join(lines)


def parent_metrics(summary: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    single = len(summary["variants"]) == 1
    for n, v in summary["variants"].items():
        prefixes = [tracking.metric_key(n) + "/"] + ([""] if single else [])
        vals = {"n_ok": v["n_ok"], "n_requested": v["n_requested"], "compliant": float(v["compliant"]),
                "artifact_bytes_max": v["artifact_bytes_max"], "headroom_bytes_min": v["headroom_bytes_min"],
                "train_s_max": v["train_seconds_max"], "eval_s_max": v["eval_seconds_max"]}
        for metric in (FINAL_BPB, FINAL_LOSS):
            s = v[metric]
            if s:
                for stat in ("mean", "std", "sem", "ci_low", "ci_high", "min", "max"):
                    vals[f"{metric}_{stat}"] = s[stat]
        t = summary["significance"]["tests"].get(n) or {}
        for k in ("p", "t", "df", "delta_nats", "delta_bpb", "holm_p", "required_improvement_nats"):
            if k in t:
                vals[f"test_{k}"] = t[k]
        if "significant" in t:
            vals["test_significant"] = float(t.get("holm_significant", t["significant"]))
        for k, x in vals.items():
            if finite(x) is not None:
                for p in prefixes:
                    out[p + k] = float(x)
    return out
