"""README.md of a records folder: the numbers, per-seed table, statistics, compliance checks, the
settings the variant changes and how to reproduce it."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pgolf.formatting import integer, num


def config_diff(cfg: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value, default) for every setting that differs from the trainer's defaults, which equal the
    official baseline: the variant's techniques, in config terms."""
    try:
        from pgolf.trainers.config import TrainConfig
        from pgolf.tracking import flatten

        defaults = flatten(TrainConfig().to_dict())
    except Exception:  # noqa: BLE001 - a README without the diff is still a README
        return []
    out = []
    for k, v in sorted(flatten(cfg).items()):
        if k.startswith(("faults.", "run.")) or k in ("eval.train_log_every", "eval.val_loss_every"):
            continue
        if k in defaults and defaults[k] != v:
            out.append((k, v, defaults[k]))
    return out


def write_readme(path: str, doc: dict, group: Any, verdict: Any, cfg: Mapping[str, Any], check: Any,
                 warnings: Sequence[str], track_folder: str) -> None:
    """README.md of a records folder from its submission.json document, the group's runs (a
    submission.Group), the variant's compliance verdict, its per-run-free config and the self-check."""
    comp = doc["compliance"]
    sig = doc.get("significance")
    lines = [
        f"# {doc['name']}", "",
        doc["blurb"], "",
        f"- **val_bpb {doc['val_bpb']:.5f}** (mean of {len(doc['seeds'])} seeds, std {num(doc['val_bpb_std'], '.5f', '–')}, "
        f"95% CI [{num(doc['val_bpb_ci95'][0], '.5f', '–')}, {num(doc['val_bpb_ci95'][1], '.5f', '–')}]); "
        f"val_loss {doc['val_loss']:.5f} nats (std {num(doc['val_loss_std'], '.5f', '–')})",
        f"- artifact: at most {doc['bytes_total']:,} bytes (code {doc['bytes_code']:,} + compressed model) of 16,000,000",
        f"- track: `{doc['track']}` (folder under `{track_folder}/`); hardware {doc['hardware']}; "
        f"PyTorch {doc['pytorch_version']}",
        f"- config hash `{group.config_hash}`, experiment `{group.experiment}`, variant `{group.variant}`", "",
    ]
    if warnings:
        lines += ["> **Note**"] + [f"> - {w}" for w in warnings] + [""]
    lines += ["## Per-seed results", "",
              "| seed | val_bpb | val_loss | steps | ms/step | artifact bytes | train s | eval s | compliant | log |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|:--:|---|"]
    for seed, r in doc["seed_results"].items():
        lines.append(f"| {seed} | {num(r['val_bpb'], '.5f', '–')} | {num(r['val_loss'], '.5f', '–')} | {num(r['steps'], '.0f', '–')} | "
                     f"{num(r['step_avg_ms'], '.1f', '–')} | {integer(r['artifact_bytes'], '–')} | {num(r['train_time_s'], '.1f', '–')} | "
                     f"{num(r['eval_time_s'], '.1f', '–')} | {'yes' if r['compliant'] else 'no'} | `{r['log']}` |")
    for s in group.not_finished:
        lines.append(f"| {s.seed} | – | – | – | – | – | – | – | no | {s.status}: {s.reason or 'no reason'} |")
    if group.superseded:
        lines += ["", "Earlier attempts replaced by a newer run of the same seed: "
                  + "; ".join(f"seed {s.seed} run `{s.run_id[:12]}` {s.status}" for s in group.superseded) + "."]
    lines += ["", "## Statistics", ""]
    if sig:
        lines += [f"- test: {sig['test']}, n = {sig['n']}"
                  + (f" (baseline n = {sig['n_baseline']})" if sig.get("n_baseline") else "")
                  + f", df = {num(sig.get('df'), '.2f', '–')}, t = {num(sig.get('t'), '.3f', '–')}, **p = {num(sig.get('p'), '.3g', '–')}**",
                  f"- baseline: {doc['baseline']}; required improvement {sig.get('margin_nats')} nats at alpha {sig.get('alpha')}",
                  f"- delta vs baseline: {num(sig.get('delta_nats'), '+.5f', '–')} nats ({num(sig.get('delta_bpb'), '+.5f', '–')} BPB); "
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
    diff = config_diff(cfg)
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
