"""The platform's audit of a TTT run. The trainer, and the shipped train_gpt.py, only write the trace
(`ttt_trace.jsonl`); pgolf checks it after the trainer has exited, against the document starts of the
validation tokens it loads itself. So the counted code carries no verifier (about 1.7 KB packed), the
check runs on no clock, and a trace is judged by code the run cannot have changed."""
from __future__ import annotations

import json
import os
import time

from pgolf.trainers.contract import RESULT_FILE
from pgolf.trainers.ttt import document_spans
from pgolf.trainers.ttt_trace import verify_trace


def verdict_for(trace_path: str, val_tokens, bos_id: int) -> dict:
    """verify_trace's verdict on one trace, with the document starts taken from `val_tokens`."""
    return verify_trace(trace_path, doc_starts=[a for a, _ in document_spans(val_tokens, bos_id)])


def _val_tokens(cfg):
    from pgolf.trainers.loader import load_validation_tokens
    from pgolf.trainers.shards import list_shards

    return load_validation_tokens(list_shards(cfg.data.data_path, "val"), cfg.data.train_seq_len,
                                  limit=cfg.data.val_tokens_limit, vocab_size=cfg.model.vocab_size)


def audit_ttt(result: dict | None, run_dir: str, cfg) -> dict | None:
    """Add the trace verdict (`ttt.trace_verdict`) and its time (`time/ttt_verify_s`, report-only) to a
    finished run's result and rewrite its result.json. A result without a trace, or already audited, is
    returned as it is; a trace that cannot be checked is a verdict of not compliant, with the reason."""
    ttt = (result or {}).get("ttt")
    if not isinstance(ttt, dict) or not ttt.get("trace") or "trace_verdict" in ttt:
        return result
    t0 = time.perf_counter()
    try:
        verdict = verdict_for(os.path.join(run_dir, ttt["trace"]), _val_tokens(cfg), int(ttt.get("bos_id", 1)))
    except (OSError, ValueError) as exc:
        verdict = {"compliant": False, "reasons": [f"trace not checked: the validation tokens did not load: {exc}"],
                   "stats": {}}
    ttt["trace_verdict"] = verdict
    seconds = time.perf_counter() - t0
    result["time/ttt_verify_s"] = seconds
    if isinstance(result.get("phases"), dict):
        result["phases"]["ttt_verify"] = round(seconds, 4)
    path = os.path.join(run_dir, RESULT_FILE)
    if os.path.isfile(path):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    return result


def verdict_line(result: dict | None) -> str | None:
    """The one line a person reads about the trace, or None for a run without TTT."""
    verdict = ((result or {}).get("ttt") or {}).get("trace_verdict")
    if verdict is None:
        return None
    return "ttt trace verdict: " + ("compliant" if verdict["compliant"] else
                                    "NOT COMPLIANT: " + "; ".join(verdict["reasons"]))
