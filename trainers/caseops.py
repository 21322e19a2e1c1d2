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


_DECODE = re.compile(f"{ESC}(.?)|([{TITLE}{ALLCAPS}]?)([a-z{CAPNEXT}]+)|([{TITLE}{ALLCAPS}A-Z])", re.S)


def decode(text: str) -> str:
    """CaseOps text -> original text; CaseOpsError on a string `encode` cannot produce."""
    out: list[str] = []
    pos, word_end = 0, -1
    for m in _DECODE.finditer(text):
        out.append(text[pos:m.start()])
        lit, op, body = m.group(1), m.group(2), m.group(3)
        if lit is not None:
            if lit not in OPERATORS:
                raise CaseOpsError(f"ESC at {m.start()} not followed by an operator character")
            out.append(lit)
        elif body is not None:
            if op and m.start() == word_end:  # runs are maximal: an operator never continues a word
                raise CaseOpsError(f"case operator at {m.start()} inside a word")
            if op == ALLCAPS:
                if CAPNEXT in body or len(body) < 2:
                    raise CaseOpsError(f"ALLCAPS at {m.start()} must cover two or more letters without CAPNEXT")
                out.append(body.upper())
            elif op == TITLE:
                if body[0] == CAPNEXT:
                    raise CaseOpsError(f"TITLE at {m.start()} followed by CAPNEXT")
                out.append(body[0].upper() + _capnext(body[1:], m.start() + 2))
            else:
                out.append(_capnext(body, m.start()))
            word_end = m.end()
        else:
            raise CaseOpsError(f"{m.group(4)!r} at {m.start()}: an uppercase letter, or a case operator "
                               "not followed by a lowercase letter")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _capnext(body: str, at: int) -> str:
    if CAPNEXT not in body:
        return body
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


def encode_with_sidecar(sp, text: str) -> tuple[list[int], list[int]]:
    """Token ids of the CaseOps form of `text` and, per token, the original UTF-8 bytes it covers (the
    `fineweb_val_bytes_*` sidecar). Exact only for text the tokenizer's normaliser leaves unchanged (an
    identity rule, or text normalised beforehand as the demo build does): then every piece's surface is a
    slice of its input and the canonical recount agrees."""
    proto = sp.encode_as_proto(encode(text))
    pieces = list(proto.pieces)
    return [p.id for p in pieces], original_bytes([p.surface for p in pieces])


def canonical_bytes(sp, ids: list[int]) -> int:
    """The canonical recount: decode the tokens, invert the transform, count UTF-8 bytes."""
    return len(decode(sp.decode(list(ids))).encode("utf-8"))
