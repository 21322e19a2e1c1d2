"""Which MLflow runs make a records folder: a config hash (or prefix), a validate/tune parent run or a
trial run, resolved to the counted finished run of each seed, the seeds that did not finish and the
attempts a newer run replaced."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class SubmissionRefused(Exception):
    """The group cannot become this kind of records folder; `reasons` says why, one line each."""

    def __init__(self, summary: str, reasons: Sequence[str]):
        super().__init__(summary + "".join(f"\n  - {r}" for r in reasons))
        self.summary = summary
        self.reasons = list(reasons)


@dataclass
class SeedRun:
    seed: int | None
    run_id: str
    run_name: str
    status: str
    reason: str
    result: dict | None = None


@dataclass
class Group:
    tracking_uri: str
    experiment: str
    experiment_id: str
    config_hash: str
    variant: str
    source: str  # how the group was named on the command line
    seeds: list[SeedRun]  # the counted FINISHED run of each seed, by seed
    not_finished: list[SeedRun]  # seeds whose newest attempt did not finish
    superseded: list[SeedRun]  # older attempts replaced by a newer finished run of the same seed
    cancelled: list[SeedRun] = field(default_factory=list)  # seeds --stop-futile cancelled, at any attempt
    parent_run_ids: list[str] = field(default_factory=list)


def store_client(uri: str):
    from pgolf.dashboards import query

    return query.client(uri)


def resolve_group(tracking_uri: str, ref: str, *, experiment: str | None = None) -> Group:
    """`ref`: a config hash (or unique prefix, 6+ characters), a parent run id (validate/tune
    invocation; must cover one config hash) or a trial run id (its config hash in its experiment)."""
    from pgolf.dashboards import query
    from pgolf.tracking import KIND

    c = store_client(tracking_uri)
    ref = ref.strip()
    exp_filter: list[str]
    if experiment:
        e = c.get_experiment_by_name(experiment)
        if e is None:
            raise LookupError(f"no MLflow experiment named {experiment!r} in {tracking_uri}")
        exp_filter = [e.experiment_id]
    else:
        exp_filter = [e.experiment_id for e in c.search_experiments()]
    if not exp_filter:
        raise LookupError(f"{tracking_uri} has no experiments")

    if re.fullmatch(r"[0-9a-f]{32}", ref):
        from mlflow.exceptions import MlflowException

        try:
            run = c.get_run(ref)
        except MlflowException:
            raise LookupError(f"no MLflow run {ref} in {tracking_uri}; list runs with `pgolf report` or "
                              f"pass a config hash") from None
        exp_id = run.info.experiment_id
        tags = run.data.tags
        if tags.get(KIND) in ("validation", "sweep") or "config_hash" not in tags:
            trials = query.load_trials(tracking_uri, [exp_id], f"tags.`mlflow.parentRunId` = '{ref}'")
            if trials.empty:
                raise LookupError(f"run {ref} is neither a trial nor the parent of any trial run")
            hashes = sorted(set(trials["config_hash"]))
            if len(hashes) > 1:
                lines = [f"{h} ({', '.join(sorted(set(trials.loc[trials['config_hash'] == h, 'variant'].astype(str))))}; "
                         f"seeds {sorted(int(s) for s in trials.loc[trials['config_hash'] == h, 'seed'].dropna())})"
                         for h in hashes]
                raise SubmissionRefused(f"parent run {ref} mixes {len(hashes)} config hashes; a records folder "
                                        f"is one config: pass one of these hashes instead", lines)
            source = f"parent run {ref}"
        else:
            h = tags["config_hash"]
            trials = query.load_trials(tracking_uri, [exp_id], f"tags.config_hash = '{h}'")
            source = f"trial run {ref} (config {h})"
    else:
        if not re.fullmatch(r"[0-9A-Za-z_\-]{6,64}", ref):
            raise ValueError(f"{ref!r} is neither a 32-character MLflow run id nor a config hash (6+ characters)")
        trials = query.load_trials(tracking_uri, exp_filter, f"tags.config_hash LIKE '{ref}%'")
        if trials.empty:
            raise LookupError(f"no trial run with config hash {ref!r} in {tracking_uri}"
                              + (f" (experiment {experiment!r})" if experiment else ""))
        hashes = sorted(set(trials["config_hash"]))
        if len(hashes) > 1:
            raise SubmissionRefused(f"config hash prefix {ref!r} is ambiguous", [f"matches {h}" for h in hashes])
        exps = sorted(set(trials["experiment_id"]))
        if len(exps) > 1:
            names = [c.get_experiment(x).name for x in exps]
            raise SubmissionRefused(f"config hash {hashes[0]} has runs in several experiments; pick one with "
                                    f"--experiment", [repr(n) for n in names])
        source = f"config hash {hashes[0]}"
    exp_id = str(trials["experiment_id"].iloc[0])
    return _group(tracking_uri, c, exp_id, trials, source)


def _group(uri: str, c, exp_id: str, trials, source: str) -> Group:
    import pandas as pd

    from pgolf.dashboards import query

    def seed_run(r: Mapping) -> SeedRun:
        seed = None if pd.isna(r["seed"]) else int(r["seed"])
        return SeedRun(seed, r["run_id"], str(r["run_name"]), str(r["status"]), str(r["status_reason"] or ""))

    rows = trials.to_dict("records")
    counted = [r for r in rows if r["counted"] == "yes"]
    seeds = sorted((seed_run(r) for r in counted if r["status"] == "FINISHED"), key=lambda s: (s.seed is None, s.seed or 0))
    for s in seeds:
        s.result = query.result_of(c, s.run_id)
    return Group(
        tracking_uri=uri, experiment=c.get_experiment(exp_id).name, experiment_id=exp_id,
        config_hash=str(trials["config_hash"].iloc[0]), variant=" / ".join(dict.fromkeys(trials["variant"].astype(str))),
        source=source, seeds=seeds,
        not_finished=[seed_run(r) for r in counted if r["status"] != "FINISHED"],
        superseded=[seed_run(r) for r in rows if r["counted"] != "yes"],
        cancelled=[seed_run(r) for r in rows if r.get("outcome") == "CANCELLED"],
        parent_run_ids=list(dict.fromkeys(p for p in trials["parent_run_id"] if isinstance(p, str))),
    )
