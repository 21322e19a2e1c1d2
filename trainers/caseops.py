"""CaseOps (#1729, `lossless_caps_caseops_v1`): a bijective text transform applied before BPE so the
tokenizer sees a lowercase lexical stream and case is carried by four operator characters.

Over each maximal run of ASCII letters: a lowercase run is unchanged; an all-uppercase run of two or
more letters becomes ALLCAPS + run.lower(); an uppercase first letter followed by lowercase becomes
TITLE + run.lower(); any other mix becomes [TITLE if the first letter is uppercase] + first letter
lowered + for each later letter [CAPNEXT if uppercase] + letter lowered. A literal operator character
anywhere in the text becomes ESC + that character. Everything else (digits, punctuation, non-ASCII
letters) passes through, so the transform changes no byte count except by the operators it adds.

The operators are private-use code points U+E001..U+E004 (user-defined symbols of the record's
tokenizer). BPB stays on the ORIGINAL bytes: `original_bytes` gives each token piece the UTF-8 bytes
of the original text it stands for (operators 0, an escaped literal its own length), which the data
prep writes as the per-token byte sidecar.
"""
from __future__ import annotations

import re

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
_TOKEN = re.compile(f"[A-Za-z]+|[{''.join(OPERATORS)}]")


class CaseOpsError(ValueError):
    """A string that no original text encodes to."""


def _encode_run(run: str) -> str:
    low = run.lower()
    if run == low:
        return run
    if len(run) >= 2 and run == run.upper():
        return ALLCAPS + low
    if run[0].isupper() and run[1:] == low[1:]:
        return TITLE + low
    head = TITLE if run[0].isupper() else ""
    return head + low[0] + "".join((CAPNEXT + c.lower()) if c.isupper() else c for c in run[1:])


def encode(text: str) -> str:
    """Original text -> CaseOps text."""
    return _TOKEN.sub(lambda m: ESC + m.group() if m.group() in OPERATORS else _encode_run(m.group()), text)


def decode(text: str) -> str:
    """CaseOps text -> original text; CaseOpsError on a string `encode` cannot produce."""
    out: list[str] = []
    i, n = 0, len(text)
    after_word = False  # a case operator may not continue a word (runs are maximal)
    while i < n:
        ch = text[i]
        word, after_word = after_word, False
        if ch == ESC:
            if i + 1 >= n or text[i + 1] not in OPERATORS:
                raise CaseOpsError(f"ESC at {i} not followed by an operator character")
            out.append(text[i + 1])
            i += 2
            continue
        if ch in (TITLE, ALLCAPS):
            j = i + 1
            while j < n and ("a" <= text[j] <= "z" or text[j] == CAPNEXT):
                j += 1
            body = text[i + 1:j]
            if not body or body[0] == CAPNEXT or word:
                raise CaseOpsError(f"case operator at {i} does not start a lowercase word")
            if ch == ALLCAPS:
                if CAPNEXT in body or len(body) < 2:
                    raise CaseOpsError(f"ALLCAPS at {i} must cover two or more letters without CAPNEXT")
                out.append(body.upper())
            else:
                out.append(body[0].upper() + _capnext(body[1:], i + 2))
            i, after_word = j, True
            continue
        if ch == CAPNEXT or "a" <= ch <= "z":
            j = i
            while j < n and ("a" <= text[j] <= "z" or text[j] == CAPNEXT):
                j += 1
            out.append(_capnext(text[i:j], i))
            i, after_word = j, True
            continue
        if "A" <= ch <= "Z":
            raise CaseOpsError(f"uppercase letter {ch!r} at {i}: CaseOps text is lowercase")
        out.append(ch)
        i += 1
    return "".join(out)


def _capnext(body: str, at: int) -> str:
    out, up = [], False
    for k, c in enumerate(body):
        if c == CAPNEXT:
            if up or k + 1 == len(body):
                raise CaseOpsError(f"CAPNEXT near {at + k} not followed by a letter")
            up = True
            continue
        out.append(c.upper() if up else c)
        up = False
    return "".join(out)


def original_bytes(pieces: list[str]) -> list[int]:
    """UTF-8 bytes of the original text behind each piece of a CaseOps text (pieces in order, e.g.
    the surfaces of its tokens): operators count 0, an escaped operator 3, anything else its own."""
    counts, escaped = [], False
    for piece in pieces:
        c = 0
        for ch in piece:
            if escaped:
                c, escaped = c + len(ch.encode("utf-8")), False
            elif ch == ESC:
                escaped = True
            elif ch not in OPERATORS:
                c += len(ch.encode("utf-8"))
        counts.append(c)
    if escaped:
        raise CaseOpsError("the pieces end inside an escape")
    return counts
