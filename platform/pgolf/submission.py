"""Records folder for a pull request to openai/parameter-golf, built from runs logged in MLflow.

A folder holds one config hash: its README.md, submission.json (techniques.md section 1.6 keys, checked
against schemas/submission.schema.json), each seed's train log exactly as the trainer wrote it, the
self-extracting train_gpt.py that was counted in the artifact bytes, and requirements.txt.

What is refused, and why:
- more than one config hash, or seeds whose packed trainer code differs: one folder is one train_gpt.py,
  so its numbers must all come from that code and config (refused even with --non-record);
- fewer seeds than asked, a seed without a finished run, or any failed compliance check: a record
  must show all of that; `--non-record` writes the folder anyway, with the reasons in README and JSON.

Record rules are fixed (16,000,000 bytes, 600 s train, 600 s eval) whatever budget the experiment used.
"""
from __future__ import annotations

import ast
import base64
import datetime as _dt
import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgolf import compliance, stats

__all__ = [
    "DEFAULT_SELF_CHECK_SETS",
    "Group",
    "SelfCheck",
    "SubmissionRefused",
    "SubmissionResult",
    "build_submission",
    "bundle_contents",
    "load_schema",
    "resolve_group",
    "self_check",
    "validate_json",
]

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas", "submission.schema.json")
RECORD_TRACK, NON_RECORD_TRACK = "10min_16mb", "non_record_16mb"
TRACK_FOLDERS = {RECORD_TRACK: "records/track_10min_16mb", NON_RECORD_TRACK: "records/track_non_record_16mb"}

# A 2-step CPU run of the shipped train_gpt.py: enough to prove it unpacks, builds the model, trains,
# quantizes, compresses and scores from a folder holding nothing else, in seconds.
DEFAULT_SELF_CHECK_SETS = (
    "schedule.iterations=2", "schedule.warmup_steps=0", "schedule.warmdown_iters=1",
    "schedule.max_wallclock_seconds=0", "data.train_seq_len=64", "data.train_batch_tokens=512",
    "data.grad_accum_steps=1", "data.val_tokens_limit=4096", "eval.val_loss_every=0", "eval.val_batch_size=2048",
    "eval.train_log_every=1", "eval.sliding_stride=0", "run.device=cpu", "run.compile=false", "run.threads=1",
)

# Config keys that differ between seeds or machines but not between what the seeds ran.
_PER_RUN_KEYS = re.compile(r"^(run\.(seed|run_dir|threads)|data\.(data_path|tokenizer_path))$")


class SubmissionRefused(Exception):
    """The group cannot become this kind of records folder; `reasons` says why, one line each."""

    def __init__(self, summary: str, reasons: Sequence[str]):
        super().__init__(summary + "".join(f"\n  - {r}" for r in reasons))
        self.summary = summary
        self.reasons = list(reasons)


# --------------------------------------------------------------------------------------------------
# finding the runs


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
    parent_run_ids: list[str] = field(default_factory=list)


def _client(uri: str):
    from pgolf.dashboards import query

    return query.client(uri)


def resolve_group(tracking_uri: str, ref: str, *, experiment: str | None = None) -> Group:
    """`ref`: a config hash (or unique prefix, 6+ characters), a parent run id (validate/tune
    invocation; must cover one config hash) or a trial run id (its config hash in its experiment)."""
    from pgolf.dashboards import query
    from pgolf.tracking import KIND

    c = _client(tracking_uri)
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
        parent_run_ids=list(dict.fromkeys(p for p in trials["parent_run_id"] if isinstance(p, str))),
    )


# --------------------------------------------------------------------------------------------------
# the packed code


