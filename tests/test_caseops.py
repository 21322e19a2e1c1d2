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


def test_round_trip_on_the_demo_corpus():
    from pgolf.demo_text import _collect_in_process
    docs = _collect_in_process()[0]
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
