"""Bits-per-byte accounting: byte lookup tables, the BPB formula, and an independent recount.

The score is val_bpb = (val_loss / ln 2) * (tokens / bytes), so the byte count is as important as
the loss. The trainer counts bytes with three per-id lookup tables (the baseline rule, see
docs/techniques.md 2.4); `canonical_byte_count` recounts the same positions by asking SentencePiece
to decode the tokens, and `check_tokenizer` refuses tokenizers for which the two disagree (the
failure mode behind several mis-scored submissions, e.g. no standalone "▁" piece).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import torch

PathLike = Union[str, "os.PathLike[str]"]

SPACE_MARK = "\u2581"  # "▁", SentencePiece's word-start / whitespace marker

__all__ = [
    "TokenizerError",
    "ByteLUTs",
    "load_tokenizer",
    "build_byte_luts",
    "token_bytes",
    "bpb_from_sums",
    "canonical_byte_count",
    "check_tokenizer",
    "DEFAULT_SAMPLE_TEXT",
]

# Mixed content on purpose: spaces before digits and punctuation (where a lone "▁" piece is needed),
# repeated whitespace and newlines (normalised away), accents, CJK and emoji (byte fallback).
DEFAULT_SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 2024 there were 3,141 entries, "
    "and 15% of them (about 471) were marked as \"done\" -- see section [2.5] for details.\n\n"
    "Python's   help() function prints documentation; for example: help(str.split) returns\t"
    "a description of each argument, e.g. sep=None and maxsplit=-1 .\n\n"
    "Unicode text: naïve café, Ärger über Öl, 東京タワー, emoji 😀 and symbols € ± ≥ ∞ .\n\n"
    "def f(x):\n    return {\"a\": [1, 2, 3], 'b': x ** 2}  # a comment  \n\n"
    "  Leading and trailing whitespace, ﬁ ligatures and ① circled digits are normalised.  "
)


class TokenizerError(ValueError):
    """A tokenizer that is missing, unreadable, or unfit for exact BPB accounting."""


def _model_label(sp: Any, model_path: PathLike | None = None) -> str:
    path = model_path if model_path is not None else getattr(sp, "_pgolf_model_path", None)
    return f"tokenizer {path}" if path is not None else "tokenizer"


def load_tokenizer(path: PathLike):
    """Load a SentencePiece model, with errors that say which file and how to get one."""
    import sentencepiece as spm

    path = Path(path)
    if path.is_dir():
        raise TokenizerError(f"tokenizer model {path} is a directory; point data.tokenizer_path (TOKENIZER_PATH) "
                             "at the .model file inside it")
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer model {path} not found; build the demo data with `pgolf data demo`, download "
            "the official one with `pgolf data fineweb`, or point data.tokenizer_path at a .model file"
        )
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise TokenizerError(f"tokenizer model {path} could not be loaded as a SentencePiece model: {exc}") from exc
    try:
        sp._pgolf_model_path = str(path)  # lets later errors name the file
    except AttributeError:
        pass
    return sp


@dataclass
class ByteLUTs:
    """Per-token-id tables; size = max(SentencePiece vocab, model vocab)."""

    base_bytes: torch.Tensor  # int16: bytes of the piece without its leading "▁"
    has_leading_space: torch.Tensor  # bool: piece starts with "▁"
    is_boundary: torch.Tensor  # bool: control/unknown/unused ids and ids beyond the sp vocab
    # CaseOps: int32 original bytes per position of the val stream (the sidecar); when set, a target's
    # bytes are read by its position and the tables above are not used for scoring
    val_bytes: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.base_bytes.numel())

    @property
    def device(self) -> torch.device:
        return self.base_bytes.device

    def to(self, device: torch.device | str) -> "ByteLUTs":
        return ByteLUTs(
            base_bytes=self.base_bytes.to(device),
            has_leading_space=self.has_leading_space.to(device),
            is_boundary=self.is_boundary.to(device),
            val_bytes=None if self.val_bytes is None else self.val_bytes.to(device),
        )


def _special_mask(sp: Any) -> np.ndarray:
    n = sp.get_piece_size()
    return np.array(
        [bool(sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)) for i in range(n)], dtype=bool
    )


def build_byte_luts(sp: Any, vocab_size: int, device: torch.device | str | None = None) -> ByteLUTs:
    """Byte tables per docs/techniques.md 2.4 (the baseline `build_sentencepiece_luts` rule).

    Byte-fallback ids count one byte each (their piece text "<0xE2>" is not what they spell), and
    the "▁" of a piece is counted separately so it can be dropped right after a boundary token.
    """
    n_sp = int(sp.get_piece_size())
    size = max(n_sp, int(vocab_size))
    base = np.zeros(size, dtype=np.int16)
    lead = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)  # ids the tokenizer does not define never spell bytes
    special = _special_mask(sp)
    for i in range(n_sp):
        if special[i]:
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE_MARK):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return ByteLUTs(
        base_bytes=torch.from_numpy(base).to(dev),
        has_leading_space=torch.from_numpy(lead).to(dev),
        is_boundary=torch.from_numpy(boundary).to(dev),
    )


def token_bytes(prev_ids: Any, tgt_ids: Any, luts: ByteLUTs, pos: Any = None) -> torch.Tensor:
    """Bytes spelled by each target: base + 1 for its "▁" unless the previous token is a boundary; with
    a sidecar (luts.val_bytes), the sidecar's bytes at the targets' val-stream positions `pos`."""
    if luts.val_bytes is not None:
        if pos is None:  # a scoring path that cannot say where its targets are would score the wrong bytes
            raise ValueError("token_bytes: this data has a byte sidecar; the caller must pass the targets' positions")
        return luts.val_bytes[torch.as_tensor(pos).to(device=luts.device, dtype=torch.long)]
    prev = torch.as_tensor(prev_ids).to(device=luts.device, dtype=torch.long)
    tgt = torch.as_tensor(tgt_ids).to(device=luts.device, dtype=torch.long)
    if prev.shape != tgt.shape:
        raise ValueError(f"token_bytes: prev_ids shape {tuple(prev.shape)} != tgt_ids shape {tuple(tgt.shape)}")
    out = luts.base_bytes[tgt].to(torch.int32)
    out += (luts.has_leading_space[tgt] & ~luts.is_boundary[prev]).to(torch.int32)
    return out


def bpb_from_sums(loss_sum_nats: float, token_count: float, byte_count: float) -> tuple[float, float]:
    """(val_loss in nats/token, val_bpb in bits/byte) from globally summed NLL, tokens and bytes."""
    loss_sum = float(loss_sum_nats)
    tokens = float(token_count)
    nbytes = float(byte_count)
    if not tokens > 0:
        raise ValueError(f"bpb_from_sums: token_count must be > 0, got {token_count}")
    if not nbytes > 0:
        raise ValueError(f"bpb_from_sums: byte_count must be > 0, got {byte_count}")
    val_loss = loss_sum / tokens
    val_bpb = (val_loss / math.log(2.0)) * (tokens / nbytes)
    return val_loss, val_bpb


def _flat_ids(ids: Any) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        return ids.detach().to("cpu", torch.int64).reshape(-1).numpy()
    return np.asarray(ids, dtype=np.int64).reshape(-1)


class _DecodeTables:
    """Per-tokenizer facts the recount needs, computed once per SentencePiece object."""

    def __init__(self, sp: Any):
        n = int(sp.get_piece_size())
        self.n = n
        self.boundary = _special_mask(sp)
        self.lead_space = np.zeros(n, dtype=bool)
        self.byte_value = np.full(n, -1, dtype=np.int32)
        sentinel = -1
        for i in range(n):
            if self.boundary[i]:
                continue
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                self.byte_value[i] = int(piece[3:5], 16)  # pieces are spelled "<0xAB>"
                continue
            if piece.startswith(SPACE_MARK):
                self.lead_space[i] = True
            elif sentinel < 0 and piece and SPACE_MARK not in piece:
                sentinel = i
        if sentinel < 0:
            raise TokenizerError(
                f"{_model_label(sp)}: has no ordinary piece without '▁' to anchor the byte recount"
            )
        self.sentinel = sentinel
        self.sentinel_bytes = len(sp.decode([sentinel]).encode("utf-8"))


def _utf8_len_from_lead(b: int) -> int:
    if b >= 0xF0:
        return 4
    if b >= 0xE0:
        return 3
    if b >= 0xC0:
        return 2
    return 1


def _segment_bytes(sp: Any, t: _DecodeTables, ids: list[int], after_boundary: bool) -> int:
    # A segment cut from the middle of a document can start with orphan UTF-8 continuation bytes or
    # end inside a multi-byte character; SentencePiece would decode each such byte to U+FFFD (3
    # bytes). Those byte-fallback tokens still spell exactly one byte of the document each.
    bv = t.byte_value
    lo = 0
    while lo < len(ids) and 0x80 <= bv[ids[lo]] <= 0xBF:
        lo += 1
    hi = len(ids)
    j = hi - 1
    while j >= lo and 0x80 <= bv[ids[j]] <= 0xBF:
        j -= 1
    if j >= lo and bv[ids[j]] >= 0xC0 and (hi - j) < _utf8_len_from_lead(int(bv[ids[j]])):
        hi = j
    raw = lo + (len(ids) - hi)
    mid = ids[lo:hi]
    spelled = 0
    if mid:
        # SentencePiece's decoder drops the whitespace that starts its output (for models with
        # add_dummy_prefix or remove_extra_whitespaces, which includes the challenge tokenizer even
        # though add_dummy_prefix=False). Decoding behind a fixed non-space sentinel piece turns that
        # off, so `spelled` is exactly the bytes the pieces spell, "▁" included.
        text = sp.decode([t.sentinel] + mid)
        spelled = len(text.encode("utf-8")) - t.sentinel_bytes
    total = raw + spelled
    if after_boundary and t.lead_space[ids[0]]:
        # The scoring convention: a "▁" directly after BOS (or another boundary token) is the
        # tokenizer's word-start mark, not a byte of the document; the exporter's normaliser strips
        # leading whitespace, so a document's text never starts with a space. The LUT charges it 0
        # bytes, and so does decoding the whole document (the decoder strips it), so drop it here.
        total -= 1
    return total


def canonical_byte_count(sp: Any, prev_ids: Any, tgt_ids: Any) -> int:
    """UTF-8 bytes of the scored targets, recounted by decoding them with SentencePiece.

    Positions are (prev, target) pairs in scoring order. They are cut into segments: a segment
    starts at the first position, after every boundary token (BOS/EOS/PAD/UNK and ids beyond the sp
    vocab, which spell nothing and are not scored bytes) and wherever the positions stop being
    contiguous (prev_ids[i] != tgt_ids[i-1]). Each segment is decoded as one piece of text, so
    byte-fallback sequences are reassembled into characters the way the decoder does it. A segment
    that starts right after a boundary does not count a leading "▁" (see `_segment_bytes`); one that
    starts mid-document does, because there the space is a real byte between two words.
    For a whole validation stream this equals summing len(sp.decode(doc).encode()) over documents.
    """
    prev = _flat_ids(prev_ids)
    tgt = _flat_ids(tgt_ids)
    if prev.shape != tgt.shape:
        raise ValueError(f"canonical_byte_count: prev_ids has {prev.size} ids, tgt_ids has {tgt.size}")
    if tgt.size == 0:
        return 0
    tables = getattr(sp, "_pgolf_decode_tables", None)
    if tables is None:
        tables = _DecodeTables(sp)
        try:
            sp._pgolf_decode_tables = tables
        except AttributeError:
            pass
    n = tables.n

    def is_boundary(ids: np.ndarray) -> np.ndarray:
        out = np.ones(ids.shape, dtype=bool)
        ok = (ids >= 0) & (ids < n)
        out[ok] = tables.boundary[ids[ok]]
        return out

    prev_b = is_boundary(prev)
    keep = ~is_boundary(tgt)
    starts = prev_b.copy()
    starts[0] = True
    starts[1:] |= prev[1:] != tgt[:-1]
    # a dropped (boundary) target also ends the segment; the next kept position has a boundary prev
    # when contiguous, and a discontinuity otherwise, so `starts` already marks it
    seg_id = np.cumsum(starts | ~keep)
    total = 0
    kept_idx = np.flatnonzero(keep)
    if kept_idx.size == 0:
        return 0
    ids_kept = tgt[kept_idx]
    seg_kept = seg_id[kept_idx]
    cut = np.flatnonzero(np.diff(seg_kept)) + 1
    bounds = np.concatenate(([0], cut, [kept_idx.size]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        first_pos = kept_idx[a]
        total += _segment_bytes(sp, tables, ids_kept[a:b].tolist(), bool(prev_b[first_pos]))
    return int(total)


def _sample_documents(sample_text: str | Iterable[str]) -> list[str]:
    if isinstance(sample_text, str):
        docs = [d for d in sample_text.split("\n\n") if d.strip()]
        return docs or [sample_text]
    return [d for d in sample_text if d]


def check_tokenizer(
    sp: Any,
    luts: ByteLUTs | None = None,
    sample_text: str | Iterable[str] = DEFAULT_SAMPLE_TEXT,
    model_path: PathLike | None = None,
) -> dict[str, int]:
    """Refuse tokenizers whose BPB byte accounting would be wrong; returns the sample's byte counts.

    Checks: a standalone "▁" piece exists (without it a space before digits or punctuation is
    spelled as three byte-fallback tokens and counted as 3 bytes, issue #897: BPB ~20% too low);
    no piece has "▁" after its first character (the LUT would count it as 3 bytes, not 1 space);
    and on the sample the LUT count equals both the decoded-token recount and the byte length of
    the normalised text, for whole documents and for a stream cut in the middle of a document.
    """
    label = _model_label(sp, model_path)
    n = int(sp.get_piece_size())
    space_id = sp.piece_to_id(SPACE_MARK)
    if not (0 <= space_id < n) or sp.id_to_piece(space_id) != SPACE_MARK or sp.is_unknown(space_id) \
            or sp.is_control(space_id) or sp.is_unused(space_id) or sp.is_byte(space_id):
        raise TokenizerError(
            f"{label} has no standalone '▁' piece: a space before a digit or punctuation mark would be "
            "encoded as 3 byte-fallback tokens and counted as 3 bytes instead of 1, making val_bpb "
            "about 20% too low (parameter-golf issue #897); retrain it so '▁' is in the vocabulary "
            "(e.g. user_defined_symbols=['▁'])"
        )
    special = _special_mask(sp)
    for i in range(n):
        if special[i] or sp.is_byte(i):
            continue
        piece = sp.id_to_piece(i)
        if SPACE_MARK in piece[1:]:
            raise TokenizerError(
                f"{label}: piece {i} {piece!r} has '▁' after its first character; the byte LUT would "
                "count that inner '▁' as 3 bytes instead of one space"
            )
    bos = int(sp.bos_id())
    if bos < 0:
        raise TokenizerError(f"{label} has no BOS id; shards prefix every document with BOS")
    if luts is None:
        luts = build_byte_luts(sp, n)
    docs = _sample_documents(sample_text)
    stream: list[int] = []
    text_bytes = 0
    for doc in docs:
        stream.append(bos)
        stream.extend(sp.encode(doc))
        if hasattr(sp, "normalize"):
            norm = sp.normalize(doc).replace(SPACE_MARK, " ")
            if norm.startswith(" "):
                norm = norm[1:]  # the word-start mark after BOS, same convention as the LUT
            text_bytes += len(norm.encode("utf-8"))
    ids = np.asarray(stream, dtype=np.int64)
    prev, tgt = ids[:-1], ids[1:]
    lut_bytes = int(token_bytes(torch.from_numpy(prev), torch.from_numpy(tgt), luts.to("cpu")).sum())
    decoded = canonical_byte_count(sp, prev, tgt)
    mid = len(prev) // 2 + 1
    decoded_split = canonical_byte_count(sp, prev[:mid], tgt[:mid]) + canonical_byte_count(sp, prev[mid:], tgt[mid:])
    if not hasattr(sp, "normalize"):
        text_bytes = decoded
    if not (lut_bytes == decoded == decoded_split == text_bytes):
        raise TokenizerError(
            f"{label}: byte accounting disagrees on the sample text: LUT counts {lut_bytes} bytes, "
            f"decoding the tokens gives {decoded} ({decoded_split} when cut mid-document), the "
            f"normalised text has {text_bytes}; val_bpb computed with this tokenizer would be wrong"
        )
    return {"tokens": int(tgt.size), "lut_bytes": lut_bytes, "decoded_bytes": decoded, "text_bytes": text_bytes}
