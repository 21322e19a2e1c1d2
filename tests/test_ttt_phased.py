"""Phased score-first TTT (#1610/#1626/#1855) on a tiny model: the verifier proves it legal in the declared
document order, a variant whose global phase trains on documents not yet scored fails it, the phase
schedule runs on exactly the scored prefix, adapters restart per batch, and with nothing learned it
scores what per-document LoRA TTT scores."""
import copy
import os

import pytest
import torch

from test_ttt import setup, synthetic_luts

from pgolf.trainers import ttt_phased
from pgolf.trainers.config import ConfigError, ModelConfig
from pgolf.trainers.model import GPT
from pgolf.trainers.ttt import document_spans, run_ttt
from pgolf.ttt_audit import verdict_for
from pgolf.trainers.ttt_trace import read_trace, verify_trace

ALL_TARGETS = ["attn.c_q", "attn.c_k", "attn.c_v", "attn", "mlp", "head"]
PHASED = dict(lora_targets=ALL_TARGETS, lora_chunk_tokens=32, lora_batch_docs=2, lora_lr=0.01, lora_beta1=0.0,
              lora_weight_decay=0.5, lora_warm_a=True, lora_alpha=16.0, phased_prefix_docs=5, phased_phases=2,
              lr=0.01, epochs=1, chunk_tokens=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(cfg, model, val):
    """run_ttt, then the platform's audit of the trace it wrote (the trainer itself does not verify)."""
    res = run_ttt(model, val, synthetic_luts(), cfg, torch.device("cpu"), 0, 1, cfg.run.run_dir, bos_id=1)
    res.info["trace_verdict"] = verdict_for(os.path.join(cfg.run.run_dir, res.info["trace"]), val, res.info["bos_id"])
    return res


def _doc_of(docs, a, b):
    """Index of the document whose targets (s, e] hold the targets of update [a, b)."""
    return next(i for i, (s, e) in enumerate(docs) if s < b - 1 <= e)


@pytest.fixture(scope="module")
def phased_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("phased")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, model, val = setup("phased", d, **PHASED)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        res = _run(cfg, model, val)
    finally:
        torch.set_num_threads(n)
    return cfg, val, before, model, res, read_trace(str(d / "ttt_trace.jsonl"))


def test_phased_is_compliant_and_scores_every_token_once(phased_run):
    cfg, val, before, model, res, events = phased_run
    v = res.info["trace_verdict"]
    assert v["compliant"], v["reasons"]
    assert res.tokens == val.numel() - 1 == v["stats"]["scored_tokens"]
    assert res.info["documents"] == len(document_spans(val, 1)) == v["stats"]["documents"] == 8
    assert res.info["updates"] > 0 and res.info["global_steps"] > 0
    # the global phases trained the base model itself (in place, like score-first TTT)
    assert not torch.equal(before["blocks.1.mlp.fc.weight"], model.state_dict()["blocks.1.mlp.fc.weight"])
    assert all(p.requires_grad for p in model.parameters())


def test_phase_schedule_trains_on_exactly_the_scored_prefix(phased_run):
    cfg, val, _, _, res, events = phased_run
    docs = document_spans(val, 1)
    queue = ttt_phased.doc_queue(docs, cfg.ttt.lora_batch_docs)
    assert res.info["boundaries"] == [2, 5] and res.info["phases_run"] == 2
    scored: set[int] = set()
    for ev in events:
        if ev["event"] == "score":
            scored |= {_doc_of(docs, a - 1, b) for _, a, b in ev["items"]}
        if ev["event"] == "update" and "phase" in ev:
            used = {_doc_of(docs, a, b) for _, a, b in ev["items"]}
            prefix = set(ttt_phased.phase_docs(queue, res.info["boundaries"][ev["phase"]]))
            assert used <= prefix <= scored  # only documents of the prefix, all of them already scored
    phases = sorted({ev["phase"] for ev in events if ev["event"] == "update" and "phase" in ev})
    assert phases == [0, 1]


def test_the_document_order_is_what_makes_it_legal(phased_run, tmp_path):
    _, val, _, _, _, events = phased_run
    starts = [a for a, _ in document_spans(val, 1)]
    assert verify_trace(events, doc_starts=starts)["compliant"]
    # read in stream order, the global phases trained on documents that come later in the stream
    stream = copy.deepcopy(events)
    del stream[0]["doc_order"]
    v = verify_trace(stream)
    assert not v["compliant"] and any("train-before-score" in r for r in v["reasons"])
    # a declared order that cuts a document in two is not a reordering of documents
    cut = copy.deepcopy(events)
    spans = cut[0]["doc_order"]
    s, e = spans[0]
    spans[0:1] = [[s, s + 5], [s + 5, e]]
    v = verify_trace(cut, doc_starts=starts)
    assert not v["compliant"] and any("document boundary" in r for r in v["reasons"])


def test_training_on_documents_not_yet_scored_fails(tmp_path, monkeypatch):
    # the illegal variant: each global phase trains on the queue's last documents, scored only later
    monkeypatch.setattr(ttt_phased, "phase_docs", lambda queue, n: [d for b in queue for d in b][-n:])
    cfg, model, val = setup("phased", tmp_path, **{**PHASED, "phased_phases": 1, "phased_prefix_docs": 3})
    v = _run(cfg, model, val).info["trace_verdict"]
    assert not v["compliant"]
    assert any("train-before-score" in r for r in v["reasons"])


def test_without_learning_it_scores_what_per_document_lora_scores(tmp_path):
    common = dict(lora_chunk_tokens=32, lora_batch_docs=3, lora_lr=0.0, lora_targets=["attn.c_q", "attn.c_v"])
    cfg, model, val = setup("lora_doc", tmp_path / "a", **common)
    ref = _run(cfg, copy.deepcopy(model), val)
    cfg, model2, _ = setup("phased", tmp_path / "b", **common, phased_prefix_docs=0)
    res = _run(cfg, model2, val)
    assert res.info["trace_verdict"]["compliant"] and res.info["global_steps"] == 0
    assert res.tokens == ref.tokens and res.bytes == ref.bytes
    assert res.val_loss == pytest.approx(ref.val_loss, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_adapters_restart_per_batch_and_cover_every_looped_call():
    cfg = ModelConfig(num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=96, num_loops=1,
                      loop_start=1, loop_end=1)
    model = GPT(cfg)
    ad = ttt_phased.Adapters(model, ["attn.c_q", "mlp", "head"], rank=4, alpha=8.0)
    assert ad.scale == 2.0
    calls = {n: k for n, k in ad.slots}
    assert {n: calls[n] + 1 for n in calls} == {f"blocks.{i}.{m}": 2 if i == 1 else 1
                                                for i in range(3) for m in ("attn.c_q", "mlp")}
    gen = torch.Generator().manual_seed(0)
    first = ad.reset(3, torch.device("cpu"), gen, warm_a=True)
    assert len(first) == 2 * (len(ad.slots) + 1)
    with torch.no_grad():
        for t in first:
            t.add_(1.0)  # as if trained
    kept = ad.reset(3, torch.device("cpu"), gen, warm_a=True)
    assert all(torch.equal(a, b) for a, b in zip(first[0::2], kept[0::2]))  # A warm (#1767)
    assert all(not b.any() for b in kept[1::2])  # B restarts at 0: each document starts from the base model
    fresh = ad.reset(3, torch.device("cpu"), gen, warm_a=False)
    assert not any(torch.equal(a, b) for a, b in zip(kept[0::2], fresh[0::2]))
    assert ad.reset(2, torch.device("cpu"), gen, warm_a=True)[0].shape[0] == 2  # smaller batch: fresh A
    x = torch.randint(2, 96, (2, 8))
    ad.enabled = True
    with torch.no_grad():
        base = ttt_phased.nll(model, ad, x, x)
        ad.params[("head", 0)][1].normal_()
        assert not torch.allclose(base, ttt_phased.nll(model, ad, x, x))
    ad.remove()


def test_doc_queue_and_boundaries_follow_the_record():
    docs = [(0, 5), (5, 7), (7, 15), (15, 18), (18, 19)]  # lengths 5, 2, 8, 3, 1
    queue = ttt_phased.doc_queue(docs, 2)
    assert queue == [[2], [3, 0], [4, 1]]  # batches of the length-sorted documents, longest batch first
    assert ttt_phased.phase_boundaries(50_000, 2500, 3) == [833, 1666, 2500]  # #1855's log
    assert ttt_phased.phase_boundaries(4, 2500, 3) == [1, 2, 4]
    assert ttt_phased.phase_docs(queue, 2) == [2, 3]


def test_phased_config_checks():
    from pgolf.trainers.config import TrainConfig
    cfg = TrainConfig()
    cfg.ttt.mode = "phased"
    cfg.ttt.phased_phases = 0
    with pytest.raises(ConfigError, match="phased_phases"):
        cfg.ttt.validate()


def _hand_trace(order, events, last):
    head = {"event": "header", "version": 1, "mode": "m", "scored": [1, 21], "last_chunk": last, "doc_order": order}
    return [head, *events, {"event": "final", "tokens": 20}]


def test_verifier_reads_score_before_update_in_the_declared_order():
    x, y = [0, 10], [10, 20]  # doc X: targets 1..10, doc Y: targets 11..20 (Y's BOS is token 10)
    # Y first: score it, train the base model on it (its BOS is an input only), then score X
    ev = [{"event": "score", "items": [["global", 11, 21]]}, {"event": "update", "items": [["global", 10, 21]]},
          {"event": "score", "items": [["global", 1, 11]]}]
    assert verify_trace(_hand_trace([y, x], ev, [1, 11]), doc_starts=[0, 10])["compliant"]
    v = verify_trace(_hand_trace([x, y], ev, [11, 21]))
    assert not v["compliant"] and any("train-before-score" in r for r in v["reasons"])
    # a state forked from several parents inherits the latest token any of them was trained on
    ev = [{"event": "fork", "parent": "global", "states": ["a"]}, {"event": "score", "items": [["a", 1, 6]]},
          {"event": "update", "items": [["a", 0, 6]]}, {"event": "score", "items": [["a", 6, 11]]},
          {"event": "fork", "parent": ["global", "a"], "states": ["b"]}, {"event": "score", "items": [["b", 11, 21]]}]
    assert verify_trace(_hand_trace([x, y], ev, [11, 21]))["compliant"]
    v = verify_trace(_hand_trace([y, x], ev, [1, 11]))  # b scores Y, which now comes before what a saw
    assert not v["compliant"] and any("state 'b'" in r for r in v["reasons"])
    v = verify_trace(_hand_trace([x, [10, 15], [15, 20]], ev, [16, 21]), doc_starts=[0, 10])
    assert not v["compliant"] and any("document boundary" in r for r in v["reasons"])
    assert not verify_trace(_hand_trace([x, [12, 20]], ev, [13, 21]))["compliant"]  # does not tile
