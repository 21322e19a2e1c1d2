"""The TTT trace (`ttt_trace.jsonl`) and its verifier.

The trace is evidence that test-time training followed the rules (techniques.md 1.4): it records,
in execution order, every scoring of validation tokens and every optimizer update with the token
ranges involved, and the verifier decides legality from the trace alone - no knowledge of the mode
that produced it, so a flagged recipe is caught by what it did, not by its name.

Token indices are positions in the validation token stream. A score item [a, b) means the targets
a..b-1 were added to the metric; an update item [a, b) means tokens a..b-1 entered the loss of that
step as inputs or targets. Weights live in named states: "global" is the evaluated model; a `fork`
event creates states that start from a parent's current weights (per-document LoRA adapters).

Events (one JSON object per line):
  {"event": "header", "version": 1, "mode": str, "scored": [lo, hi], "last_chunk": [a, b], ...}
  {"event": "fork", "parent": str, "states": [str, ...]}
  {"event": "score", "items": [[state, a, b], ...], ...}
  {"event": "update", "items": [[state, a, b], ...], ...}
  {"event": "final", "tokens": int, ...}

Rules checked (issue #1017's conditions, restated on ranges):
  C4 single pass - every token in [lo, hi) is scored exactly once, none outside it.
  C3 score before update - a state that scores token t was never updated with token t or any later
     token (for one global state this is: every token is scored before any update that used it).
  last chunk - no update touches the last chunk's tokens (training on it could only help a rescore).
  accounting - the `final` event's token count equals the tokens the score events cover.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

VERSION = 1
GLOBAL = "global"
_PRIORITY = ("order", "double", "missing", "last", "final", "range", "state", "format")


class TraceWriter:
    """Appends events to the trace file; a disabled writer (non-zero ranks) drops them."""

    def __init__(self, path: str | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled and path is not None
        self.events = 0
        self._fh = None
        if self.enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fh = open(path, "w", encoding="utf-8")

    def write(self, kind: str, **fields) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps({"event": kind, **fields}, separators=(",", ":")) + "\n")
        self.events += 1

    def header(self, mode: str, scored: tuple[int, int], last_chunk: tuple[int, int], **extra) -> None:
        self.write("header", version=VERSION, mode=mode, scored=[int(scored[0]), int(scored[1])],
                   last_chunk=[int(last_chunk[0]), int(last_chunk[1])], **extra)

    def fork(self, parent: str, states: list[str]) -> None:
        self.write("fork", parent=parent, states=list(states))

    def score(self, items: Iterable, **extra) -> None:
        self.write("score", items=_items(items), **extra)

    def update(self, items: Iterable, **extra) -> None:
        self.write("update", items=_items(items), **extra)

    def final(self, tokens: int, **extra) -> None:
        self.write("final", tokens=int(tokens), **extra)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _items(items: Iterable) -> list[list]:
    return [[str(s), int(a), int(b)] for s, a, b in items if int(b) > int(a)]


def read_trace(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _fmt(a: int, b: int) -> str:
    return f"[{a}, {b})"


def verify_trace(events: list[dict] | str, max_reasons: int = 5) -> dict:
    """{"compliant": bool, "reasons": [...], "stats": {...}} from the trace alone."""
    if isinstance(events, str):
        try:
            events = read_trace(events)
        except (OSError, ValueError) as exc:
            return {"compliant": False, "reasons": [f"trace unreadable: {exc}"], "stats": {}}
    by_kind: dict[str, list[str]] = {}
    counts: dict[str, int] = {}

    def fail(kind: str, msg: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] <= max_reasons:
            by_kind.setdefault(kind, []).append(msg)

    reasons: list[str] = []
    if not events or events[0].get("event") != "header":
        return {"compliant": False, "reasons": ["trace has no header event"], "stats": {}}
    head = events[0]
    try:
        lo, hi = (int(v) for v in head["scored"])
        last_a, last_b = (int(v) for v in head["last_chunk"])
    except (KeyError, TypeError, ValueError):
        return {"compliant": False, "reasons": ["trace header lacks scored / last_chunk ranges"], "stats": {}}

    max_used: dict[str, int] = {GLOBAL: -1}  # per state: the latest token any of its updates used
    score_spans: list[tuple[int, int, int]] = []  # (a, b, event index)
    n_updates = n_scores = 0
    final_tokens = None
    for idx, ev in enumerate(events[1:], start=1):
        kind = ev.get("event")
        if kind == "fork":
            parent = ev.get("parent")
            if parent not in max_used:
                fail("state", f"event {idx}: fork from unknown state {parent!r}")
                continue
            for s in ev.get("states", []):
                max_used[s] = max_used[parent]
        elif kind in ("score", "update"):
            items = ev.get("items", [])
            if not isinstance(items, list):
                fail("format", f"event {idx}: items is not a list")
                continue
            for item in items:
                try:
                    state, a, b = str(item[0]), int(item[1]), int(item[2])
                except (TypeError, ValueError, IndexError):
                    fail("format", f"event {idx}: malformed item {item!r}")
                    continue
                if state not in max_used:
                    fail("state", f"event {idx}: unknown state {state!r}")
                    continue
                if b <= a:
                    continue
                if kind == "score":
                    if a < lo or b > hi:
                        fail("range", f"event {idx}: scored tokens {_fmt(a, b)} outside the validation range {_fmt(lo, hi)}")
                    if max_used[state] >= a:
                        fail("order", f"train-before-score: event {idx} scored tokens from {a} with state "
                                      f"{state!r} already updated with tokens up to {max_used[state]}")
                    score_spans.append((a, b, idx))
                else:
                    if b > last_a and a < last_b:
                        fail("last", f"trained on the last chunk: event {idx} used tokens "
                                     f"{_fmt(max(a, last_a), min(b, last_b))} of the last chunk {_fmt(last_a, last_b)}")
                    max_used[state] = max(max_used[state], b - 1)
            if kind == "score":
                n_scores += 1
            else:
                n_updates += 1
        elif kind == "final":
            final_tokens = ev.get("tokens")
        elif kind == "header":
            fail("format", f"event {idx}: second header")

    # C4: sort the scored spans and walk them once; overlaps are double scoring, holes unscored tokens.
    score_spans.sort()
    covered = 0
    cursor = lo
    for a, b, idx in score_spans:
        a_in, b_in = max(a, lo), min(b, hi)
        if a_in < cursor:
            fail("double", f"double scoring: tokens {_fmt(a_in, min(cursor, b_in))} scored again by event {idx}")
        elif a_in > cursor:
            fail("missing", f"tokens {_fmt(cursor, a_in)} never scored")
        if b_in > cursor:
            covered += b_in - max(a_in, cursor)
            cursor = b_in
    if cursor < hi:
        fail("missing", f"tokens {_fmt(cursor, hi)} never scored")
    if final_tokens is None:
        fail("final", "trace has no final event")
    elif int(final_tokens) != covered or covered != hi - lo:
        fail("final", f"the score counts {final_tokens} tokens, the trace covers {covered} of {hi - lo}")

    # the most telling violation first: score-before-update, then single pass, then the rest
    for kind in sorted(by_kind, key=lambda k: (_PRIORITY.index(k) if k in _PRIORITY else len(_PRIORITY), k)):
        reasons += by_kind[kind]
        if counts[kind] > max_reasons:
            reasons.append(f"... and {counts[kind] - max_reasons} more {kind} violations")
    stats = {"scores": n_scores, "updates": n_updates, "scored_tokens": covered, "expected_tokens": hi - lo,
             "states": len(max_used), "violations": dict(counts)}
    return {"compliant": not counts, "reasons": reasons, "stats": stats}
