from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from pgolf.trainers.bpb import (
    TokenizerError,
    bpb_from_sums,
    build_byte_luts,
    canonical_byte_count,
    check_tokenizer,
    load_tokenizer,
    token_bytes,
)
from pgolf.trainers.loader import load_validation_tokens
from pgolf.trainers.shards import list_shards


@pytest.fixture(scope="module")
def sp(demo_data):
    return load_tokenizer(demo_data.tokenizer_path)


def test_bpb_formula_hand_computed():
    # 1000 tokens at exactly ln 2 nats each = 1 bit/token; 2500 bytes -> 1000 bits / 2500 bytes = 0.4
    loss, bpb = bpb_from_sums(1000 * math.log(2), 1000, 2500)
    assert loss == pytest.approx(math.log(2), rel=1e-15)
    assert bpb == pytest.approx(0.4, rel=1e-15)
    # a second case written out by hand: 3 tokens, NLL 1.2 + 0.9 + 2.4 = 4.5 nats, 11 bytes
    loss, bpb = bpb_from_sums(4.5, 3, 11)
    assert loss == pytest.approx(1.5)
    assert bpb == pytest.approx((1.5 / 0.6931471805599453) * 3 / 11)  # = 2.164043 * 3 / 11
    assert bpb == pytest.approx(0.5901934, abs=1e-6)
    with pytest.raises(ValueError, match="byte_count"):
        bpb_from_sums(1.0, 1, 0)
    with pytest.raises(ValueError, match="token_count"):
        bpb_from_sums(1.0, 0, 1)


def test_luts_follow_the_baseline_rule(sp):
    luts = build_byte_luts(sp, 1100)  # model vocab larger than the tokenizer's
    assert luts.size == 1100
    assert luts.base_bytes.dtype == torch.int16
    assert luts.is_boundary[1024:].all() and (luts.base_bytes[1024:] == 0).all()
    for special in (0, 1, 2, 3):  # pad, bos, eos, unk
        assert luts.is_boundary[special] and luts.base_bytes[special] == 0
    space = sp.piece_to_id("\u2581")
    assert luts.has_leading_space[space] and luts.base_bytes[space] == 0
    byte_ids = [i for i in range(sp.get_piece_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and all(luts.base_bytes[i] == 1 for i in byte_ids)
    the = sp.piece_to_id("\u2581the")
    assert sp.id_to_piece(the) == "\u2581the"
    assert luts.has_leading_space[the] and luts.base_bytes[the] == 3
    bos = 1
    # "▁the" after BOS: 3 bytes (no space); after a word: 4; id beyond the sp vocab: boundary, 0 bytes
    prev = torch.tensor([bos, the, the, 1050])
    tgt = torch.tensor([the, the, 1050, the])
    assert token_bytes(prev, tgt, luts).tolist() == [3, 4, 0, 3]


def test_lut_equals_decoded_bytes_on_whole_demo_validation_set(sp, demo_data):
    luts = build_byte_luts(sp, demo_data.vocab_size)
    val = load_validation_tokens(list_shards(demo_data.data_path, "val"), seq_len=64)
    prev, tgt = val[:-1], val[1:]
    lut_bytes = int(token_bytes(prev, tgt, luts).sum())
    recount = canonical_byte_count(sp, prev, tgt)
    # the plainest possible decode: each document (between BOS tokens) decoded on its own
    ids = val.tolist()
    docs, cur = [], None
    for t in ids:
        if t == 1:
            if cur is not None:
                docs.append(cur)
            cur = []
        else:
            cur.append(t)
    docs.append(cur)
    naive = sum(len(sp.decode(d).encode("utf-8")) for d in docs)
    assert lut_bytes == recount == naive
    assert lut_bytes > 100_000
    # scoring window by window (rows start mid-document) changes nothing
    x, y = prev.reshape(-1, 64), tgt.reshape(-1, 64)
    assert sum(canonical_byte_count(sp, x[i], y[i]) for i in range(x.shape[0])) == lut_bytes
    assert int(token_bytes(x, y, luts).sum()) == lut_bytes


def test_recount_of_a_window_cut_inside_a_character(sp):
    luts = build_byte_luts(sp, 1024)
    ids = [1] + sp.encode("word \u6771\u4eac tower")
    pieces = [sp.id_to_piece(i) for i in ids]
    first_byte = next(k for k, p in enumerate(pieces) if p.startswith("<0x"))
    t = torch.tensor(ids)
    prev, tgt = t[:-1], t[1:]
    total = int(token_bytes(prev, tgt, luts).sum())
    for cut in range(1, len(tgt)):
        parts = canonical_byte_count(sp, prev[:cut], tgt[:cut]) + canonical_byte_count(sp, prev[cut:], tgt[cut:])
        assert parts == total, (cut, pieces)
    assert first_byte > 0


def test_demo_tokenizer_passes_check(sp):
    info = check_tokenizer(sp)
    assert info["lut_bytes"] == info["decoded_bytes"] == info["text_bytes"] > 0


def test_check_detects_lut_disagreement(sp):
    luts = build_byte_luts(sp, 1024)
    luts.base_bytes[sp.piece_to_id("\u2581the")] += 1  # a miscounted piece
    with pytest.raises(TokenizerError, match="byte accounting disagrees"):
        check_tokenizer(sp, luts=luts, model_path="demo.model")


def test_tokenizer_without_standalone_space_piece_is_refused(tmp_path):
    import sentencepiece as spm

    # trained on space-free text: "▁" never becomes a piece and falls back to 3 bytes (issue #897)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"] * 40
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words), model_writer=model, model_type="bpe", vocab_size=300,
        character_coverage=1.0, byte_fallback=True, add_dummy_prefix=False, pad_id=0, bos_id=1,
        eos_id=2, unk_id=3, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    path = tmp_path / "nospace.model"
    path.write_bytes(model.getvalue())
    bad = load_tokenizer(path)
    assert bad.id_to_piece(bad.piece_to_id("\u2581")) != "\u2581"
    with pytest.raises(TokenizerError) as exc:
        check_tokenizer(bad)
    assert str(path) in str(exc.value) and "standalone '\u2581'" in str(exc.value) and "#897" in str(exc.value)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not found.*pgolf data demo"):
        load_tokenizer(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="could not be loaded"):
        load_tokenizer(junk)
