"""CaseOps (#1729): the transform is a bijection (round trip on the demo corpus, adversarial strings and
random ones), its output is lowercase ASCII, and the per-piece original byte counts add up to the
original text's UTF-8 bytes however the text is cut into pieces."""
from __future__ import annotations

import random

import pytest

from pgolf.trainers.caseops import ALLCAPS, CAPNEXT, ESC, OPERATORS, TITLE, CaseOpsError, decode, encode, original_bytes

ADVERSARIAL = [
    "", "a", "A", "AB", "Ab", "aB", "ABc", "aBC", "iPhone", "McDonald", "NASA's HTTPServer", "HELLO world Hello",
    "x1Y2z3", "ÉCOLE École école", "straße STRASSE", "İstanbul", "ǅ ǈ", "日本語 Text", "emoji 🙂 OK",
    TITLE, ALLCAPS + "abc", ESC, ESC + ESC, CAPNEXT + "A", "A" + TITLE + "b", "tab\tNew\nLine\r\n",
    "\x00NUL", "a" * 50 + "A" * 50, "camelCaseXMLParser", "ＡＢＣ fullwidth", "Ω ω",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_round_trip_on_adversarial_strings(text):
    enc = encode(text)
    assert decode(enc) == text
    assert not any("A" <= c <= "Z" for c in enc)  # the lexical stream is lowercase
    assert sum(original_bytes([enc])) == len(text.encode("utf-8"))


def test_operator_examples():
    assert encode("The NASA iPhone") == f"{TITLE}the {ALLCAPS}nasa i{CAPNEXT}phone"
    assert encode("McD") == f"{TITLE}mc{CAPNEXT}d"
    assert encode(f"a{TITLE}") == f"a{ESC}{TITLE}"


def test_round_trip_on_random_strings():
    rng = random.Random(0)
    alphabet = "aAbBzZ09 _-'é日" + "".join(OPERATORS)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        enc = encode(text)
        assert decode(enc) == text
        cuts = sorted(rng.sample(range(len(enc) + 1), min(3, len(enc) + 1)))
        pieces = [enc[a:b] for a, b in zip([0] + cuts, cuts + [len(enc)])]
        assert sum(original_bytes(pieces)) == len(text.encode("utf-8"))


@pytest.fixture(scope="module")
def demo_docs():
    from pgolf.demo_text import _collect_in_process
    return _collect_in_process()[0]


def test_round_trip_on_the_demo_corpus(demo_docs):
    docs = demo_docs
    assert len(docs) > 10
    for doc in docs:
        assert decode(encode(doc)) == doc


@pytest.mark.parametrize("bad", [ESC, ESC + "a", TITLE, TITLE + "1", ALLCAPS + "a", "a" + CAPNEXT, "Abc", "a" + TITLE + "b"])
def test_decode_rejects_strings_no_text_encodes_to(bad):
    with pytest.raises(CaseOpsError):
        decode(bad)


def test_pieces_ending_inside_an_escape_are_an_error():
    with pytest.raises(CaseOpsError, match="escape"):
        original_bytes(["ab", ESC])


@pytest.fixture(scope="module")
def caseops_sp(demo_docs):
    """A small BPE trained on CaseOps text with the operators as user-defined symbols (as #1729)."""
    import io

    import sentencepiece as spm

    docs = demo_docs
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([encode(d) for d in docs[40:200]]), model_writer=model, minloglevel=2,
        model_type="bpe", vocab_size=400, byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, user_defined_symbols=list(OPERATORS), bos_id=1, eos_id=2, unk_id=3, pad_id=0,
        hard_vocab_limit=False, num_threads=1, character_coverage=1.0)
    return spm.SentencePieceProcessor(model_proto=model.getvalue()), docs[:40]


def test_sidecar_bytes_equal_the_canonical_recount(caseops_sp):
    from pgolf.trainers.caseops import canonical_bytes, encode_with_sidecar
    sp, docs = caseops_sp
    for op in OPERATORS:
        assert sp.piece_to_id(op) > 3  # one token each, never byte-fallback
    transformed_bytes = 0
    for doc in docs + ADVERSARIAL[1:]:
        ids, sidecar = encode_with_sidecar(sp, doc)
        assert len(sidecar) == len(ids)
        assert sum(sidecar) == canonical_bytes(sp, ids) == len(doc.encode("utf-8"))
        transformed_bytes += len(sp.decode(ids).encode("utf-8"))
    original = sum(len(d.encode("utf-8")) for d in docs + ADVERSARIAL[1:])
    assert transformed_bytes > original  # counting the tokens' own bytes would score the operators too
