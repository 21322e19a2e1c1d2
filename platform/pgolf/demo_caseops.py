"""The CaseOps variant of the demo corpus (#1729's `lossless_caps_caseops_v1` export, rebuilt on the demo
text): documents normalised the way the challenge tokenizer normalises (so the sp1024 demo and this one
score the same bytes), transformed by pgolf.trainers.caseops, tokenized by a BPE that holds the four
operators as user-defined symbols, and for val a per-token byte sidecar of the ORIGINAL bytes."""
from __future__ import annotations

from typing import Any

from pgolf.datacommon import DataError


def tokenizer_extras() -> dict[str, Any]:
    """What the CaseOps tokenizer adds to the challenge's trainer settings: the operators as symbols
    (one piece each, never byte fallback; the record's tokenizer has them at ids 4..7)."""
    from pgolf.trainers.caseops import OPERATORS

    return {"user_defined_symbols": list(OPERATORS)}


def caseops_texts(docs: list[str]) -> list[str]:
    """Documents as the tokenizer's normaliser leaves them (nmt_nfkc, runs of whitespace collapsed):
    the CaseOps tokenizer then sees text its normaliser does not change, so every piece's surface is a
    slice of the transformed document and decode -> inverse transform gives the document back."""
    import sentencepiece as spm

    norm = spm.SentencePieceNormalizer(rule_name="nmt_nfkc", add_dummy_prefix=False,
                                       remove_extra_whitespaces=True, escape_whitespaces=False)
    return [norm.normalize(d) for d in docs]


def transformed(docs: list[str]) -> list[str]:
    from pgolf.trainers.caseops import encode

    return [encode(d) for d in docs]


def encode_caseops(sp: Any, docs: list[str], bos_id: int):
    """(tokens, sidecar) uint16 arrays: BOS + the CaseOps tokens of each document, and per token the
    original UTF-8 bytes it stands for (BOS 0). Each document is recounted the canonical way (decode,
    inverse transform, UTF-8 bytes) and must equal its sidecar sum and its own byte length."""
    import numpy as np

    from pgolf.trainers.caseops import canonical_bytes, encode_with_sidecar

    toks: list[int] = []
    side: list[int] = []
    for i, doc in enumerate(docs):
        ids, counts = encode_with_sidecar(sp, doc)
        want = len(doc.encode("utf-8"))
        if not (sum(counts) == canonical_bytes(sp, ids) == want):
            raise DataError(f"CaseOps demo document {i}: sidecar {sum(counts)} bytes, canonical recount "
                            f"{canonical_bytes(sp, ids)}, text {want}: the transform or tokenizer is not lossless here")
        toks.append(bos_id)
        toks.extend(ids)
        side.append(0)
        side.extend(counts)
    return np.asarray(toks, dtype=np.uint16), np.asarray(side, dtype=np.uint16)