def bundle_contents(path: str) -> dict | None:
    """{"files": {...}, "config": {...}} packed inside a pgolf train_gpt.py, or None when the file is
    not in that format. Read with `ast`, never executed."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id == "B" and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                out = json.loads(lzma.decompress(base64.b85decode(node.value.value)))
                return out if isinstance(out, dict) else None
    except (OSError, SyntaxError, ValueError, lzma.LZMAError):
        return None
    return None


def _same_run_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from pgolf.tracking import flatten

    return {k: v for k, v in flatten(cfg).items() if not _PER_RUN_KEYS.match(k)}


# --------------------------------------------------------------------------------------------------
# schema


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return json.load(fh)


_TYPES = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
}


def validate_json(doc: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Errors of `doc` against the JSON Schema subset the submission schema uses (type, enum, const,
    required, properties, patternProperties, additionalProperties, items, min/max(Items|Properties|Length),
    minimum, maximum, exclusiveMinimum, pattern, $ref to #/$defs). Empty list: valid.

    A small validator of our own, because `jsonschema` is only here as a dependency of Ray's."""
    schema = load_schema() if schema is None else schema
    errors: list[str] = []
    _check(doc, schema, schema, "$", errors)
    return errors


def _check(v: Any, s: Mapping[str, Any], root: Mapping[str, Any], at: str, errors: list[str]) -> None:
    if "$ref" in s:
        ref = s["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        _check(v, target, root, at, errors)
    t = s.get("type")
    if t is not None:
        types = [t] if isinstance(t, str) else list(t)
        if not any(_TYPES[x](v) for x in types):
            errors.append(f"{at}: expected {' or '.join(types)}, got {type(v).__name__} {v!r:.60}")
            return
    if "enum" in s and v not in s["enum"]:
        errors.append(f"{at}: {v!r} is not one of {s['enum']}")
    if "const" in s and v != s["const"]:
        errors.append(f"{at}: must be {s['const']!r}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errors.append(f"{at}: {v} < minimum {s['minimum']}")
        if "maximum" in s and v > s["maximum"]:
            errors.append(f"{at}: {v} > maximum {s['maximum']}")
        if "exclusiveMinimum" in s and v <= s["exclusiveMinimum"]:
            errors.append(f"{at}: {v} <= exclusiveMinimum {s['exclusiveMinimum']}")
    if isinstance(v, str):
        if "minLength" in s and len(v) < s["minLength"]:
            errors.append(f"{at}: shorter than {s['minLength']} characters")
        if "pattern" in s and not re.search(s["pattern"], v):
            errors.append(f"{at}: {v!r} does not match {s['pattern']!r}")
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            errors.append(f"{at}: fewer than {s['minItems']} items")
        if "items" in s:
            for i, x in enumerate(v):
                _check(x, s["items"], root, f"{at}[{i}]", errors)
    if isinstance(v, dict):
        for k in s.get("required", []):
            if k not in v:
                errors.append(f"{at}: missing required key {k!r}")
        if "minProperties" in s and len(v) < s["minProperties"]:
            errors.append(f"{at}: fewer than {s['minProperties']} keys")
        props, pats = s.get("properties", {}), s.get("patternProperties", {})
        for k, x in v.items():
            matched = False
            if k in props:
                _check(x, props[k], root, f"{at}.{k}", errors)
                matched = True
            for pat, sub in pats.items():
                if re.search(pat, k):
                    _check(x, sub, root, f"{at}.{k}", errors)
                    matched = True
            extra = s.get("additionalProperties", True)
            if not matched:
                if extra is False:
                    errors.append(f"{at}: unexpected key {k!r}")
                elif isinstance(extra, Mapping):
                    _check(x, extra, root, f"{at}.{k}", errors)


# --------------------------------------------------------------------------------------------------
# self-check


@dataclass
class SelfCheck:
    ok: bool
    detail: str
    command: list[str]
    seconds: float
    val_bpb: float | None = None
    output_tail: str = ""
    skipped: bool = False  # nothing was run (e.g. no data with a matching tokenizer); ok is False


def self_check(folder: str, *, data_path: str, tokenizer_path: str, sets: Sequence[str] = DEFAULT_SELF_CHECK_SETS,
               seed: int = 1, timeout: float = 600.0, python: str | None = None) -> SelfCheck:
    """Copy the folder into an empty temporary directory and run its train_gpt.py there on a tiny CPU
    config, from that directory, with pgolf itself not importable: proves the shipped file is all the
    code the run needs."""
    import time

    tmp = tempfile.mkdtemp(prefix="pgolf_selfcheck_")
    try:
        dest = os.path.join(tmp, os.path.basename(os.path.normpath(folder)) or "submission")
        shutil.copytree(folder, dest)
        run_dir = os.path.join(tmp, "run")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        if python is None:
            # `-S` skips site's .pth processing, so the editable install of pgolf is invisible and only
            # third-party packages (torch, numpy, ...) stay importable through PYTHONPATH: the run can
            # only succeed on the trainer packed inside train_gpt.py.
            site_dirs = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
            cmd = [sys.executable, "-S", "train_gpt.py"]
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(site_dirs))
        else:
            cmd = [python, "train_gpt.py"]
        cmd += [x for s in sets for x in ("--set", s)]
        env.update(DATA_PATH=str(data_path), TOKENIZER_PATH=str(tokenizer_path), RUN_DIR=run_dir, SEED=str(seed),
                   OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return SelfCheck(False, f"train_gpt.py did not finish within {timeout:g} s", cmd, time.monotonic() - t0)
        secs = time.monotonic() - t0
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        if proc.returncode != 0:
            return SelfCheck(False, f"train_gpt.py exited {proc.returncode}", cmd, secs, output_tail=tail)
        try:
            with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as fh:
                res = json.load(fh)
        except (OSError, ValueError) as exc:
            return SelfCheck(False, f"no result.json in RUN_DIR: {exc}", cmd, secs, output_tail=tail)
        bpb = res.get("final/val_bpb")
        if not (isinstance(bpb, (int, float)) and math.isfinite(bpb) and bpb > 0):
            return SelfCheck(False, f"final/val_bpb is {bpb!r}", cmd, secs, output_tail=tail)
        return SelfCheck(True, f"2-step CPU run from a clean copy finished: final/val_bpb {bpb:.4f}, "
                               f"artifact {res.get('artifact/bytes', 0):,} bytes", cmd, secs, float(bpb), tail)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# building the folder


@dataclass
class SubmissionResult:
    out_dir: str
    submission: dict
    track: str
    warnings: list[str]
    refused_reasons: list[str]  # what would have refused a record (empty for a clean record)
    self_check: SelfCheck | None
    files: list[str]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _int(x: Any) -> int | None:
    f = _num(x)
    return int(f) if f is not None else None


def _round(x: Any, nd: int = 8) -> Any:
    f = _num(x)
    return None if f is None else round(f, nd)


def _significance(group: Group, baseline: str | None, margin: float, alpha: float,
                  tpb: float | None) -> tuple[dict | None, list[str]]:
    """(test dict, warnings): against `baseline` when given, else the test the newest validate run
    logged for this hash against the experiment's [baseline]."""
    from pgolf.dashboards import query

    loss = {s.seed: _num((s.result or {}).get("final/val_loss")) for s in group.seeds}
    loss = {k: v for k, v in loss.items() if k is not None and v is not None}
    if baseline:
        trials = query.load_trials(group.tracking_uri, [group.experiment_id])
        b = query.baseline_from_spec(baseline, trials)
        if b.config_hash == group.config_hash:
            raise ValueError(f"--baseline {baseline!r} is the submitted config itself")
        res = stats.compare(loss, b.in_nats(tpb), margin_nats=margin, alpha=alpha, tokens_per_byte=tpb).to_dict()
        res["baseline"] = b.label
        return res, []
    c = _client(group.tracking_uri)
    for pid in reversed(group.parent_run_ids):
        summ = query._download_json(c, pid, query.SUMMARY_ARTIFACT) or {}
        sig = summ.get("significance") or {}
        for name, t in (sig.get("tests") or {}).items():
            v = (summ.get("variants") or {}).get(name) or {}
            if v.get("config_hash") == group.config_hash and "error" not in t:
                out = dict(t)
                out["baseline"] = sig.get("baseline")
                warn = []
                if out.get("n") != len(loss):
                    warn.append(f"significance is the test validate run {pid} logged over {out.get('n')} seeds; "
                                f"this folder has {len(loss)} (pass --baseline to recompute over these seeds)")
                return out, warn
    return None, ["no baseline: t_statistic and p_value are null (give --baseline, or validate with a "
                  "[baseline] in the experiment file); a record needs them"]


def _config_diff(cfg: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value, default) for every setting that differs from the trainer's defaults, which equal the
    official baseline: the variant's techniques, in config terms."""
    try:
        from pgolf.trainers.config import TrainConfig
        from pgolf.tracking import flatten

        defaults = flatten(TrainConfig().to_dict())
    except Exception:  # noqa: BLE001 - a README without the diff is still a README
        return []
    out = []
    for k, v in sorted(_same_run_config(cfg).items()):
        if k.startswith(("faults.", "run.")) or k in ("eval.train_log_every", "eval.val_loss_every"):
            continue
        if k in defaults and defaults[k] != v:
            out.append((k, v, defaults[k]))
    return out


def _requirements(torch_version: str | None) -> str:
    pin = ""
    if torch_version:
        pin = "==" + torch_version.split("+")[0]
    return ("# Packages train_gpt.py imports (the pgolf trainer is packed inside it).\n"
            f"torch{pin}\nnumpy\nsentencepiece\nzstandard\n"
            "# Optional on H100: FlashAttention (flash-attn); without it PyTorch SDPA is used.\n")


def build_submission(tracking_uri: str, ref: str, out_dir: str, *, experiment: str | None = None,
                     non_record: bool = False, min_seeds: int = 3, author: str | None = None,
                     github_id: str | None = None, name: str | None = None, blurb: str | None = None,
                     baseline: str | None = None, margin_nats: float = 0.005, alpha: float = 0.01,
                     run_self_check: bool = True, data_dir: str | None = None,
                     self_check_sets: Sequence[str] = DEFAULT_SELF_CHECK_SETS, force: bool = False,
                     today: str | None = None, progress=print) -> SubmissionResult:
    """Write the records folder for `ref` into `out_dir` (created; must be empty unless `force`).
    Raises SubmissionRefused before writing anything when the group cannot be submitted as asked."""
    say = progress or (lambda *_: None)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--out {out_dir} is a file, not a folder; pass a new folder for the records")
    group = resolve_group(tracking_uri, ref, experiment=experiment)
    if not group.seeds:
        raise SubmissionRefused(f"{group.source}: no finished run", [
            f"seed {s.seed}: {s.status} ({s.reason or 'no reason recorded'})" for s in group.not_finished])
    c = _client(tracking_uri)
    work = tempfile.mkdtemp(prefix="pgolf_submission_")
    try:
        # ---- per seed: result, log, packed code
        logs, codes, missing = {}, {}, []
        for s in group.seeds:
            for art, store in (("train.log", logs), ("train_gpt.py", codes)):
                try:
                    store[s.seed] = c.download_artifacts(s.run_id, art, os.path.join(work, str(s.seed)))
                except Exception:  # noqa: BLE001 - reported below as a reason
                    missing.append(f"seed {s.seed} (run {s.run_id}): artifact {art} is missing in MLflow")
            if s.result is None:
                missing.append(f"seed {s.seed} (run {s.run_id}): no result.json and no final metrics")
        if missing:
            raise SubmissionRefused(f"{group.source}: the runs lack files a records folder needs", missing)

        # ---- one config, one code
        mixed: list[str] = []
        bundles = {seed: bundle_contents(p) for seed, p in codes.items()}
        if all(b is not None for b in bundles.values()):
            ref_seed = group.seeds[0].seed
            ref_b = bundles[ref_seed]
            for seed, b in bundles.items():
                if b["files"] != ref_b["files"]:
                    diff = sorted(k for k in set(b["files"]) | set(ref_b["files"]) if b["files"].get(k) != ref_b["files"].get(k))
                    mixed.append(f"seed {seed} ran different trainer code than seed {ref_seed} (files {', '.join(diff[:6])})")
                elif _same_run_config(b["config"]) != _same_run_config(ref_b["config"]):
                    a, z = _same_run_config(b["config"]), _same_run_config(ref_b["config"])
                    keys = sorted(k for k in set(a) | set(z) if a.get(k) != z.get(k))
                    mixed.append(f"seed {seed} ran a different config than seed {ref_seed} ({', '.join(keys[:6])})")
        tr_hashes = {s.seed: (s.result or {}).get("config_hash") for s in group.seeds}
        if len({h for h in tr_hashes.values() if h}) > 1:
            mixed.append("the trainer reported different config hashes: "
                         + ", ".join(f"seed {k}: {v}" for k, v in tr_hashes.items()))
        if mixed:
            raise SubmissionRefused(f"{group.source} mixes configs; a records folder is one train_gpt.py", mixed)

        # ---- compliance against the record rules
        results = []
        for s in group.seeds:
            r = dict(s.result or {})
            r["config_hash"] = group.config_hash
            r.setdefault("seed", s.seed)
            results.append(r)
        verdict = compliance.check_variant(results, caps=compliance.Caps(), min_seeds=min_seeds)
        reasons = list(verdict.reasons)
        reasons += [f"seed {s.seed}: newest run {s.run_id} is {s.status} ({s.reason or 'no reason recorded'})"
                    for s in group.not_finished]
        if not non_record and reasons:
            raise SubmissionRefused(
                f"{group.source} ({group.variant}) is not a record: {len(reasons)} problem(s); fix them or pass "
                f"--non-record to write a non-record folder that lists them", reasons)
        track = NON_RECORD_TRACK if non_record else RECORD_TRACK
        warnings: list[str] = []
        if not verdict.record_grade:
            warnings.append(f"hardware {', '.join(verdict.hardware_classes)} is not 8xH100 SXM: these numbers are "
                            f"not a record as they stand")

        # ---- numbers
        seeds = [s.seed for s in group.seeds]
        bpb = [float(r["final/val_bpb"]) for r in results]
        loss = [float(r["final/val_loss"]) for r in results]
        tpbs = [t for r in results if (t := _num(r.get("data/tokens_per_byte")))]
        tpb = sum(tpbs) / len(tpbs) if tpbs else None
        sb, sl = stats.summarize(bpb), stats.summarize(loss)
        test, warn = _significance(group, baseline, margin_nats, alpha, tpb)
        warnings += warn
        env = results[0].get("env") or {}
        code_seed = seeds[0]
        code_src = codes[code_seed]
        seed_results = {}
        for s, r, v in zip(group.seeds, results, verdict.seeds):
            seed_results[str(s.seed)] = {
                "val_bpb": _round(r.get("final/val_bpb")), "val_loss": _round(r.get("final/val_loss")),
                "steps": _int(r.get("steps")), "step_avg_ms": _round(r.get("train/step_ms"), 3),
                "artifact_bytes": _int(r.get("artifact/bytes")), "model_bytes": _int(r.get("artifact/model_bytes")),
                "code_bytes": _int(r.get("artifact/code_bytes")),
                "train_time_s": _round(v.train_seconds, 3), "eval_time_s": _round(v.eval_seconds, 3),
                "prequant_val_bpb": _round(r.get("prequant/val_bpb")), "compliant": v.compliant,
                "mlflow_run_id": s.run_id, "log": f"train_seed{s.seed}.log",
            }
        checks = {ch.name: ch for sv in verdict.seeds for ch in sv.checks}

        def all_pass(name: str) -> bool:
            return all(ch.passed is True for sv in verdict.seeds for ch in sv.checks if ch.name == name) and name in checks

        ttt_modes = sorted({str((r.get("ttt") or {}).get("mode", "off")) for r in results})
        doc: dict[str, Any] = {
            "author": author or _git_config("user.name") or "unknown",
            "github_id": github_id or "",
            "name": name or group.variant,
            "blurb": blurb or (f"{group.variant}: {len(seeds)}-seed mean final val_bpb {sb.mean:.5f} "
                               f"(std {sb.std if sb.n > 1 else 0:.5f}), config {group.config_hash}, built with pgolf."),
            "date": today or _dt.date.today().isoformat(),
            "val_loss": round(sl.mean, 8), "val_bpb": round(sb.mean, 8),
            "bytes_total": max(int(r["artifact/bytes"]) for r in results),
            "bytes_code": os.path.getsize(code_src),
            "seeds": seeds,
            "seed_results": seed_results,
            "val_bpb_std": _round(sb.std), "val_loss_std": _round(sl.std),
            "hardware": ", ".join(verdict.hardware_classes),
            "pytorch_version": str(env.get("torch") or "unknown"),
            "track": track,
            "compliance": {
                "compliant": verdict.compliant and not group.not_finished,
                "artifact_under_16mb": all_pass("artifact_under_cap"),
                "train_under_600s": all_pass("train_under_cap"),
                "eval_under_600s": all_pass("eval_under_cap"),
                "score_first_ttt": all_pass("ttt_legal"),
                "no_val_in_train": all_pass("no_val_in_train"),
                "single_config_hash": verdict.check("single_config_hash").passed is True,
                "three_seeds": len(set(seeds)) >= 3,
                "enough_seeds": verdict.check("enough_seeds").passed is True,
                "record_hardware": verdict.record_grade,
                "ttt_modes": ttt_modes,
                "reasons": reasons,
            },
            "t_statistic": _round((test or {}).get("t")),
            "p_value": _round((test or {}).get("p"), 12),
            "baseline": (test or {}).get("baseline"),
            "significance": None if test is None else {
                k: test.get(k) for k in ("test", "n", "n_baseline", "df", "t", "p", "alpha", "margin_nats", "delta_nats", "delta_bpb",
                          "threshold_nats", "required_improvement_nats", "significant", "seeds_needed")},
            "val_bpb_ci95": [_round(sb.ci_low), _round(sb.ci_high)],
            "artifact_bytes_max": max(int(r["artifact/bytes"]) for r in results),
            "step_avg_ms_mean": _round(sum(_num(r.get("train/step_ms")) or 0 for r in results) / len(results), 3),
            "config_hash": group.config_hash,
            "code_version": results[0].get("code_version"),
            "pgolf": {"experiment": group.experiment, "variant": group.variant,
                      "reproduce": _reproduce_command(c, group, seeds),
                      "git_sha": (c.get_run(group.seeds[0].run_id).data.tags.get("git_sha")),
                      "mlflow_run_ids": {str(s.seed): s.run_id for s in group.seeds},
                      "train_gpt_from_seed": code_seed},
        }
        errors = validate_json(doc)
        if errors:
            raise AssertionError("submission.json does not match its schema (a pgolf bug):\n" + "\n".join(errors))

        # ---- files
        out_dir = os.path.abspath(out_dir)
        if os.path.exists(out_dir) and os.listdir(out_dir) and not force:
            raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder or pass --force")
        os.makedirs(out_dir, exist_ok=True)
        files = []
        for seed, p in logs.items():
            dst = os.path.join(out_dir, f"train_seed{seed}.log")
            shutil.copyfile(p, dst)  # byte for byte: reviewers compare these with the claims
            files.append(dst)
        shutil.copyfile(code_src, os.path.join(out_dir, "train_gpt.py"))
        with open(os.path.join(out_dir, "requirements.txt"), "w", encoding="utf-8") as fh:
            fh.write(_requirements(env.get("torch")))
        with open(os.path.join(out_dir, "submission.json"), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, allow_nan=False)
            fh.write("\n")
        cfg = (bundles.get(code_seed) or {}).get("config") or {}
        readme = os.path.join(out_dir, "README.md")
        _write_readme(readme, doc, group, verdict, cfg, None, warnings)
        files += [os.path.join(out_dir, f) for f in ("train_gpt.py", "requirements.txt", "submission.json", "README.md")]

        # ---- self-check
        check = None
        if run_self_check:
            vocab = ((cfg.get("model") or {}).get("vocab_size"))
            from pgolf.datasets import default_data_dir, ensure_demo

            demo = ensure_demo(os.path.join(data_dir, "demo") if data_dir else default_data_dir() / "demo", progress=None)
            if vocab not in (None, demo.vocab_size):
                check = SelfCheck(False, f"skipped: the config has vocab_size {vocab} but the demo tokenizer has "
                                         f"{demo.vocab_size}; run train_gpt.py on matching data by hand", [], 0.0,
                                  skipped=True)
            else:
                say(f"self-check: running train_gpt.py from a clean copy of {out_dir} (2 steps, CPU) ...")
                check = self_check(out_dir, data_path=str(demo.data_path), tokenizer_path=str(demo.tokenizer_path),
                                   sets=self_check_sets, seed=code_seed)
            _write_readme(readme, doc, group, verdict, cfg, check, warnings)
        return SubmissionResult(out_dir, doc, track, warnings, reasons, check, sorted(files))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reproduce_command(c, group: Group, seeds: Sequence[int]) -> str:
    """The pgolf command that re-runs these seeds: the invocation's experiment file and --set overrides,
    plus the sweep point's axis values when the runs came from `pgolf tune`."""
    exp_file, sets = "<experiment>.toml", []
    for pid in reversed(group.parent_run_ids):
        try:
            tags = c.get_run(pid).data.tags
        except Exception:  # noqa: BLE001 - a deleted parent only costs the hint
            continue
        if tags.get("experiment_file"):
            path = tags["experiment_file"]
            exp_file = path[path.rindex("experiments/"):] if "experiments/" in path else path
            try:
                sets = [str(x) for x in json.loads(tags.get("overrides") or "[]")]
            except ValueError:
                sets = []
            break
    try:
        point = json.loads(c.get_run(group.seeds[0].run_id).data.tags.get("overrides") or "{}")
    except (ValueError, AttributeError):
        point = {}
    sets += [f"config.{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in point.items()]
    return " ".join(["pgolf validate", exp_file, "--seeds", *map(str, seeds)] + [f"--set {x}" for x in sets])


def _git_config(key: str) -> str | None:
    try:
        out = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------------------
# README


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _write_readme(path: str, doc: dict, group: Group, verdict: compliance.VariantVerdict, cfg: Mapping[str, Any],
                  check: SelfCheck | None, warnings: Sequence[str]) -> None:
    comp = doc["compliance"]
    sig = doc.get("significance")
    lines = [
        f"# {doc['name']}", "",
        doc["blurb"], "",
        f"- **val_bpb {doc['val_bpb']:.5f}** (mean of {len(doc['seeds'])} seeds, std {_fmt(doc['val_bpb_std'], '.5f')}, "
        f"95% CI [{_fmt(doc['val_bpb_ci95'][0], '.5f')}, {_fmt(doc['val_bpb_ci95'][1], '.5f')}]); "
        f"val_loss {doc['val_loss']:.5f} nats (std {_fmt(doc['val_loss_std'], '.5f')})",
        f"- artifact: at most {doc['bytes_total']:,} bytes (code {doc['bytes_code']:,} + compressed model) of 16,000,000",
        f"- track: `{doc['track']}` (folder under `{TRACK_FOLDERS[doc['track']]}/`); hardware {doc['hardware']}; "
        f"PyTorch {doc['pytorch_version']}",
        f"- config hash `{group.config_hash}`, experiment `{group.experiment}`, variant `{group.variant}`", "",
    ]
    if warnings:
        lines += ["> **Note**"] + [f"> - {w}" for w in warnings] + [""]
    lines += ["## Per-seed results", "",
              "| seed | val_bpb | val_loss | steps | ms/step | artifact bytes | train s | eval s | compliant | log |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|:--:|---|"]
    for seed, r in doc["seed_results"].items():
        lines.append(f"| {seed} | {_fmt(r['val_bpb'], '.5f')} | {_fmt(r['val_loss'], '.5f')} | {_fmt(r['steps'], 'd')} | "
                     f"{_fmt(r['step_avg_ms'], '.1f')} | {_fmt(r['artifact_bytes'], ',')} | {_fmt(r['train_time_s'], '.1f')} | "
                     f"{_fmt(r['eval_time_s'], '.1f')} | {'yes' if r['compliant'] else 'no'} | `{r['log']}` |")
    for s in group.not_finished:
        lines.append(f"| {s.seed} | – | – | – | – | – | – | – | no | {s.status}: {s.reason or 'no reason'} |")
    if group.superseded:
        lines += ["", "Earlier attempts replaced by a newer run of the same seed: "
                  + "; ".join(f"seed {s.seed} run `{s.run_id[:12]}` {s.status}" for s in group.superseded) + "."]
    lines += ["", "## Statistics", ""]
    if sig:
        lines += [f"- test: {sig['test']}, n = {sig['n']}"
                  + (f" (baseline n = {sig['n_baseline']})" if sig.get("n_baseline") else "")
                  + f", df = {_fmt(sig.get('df'), '.2f')}, t = {_fmt(sig.get('t'), '.3f')}, **p = {_fmt(sig.get('p'), '.3g')}**",
                  f"- baseline: {doc['baseline']}; required improvement {sig.get('margin_nats')} nats at alpha {sig.get('alpha')}",
                  f"- delta vs baseline: {_fmt(sig.get('delta_nats'), '+.5f')} nats ({_fmt(sig.get('delta_bpb'), '+.5f')} BPB); "
                  f"{'significant' if sig.get('significant') else 'not significant'}"]
        if sig.get("required_improvement_nats") is not None:
            lines.append(f"- at this n and spread the mean has to be {sig['required_improvement_nats']:.5f} nats below "
                         f"the threshold (baseline − margin) for p < {sig.get('alpha')}")
    else:
        lines.append("No significance test: no baseline was given (`pgolf submission ... --baseline SPEC`).")
    lines += ["", "## Compliance", "",
              f"Overall: **{'compliant' if comp['compliant'] else 'NOT compliant'}** with the record rules "
              "(16,000,000 bytes, 600 s train, 600 s eval, legal TTT, no validation data in training, "
              f">= {verdict.min_seeds} seeds of one config).", ""]
    for ch in verdict.checks:
        lines.append(f"- {'✅' if ch.passed else '❌'} {ch.name}: {ch.detail}")
    for sv in verdict.seeds:
        for ch in sv.checks:
            if ch.passed is False:
                lines.append(f"- {'❌' if ch.blocking else 'ℹ️'} seed {sv.seed} {ch.name}: {ch.detail}")
    if comp["reasons"]:
        lines += ["", "Reasons this is not a record:"] + [f"- {r}" for r in comp["reasons"]]
    diff = _config_diff(cfg)
    lines += ["", "## What this variant changes", ""]
    if diff:
        lines += ["Settings that differ from the trainer defaults (which equal the official baseline):", "",
                  "| setting | value | default |", "|---|---|---|"]
        lines += [f"| `{k}` | `{json.dumps(v)}` | `{json.dumps(d)}` |" for k, v, d in diff]
    else:
        lines.append("The trainer defaults (the official baseline configuration).")
    seed_list = " ".join(str(s) for s in doc["seeds"])
    lines += ["", "## Reproduce", "",
              "`train_gpt.py` is self-extracting: it carries the packed pgolf trainer and the resolved config, and its "
              "size is the code part of the artifact. From this folder, with the FineWeb sp1024 data:", "",
              "```bash", "pip install -r requirements.txt",
              f"for SEED in {seed_list}; do",
              "  DATA_PATH=./data/datasets/fineweb10B_sp1024 TOKENIZER_PATH=./data/tokenizers/fineweb_1024_bpe.model \\",
              "  SEED=$SEED RUN_DIR=./run_seed$SEED torchrun --standalone --nproc_per_node=8 train_gpt.py",
              "done", "```", "",
              "Any config key can be overridden with `--set section.key=value`. With pgolf, the same seeds through "
              f"Ray Tune and MLflow: `{doc['pgolf']['reproduce']}`.", "",
              "## Files", "",
              "- `train_gpt.py`: the counted, self-extracting code (from the seed "
              f"{doc['pgolf']['train_gpt_from_seed']} run; the seeds' copies differ only in the embedded seed and paths)",
              "- " + ", ".join(f"`train_seed{s}.log`" for s in doc["seeds"]) + ": each seed's train log, unmodified",
              "- `submission.json`, `requirements.txt`", ""]
    if check is not None:
        mark = "⚠️" if check.skipped else ("✅" if check.ok else "❌")
        lines += ["## Self-check", "", f"{mark} {check.detail}" + ("" if check.skipped else f" ({check.seconds:.0f} s)"), ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
