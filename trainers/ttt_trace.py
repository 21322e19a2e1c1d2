"""The TTT trace (`ttt_trace.jsonl`) and its verifier.

The trace is evidence that test-time training followed the rules (techniques.md 1.4): it records,
in execution order, every scoring of validation tokens and every optimizer update with the token
ranges involved, and the verifier decides legality from the trace alone - no knowledge of the mode
that produced it, so a flagged recipe is caught by what it did, not by its name.
The trainer only writes; the platform runs the verifier after the run (pgolf/ttt_audit.py), so the
packer leaves it out of train_gpt.py.

Token indices are positions in the validation token stream. A score item [a, b) means the targets
a..b-1 were added to the metric; an update item [a, b) means tokens a..b-1 entered the loss of that
step as inputs or targets. Weights live in named states: "global" is the evaluated model; a `fork`
event creates states that start from a parent's current weights (per-document LoRA adapters); a list
of parents means the new states depend on all of them (LoRA factors kept from an earlier document).

Order. Scored documents are independent, so a trace may process them out of stream order: the header's
`doc_order` lists position spans [s, e] (the document's targets are tokens s+1..e) in the order they
were processed. The verifier then reads C3 in that order: token t of the k-th listed document comes
after every token of documents 1..k-1. The spans must tile the scored range, and when the verifier is
given the stream's document starts (BOS positions) every span must begin at one. Without `doc_order`
the whole stream is one document, i.e. plain stream order.

Events (one JSON object per line):
  {"event": "header", "version": 1, "mode": str, "scored": [lo, hi], "last_chunk": [a, b],
   "doc_order": [[s, e], ...] (optional), ...}
  {"event": "fork", "parent": str | [str, ...], "states": [str, ...]}
  {"event": "score", "items": [[state, a, b], ...], ...}
  {"event": "update", "items": [[state, a, b], ...], ...}
  {"event": "final", "tokens": int, ...}

Rules checked (issue #1017's conditions, restated on ranges):
  C4 single pass - every token in [lo, hi) is scored exactly once, none outside it.
  C3 score before update - a state that scores token t was never updated with token t or any later
     token, "later" in the document order (for one global state in stream order this is: every token
     is scored before any update that used it). An update item's first token is its first input only
     (sequence x = a..b-2 predicts a+1..b-1): its order is that of its targets.
  last chunk - no update has a target in the last chunk (training on it could only help a rescore).
  accounting - the `final` event's token count equals the tokens the score events cover.
"""
from __future__ import annotations

import bisect
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

    def fork(self, parent: str | list[str], states: list[str]) -> None:
        self.write("fork", parent=parent if isinstance(parent, str) else list(parent), states=list(states))

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


class _Order:
    """Token index -> rank in the processing order of the documents (keys 1..N over the scored range)."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.by_start = sorted(range(len(spans)), key=lambda i: spans[i][0])
        self.starts = [spans[i][0] for i in self.by_start]
        self.ends = [spans[i][1] for i in self.by_start]
        offs, acc = [0] * len(spans), 0
        for i, (s, e) in enumerate(spans):
            offs[i], acc = acc, acc + (e - s)
        self.offs = [offs[i] for i in self.by_start]
        self.total = acc

    def tiling_error(self, lo: int, hi: int) -> str | None:
        if not self.starts:
            return "documents list is empty"
        prev = lo - 1
        for s, e in zip(self.starts, self.ends):
            if s != prev or e <= s:
                return f"documents do not tile the scored range: span [{s}, {e}] after position {prev}"
            prev = e
        return None if prev == hi - 1 else f"documents end at {prev}, the scored range at {hi - 1}"

    def _unit(self, t: int) -> int:  # the document whose targets hold t (s < t <= e)
        return max(bisect.bisect_left(self.starts, t) - 1, 0)

    def key(self, t: int) -> int:
        if t <= self.starts[0]:
            return t - self.starts[0]
        if t > self.ends[-1]:
            return self.total + t - self.ends[-1]
        u = self._unit(t)
        return self.offs[u] + t - self.starts[u]

    def pieces(self, a: int, b: int):
        """[a, b) cut at document ends: (a_i, b_i) each inside one document's targets."""
        while a < b:
            u = self._unit(a)
            end = self.ends[u] + 1 if self.starts[0] < a <= self.ends[-1] else b
            yield a, min(b, max(end, a + 1))
            a = min(b, max(end, a + 1))

    def last_key(self, a: int, b: int) -> int:
        """Latest key an update [a, b) used: over its targets a+1..b-1 (token a itself when alone)."""
        if b - a < 2:
            return self.key(a)
        return max(self.key(pb - 1) for _, pb in self.pieces(a + 1, b))


def verify_trace(events: list[dict] | str, max_reasons: int = 5, doc_starts: Iterable[int] | None = None) -> dict:
    """{"compliant": bool, "reasons": [...], "stats": {...}} from the trace alone. `doc_starts` (the
    stream's BOS positions) lets the verifier check that a declared document order moves whole documents."""
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
    try:
        spans = [(int(s), int(e)) for s, e in head.get("doc_order") or [(lo - 1, hi - 1)]]
    except (TypeError, ValueError):
        return {"compliant": False, "reasons": ["trace header doc_order is not [start, end] pairs"], "stats": {}}
    order = _Order(spans)
    err = order.tiling_error(lo, hi)
    if err is not None:
        return {"compliant": False, "reasons": [err], "stats": {}}
    if doc_starts is not None and "doc_order" in head:
        known = set(int(s) for s in doc_starts)
        bad = [s for s, _ in spans if s not in known]
        if bad:
            fail("order", f"{len(bad)} declared documents do not start at a document boundary, first at {bad[0]}")

    max_used: dict[str, int] = {GLOBAL: -1}  # per state: the latest token any of its updates used
    score_spans: list[tuple[int, int, int]] = []  # (a, b, event index)
    n_updates = n_scores = 0
    final_tokens = None
    for idx, ev in enumerate(events[1:], start=1):
        kind = ev.get("event")
        if kind == "fork":
            parents = ev.get("parent")
            parents = [parents] if isinstance(parents, str) else list(parents or [])
            unknown = [p for p in parents if p not in max_used]
            if unknown or not parents:
                fail("state", f"event {idx}: fork from unknown state {unknown[0] if unknown else None!r}")
                continue
            for s in ev.get("states", []):
                max_used[s] = max(max_used[p] for p in parents)
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
                    for pa, _pb in order.pieces(a, b):
                        if max_used[state] >= order.key(pa):
                            fail("order", f"train-before-score: event {idx} scored tokens from {pa} with state "
                                          f"{state!r} already updated with tokens up to order {max_used[state]}")
                    score_spans.append((a, b, idx))
                else:
                    first = a + 1 if b - a >= 2 else a  # the targets (the first token is an input only)
                    if b > last_a and first < last_b:
                        fail("last", f"trained on the last chunk: event {idx} used tokens "
                                     f"{_fmt(max(first, last_a), min(b, last_b))} of the last chunk {_fmt(last_a, last_b)}")
                    max_used[state] = max(max_used[state], order.last_key(a, b))
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
             "states": len(max_used), "documents": len(spans), "violations": dict(counts)}
    return {"compliant": not counts, "reasons": reasons, "stats": stats}
