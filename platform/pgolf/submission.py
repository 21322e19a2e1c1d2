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
import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgolf import compliance, stats
from pgolf.selfcheck import DEFAULT_SELF_CHECK_SETS, SelfCheck, self_check
from pgolf.submission_runs import Group, SubmissionRefused, resolve_group, store_client
from pgolf.submission_readme import write_readme
from pgolf.summary import seed_numbers
from pgolf.trainers.config import finite
from pgolf.trainers.contract import ARTIFACT_BYTES, FINAL_BPB, FINAL_LOSS

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

_PER_RUN_KEYS = re.compile(r"^(run\.(seed|run_dir|threads)|data\.(data_path|tokenizer_path))$")


# --------------------------------------------------------------------------------------------------
# the packed code


def bundle_contents(path: str) -> dict | None:
    """{"files": {...}, "config": {...}, "code_version": ...} packed inside a pgolf train_gpt.py, or None
    when the file is not in that format. Read with `ast`, never executed."""
    from pgolf.trainers.codebundle import payload_of
    try:
        with open(path, "rb") as fh:
            out = payload_of(fh.read())
        return out if isinstance(out, dict) else None
    except Exception:  # noqa: BLE001 - any unreadable file is "not in that format"
        return None


def _same_run_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from pgolf.tracking import flatten

    return {k: v for k, v in flatten(cfg).items() if not _PER_RUN_KEYS.match(k)}


# --------------------------------------------------------------------------------------------------
# schema


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def validate_json(doc: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Errors of `doc` against the submission JSON Schema (draft 2020-12), one line each with the path
    of the value; empty list: valid. NaN and infinities are refused too: JSON has no such numbers."""
    import jsonschema

    schema = load_schema() if schema is None else schema
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path))]
    return errors + [f"{at}: {v!r} is not a finite number" for at, v in _non_finite(doc, "$")]


def _non_finite(v: Any, at: str):
    if isinstance(v, float) and not math.isfinite(v):
        yield at, v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _non_finite(x, f"{at}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _non_finite(x, f"{at}[{i}]")


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


def _int(x: Any) -> int | None:
    f = finite(x)
    return int(f) if f is not None else None


def _round(x: Any, nd: int = 8) -> Any:
    f = finite(x)
    return None if f is None else round(f, nd)


def _significance(group: Group, baseline: str | None, margin: float, alpha: float,
                  tpb: float | None) -> tuple[dict | None, list[str]]:
    """(test dict, warnings): against `baseline` when given, else the test the newest validate run
    logged for this hash against the experiment's [baseline]."""
    from pgolf.dashboards import query

    loss = {s.seed: finite((s.result or {}).get(FINAL_LOSS)) for s in group.seeds}
    loss = {k: v for k, v in loss.items() if k is not None and v is not None}
    if baseline:
        trials = query.load_trials(group.tracking_uri, [group.experiment_id])
        b = query.baseline_from_spec(baseline, trials)
        if b.config_hash == group.config_hash:
            raise ValueError(f"--baseline {baseline!r} is the submitted config itself")
        res = stats.compare(loss, b.in_nats(tpb), margin_nats=margin, alpha=alpha, tokens_per_byte=tpb).to_dict()
        res["baseline"] = b.label
        return res, []
    c = store_client(group.tracking_uri)
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


def _requirements(torch_version: str | None) -> str:
    pin = ""
    if torch_version:
        pin = "==" + torch_version.split("+")[0]
    return ("# Packages train_gpt.py imports (the pgolf trainer is packed inside it).\n"
            f"torch{pin}\nnumpy\nsentencepiece\nzstandard\nbrotli\n"
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
    c = store_client(tracking_uri)
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
        # a futility cancellation is evidence that this config cannot beat its baseline
        reasons += [f"seed {s.seed}: cancelled as futile by validate --stop-futile (run {s.run_id}): {s.reason}"
                    for s in group.cancelled]
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
        nums = seed_numbers(results)
        sb, sl, tpb = nums[FINAL_BPB], nums[FINAL_LOSS], nums["tokens_per_byte"]
        test, warn = _significance(group, baseline, margin_nats, alpha, tpb)
        warnings += warn
        env = results[0].get("env") or {}
        code_seed = seeds[0]
        code_src = codes[code_seed]
        seed_results = {}
        for s, r, v in zip(group.seeds, results, verdict.seeds):
            seed_results[str(s.seed)] = {
                "val_bpb": _round(r.get(FINAL_BPB)), "val_loss": _round(r.get(FINAL_LOSS)),
                "steps": _int(r.get("steps")), "step_avg_ms": _round(r.get("train/step_ms"), 3),
                "artifact_bytes": _int(r.get(ARTIFACT_BYTES)), "model_bytes": _int(r.get("artifact/model_bytes")),
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
            "bytes_total": max(int(r[ARTIFACT_BYTES]) for r in results),
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
            "artifact_bytes_max": max(int(r[ARTIFACT_BYTES]) for r in results),
            "step_avg_ms_mean": _round(nums["step_ms_mean"], 3),
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
        write_readme(readme, doc, group, verdict, _same_run_config(cfg), None, warnings, TRACK_FOLDERS[doc['track']])
        files += [os.path.join(out_dir, f) for f in ("train_gpt.py", "requirements.txt", "submission.json", "README.md")]

        # ---- self-check
        check = None
        if run_self_check:
            vocab = ((cfg.get("model") or {}).get("vocab_size"))
            from pgolf.datasets import default_data_dir, demo_dir_name, ensure_demo

            # the demo of the run's tokenization: a CaseOps script needs its sidecar (sp1024_caseops at 1024)
            variant = (cfg.get("data") or {}).get("variant") or "sp1024"
            if not str(variant).endswith("_caseops") or (vocab or 1024) != 1024:
                variant = "sp1024"
            name = demo_dir_name(variant=variant)
            demo = ensure_demo(os.path.join(data_dir, name) if data_dir else default_data_dir() / name, progress=None,
                               variant=variant)
            if vocab not in (None, demo.vocab_size):
                check = SelfCheck(False, f"skipped: the config has vocab_size {vocab} but the demo tokenizer has "
                                         f"{demo.vocab_size}; run train_gpt.py on matching data by hand", [], 0.0,
                                  skipped=True)
            else:
                say(f"self-check: running train_gpt.py from a clean copy of {out_dir} (2 steps, CPU) ...")
                check = self_check(out_dir, data_path=str(demo.data_path), tokenizer_path=str(demo.tokenizer_path),
                                   sets=self_check_sets, seed=code_seed)
            write_readme(readme, doc, group, verdict, _same_run_config(cfg), check, warnings, TRACK_FOLDERS[doc['track']])
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
