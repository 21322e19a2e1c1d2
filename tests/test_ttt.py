"""Test-time training: the trace verifier on a legal trace and illegal ones, and the three TTT modes
on a tiny model (score-first and per-document LoRA verify as compliant, pre-eval full TTT does not)."""
import copy
import os

import pytest
import torch

from pgolf.trainers.bpb import ByteLUTs
from pgolf.trainers.config import ConfigError, ModelConfig, TrainConfig
from pgolf.trainers.model import GPT
from pgolf.trainers.sliding import evaluate_sliding
from pgolf.trainers.ttt import document_spans, run_ttt
from pgolf.ttt_audit import verdict_for
from pgolf.trainers.ttt_trace import TraceWriter, read_trace, verify_trace

VOCAB = 96


def legal_trace(n_chunks=4, chunk=100):
    """Score chunk k, then train on it (3 epochs), except the last chunk."""
    ev = [{"event": "header", "version": 1, "mode": "x", "scored": [1, n_chunks * chunk + 1],
           "last_chunk": [(n_chunks - 1) * chunk + 1, n_chunks * chunk + 1]}]
    for k in range(n_chunks):
        ev.append({"event": "score", "items": [["global", k * chunk + 1, k * chunk + 51],
                                               ["global", k * chunk + 51, (k + 1) * chunk + 1]]})
        if k < n_chunks - 1:
            for _ in range(3):
                ev.append({"event": "update", "items": [["global", k * chunk, (k + 1) * chunk + 1]]})
    ev.append({"event": "final", "tokens": n_chunks * chunk})
    return ev


def test_verifier_accepts_the_legal_trace():
    v = verify_trace(legal_trace())
    assert v["compliant"], v["reasons"]
    assert v["stats"]["updates"] == 9 and v["stats"]["scored_tokens"] == 400


def test_verifier_rejects_train_before_score():
    ev = legal_trace()
    # swap chunk 1's score with its first update: its tokens are trained on, then scored
    i = next(i for i, e in enumerate(ev) if e["event"] == "score" and e["items"][0][1] == 101)
    ev[i], ev[i + 1] = ev[i + 1], ev[i]
    v = verify_trace(ev)
    assert not v["compliant"]
    assert any("train-before-score" in r for r in v["reasons"])


def test_verifier_rejects_double_scoring():
    ev = legal_trace()
    ev.insert(-1, {"event": "score", "items": [["global", 390, 401]]})  # rescore the tail
    v = verify_trace(ev)
    assert not v["compliant"] and any("double scoring" in r for r in v["reasons"])


def test_verifier_rejects_training_on_the_last_chunk():
    ev = legal_trace()
    ev.insert(-1, {"event": "update", "items": [["global", 300, 401]]})
    v = verify_trace(ev)
    assert not v["compliant"] and any("last chunk" in r for r in v["reasons"])


def test_verifier_rejects_missing_tokens_bad_accounting_and_no_header():
    ev = legal_trace()
    ev[1]["items"] = ev[1]["items"][1:]
    v = verify_trace(ev)
    assert not v["compliant"] and any("never scored" in r for r in v["reasons"])
    assert any("score counts" in r for r in v["reasons"])
    assert not verify_trace(legal_trace()[1:])["compliant"]


def test_verifier_per_state_lineage():
    head = {"event": "header", "version": 1, "mode": "lora", "scored": [1, 201], "last_chunk": [151, 201]}
    # doc A = tokens [1,101), doc B = [101,201), each with its own adapter state forked from the base
    ok = [head, {"event": "fork", "parent": "global", "states": ["a", "b"]},
          {"event": "score", "items": [["b", 101, 151], ["a", 1, 51]]},
          {"event": "update", "items": [["b", 100, 151], ["a", 0, 51]]},
          {"event": "score", "items": [["b", 151, 201], ["a", 51, 101]]},
          {"event": "final", "tokens": 200}]
    assert verify_trace(ok)["compliant"]
    # state b was trained on tokens up to 150, then scores doc A's earlier tokens: future information
    bad = copy.deepcopy(ok)
    bad[4]["items"] = [["b", 151, 201], ["b", 51, 101]]
    v = verify_trace(bad)
    assert not v["compliant"] and any("train-before-score" in r for r in v["reasons"])


def test_trace_writer_round_trip(tmp_path):
    w = TraceWriter(str(tmp_path / "t.jsonl"))
    w.header("m", (1, 11), (6, 11))
    w.score([("global", 1, 6)])
    w.update([("global", 0, 6), ("global", 3, 3)])  # empty ranges are dropped
    w.score([("global", 6, 11)])
    w.final(10)
    w.close()
    events = read_trace(str(tmp_path / "t.jsonl"))
    assert events[2]["items"] == [["global", 0, 6]]
    assert verify_trace(str(tmp_path / "t.jsonl"))["compliant"]
    assert not TraceWriter(str(tmp_path / "u.jsonl"), enabled=False).enabled


# ---- the modes on a tiny model ------------------------------------------------------------------

def synthetic_luts():
    g = torch.Generator().manual_seed(0)
    boundary = torch.zeros(VOCAB, dtype=torch.bool)
    boundary[:2] = True
    return ByteLUTs(base_bytes=torch.randint(1, 5, (VOCAB,), generator=g).to(torch.int16) * (~boundary),
                    has_leading_space=torch.rand(VOCAB, generator=g) < 0.3, is_boundary=boundary)


def setup(mode, tmp_path, **ttt):
    cfg = TrainConfig()
    cfg.model = ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=VOCAB)
    cfg.data.train_seq_len = 32
    cfg.data.variant = "custom"  # a synthetic vocab
    cfg.eval.sliding_stride = 16
    cfg.eval.sliding_batch_seqs = 8
    cfg.ttt.mode = mode
    cfg.ttt.chunk_tokens = 128
    cfg.ttt.batch_seqs = 2
    cfg.ttt.lr = 0.05
    cfg.ttt.lora_chunk_tokens = 16
    cfg.ttt.lora_batch_docs = 4
    for k, v in ttt.items():
        setattr(cfg.ttt, k, v)
    cfg.run.run_dir = str(tmp_path)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    val = torch.randint(2, VOCAB, (700,), generator=g)
    val[::97] = 1  # BOS: documents for lora_doc
    return cfg, model, val


def _run(cfg, model, val):
    """run_ttt, then the platform's audit of the trace it wrote (the trainer itself does not verify)."""
    res = run_ttt(model, val, synthetic_luts(), cfg, torch.device("cpu"), 0, 1, cfg.run.run_dir, bos_id=1)
    res.info["trace_verdict"] = verdict_for(os.path.join(cfg.run.run_dir, res.info["trace"]), val, res.info["bos_id"])
    return res


def test_score_first_is_compliant_and_adapts(tmp_path):
    cfg, model, val = setup("score_first", tmp_path, freeze_blocks=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = evaluate_sliding(copy.deepcopy(model), val, synthetic_luts(), seq_len=32, stride=16, batch_seqs=8,
                            device=torch.device("cpu"))
    res = _run(cfg, model, val)
    v = res.info["trace_verdict"]
    assert v["compliant"], v["reasons"]
    assert res.tokens == val.numel() - 1 == v["stats"]["scored_tokens"]
    n_chunks = res.info["chunks"]
    assert n_chunks == 6 and v["stats"]["scores"] == n_chunks
    assert v["stats"]["updates"] == (n_chunks - 1) * cfg.ttt.epochs * 2  # 4 seqs per chunk, 2 per step
    assert res.val_loss != base.val_loss and res.bytes == base.bytes
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("blocks.0."))  # frozen
    assert not torch.equal(before["blocks.1.mlp.fc.weight"], after["blocks.1.mlp.fc.weight"])
    events = read_trace(str(tmp_path / "ttt_trace.jsonl"))
    last_a = events[0]["last_chunk"][0]
    assert all(it[2] <= last_a for e in events if e["event"] == "update" for it in e["items"])


def test_score_first_without_training_equals_the_sliding_eval(tmp_path):
    cfg, model, val = setup("score_first", tmp_path, epochs=0)
    base = evaluate_sliding(model, val, synthetic_luts(), seq_len=32, stride=16, batch_seqs=8, device=torch.device("cpu"))
    res = _run(cfg, model, val)
    assert res.tokens == base.tokens and res.bytes == base.bytes
    assert res.val_loss == pytest.approx(base.val_loss, rel=1e-6)


def test_pre_eval_full_is_flagged_by_its_trace(tmp_path):
    cfg, model, val = setup("pre_eval_full", tmp_path, epochs=2, lr_schedule="constant", rank0_only=True)
    res = _run(cfg, model, val)
    v = res.info["trace_verdict"]
    assert not v["compliant"]
    assert any("train-before-score" in r for r in v["reasons"])
    assert any("last chunk" in r for r in v["reasons"])
    assert res.tokens == val.numel() - 1


def test_lora_doc_is_compliant_and_leaves_the_base_model_alone(tmp_path):
    cfg, model, val = setup("lora_doc", tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = _run(cfg, model, val)
    v = res.info["trace_verdict"]
    assert v["compliant"], v["reasons"]
    assert res.tokens == val.numel() - 1 and res.info["updates"] > 0
    assert res.info["documents"] == len(document_spans(val, 1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_document_spans_cover_the_stream():
    val = torch.tensor([5, 1, 7, 7, 1, 9, 9, 9, 1, 4])
    spans = document_spans(val, 1)
    assert spans == [(0, 1), (1, 4), (4, 8), (8, 9)]


def test_ttt_config_checks():
    cfg = TrainConfig()
    cfg.ttt.mode = "nope"
    with pytest.raises(ConfigError, match="ttt.mode"):
        cfg.validate()
    cfg.ttt.mode = "score_first"
    cfg.ttt.chunk_tokens = 100
    with pytest.raises(ConfigError, match="chunk_tokens"):
        cfg.validate()
    cfg.ttt.mode, cfg.ttt.fake_quant = "off", True
    with pytest.raises(ConfigError, match="fake_quant"):
        cfg.validate()


def test_training_after_inference_mode_scoring_and_loading(tmp_path):
    """A model built (or scored) under inference mode still trains: caches are rebuilt and inference
    parameters cloned before the optimizer exists (#317 / #691 needed this by hand)."""
    cfg, model, val = setup("score_first", tmp_path)
    state = model.state_dict()
    with torch.inference_mode():
        frozen = GPT(cfg.model)
        frozen.load_state_dict(state)
        frozen(val[None, :32], val[None, 1:33])  # RoPE tables cached as inference tensors
    assert any(p.is_inference() for p in frozen.parameters())
    res = _run(cfg, frozen, val)
    assert res.info["trace_verdict"]["compliant"] and res.info["updates"] > 0
    assert not any(p.is_inference() for p in frozen.parameters())


def test_freeze_blocks_sees_through_compiled_wrapper():
    """torch.compile wraps the model as `_orig_mod`; names get that prefix and freezing must still apply."""
    from torch import nn

    from pgolf.trainers.config import ModelConfig
    from pgolf.trainers.model import GPT
    from pgolf.trainers.ttt import set_trainable

    class Wrapper(nn.Module):  # the same naming a compiled OptimizedModule produces
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    model = GPT(ModelConfig(num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2))
    set_trainable(Wrapper(model), freeze_blocks=2)
    assert not any(p.requires_grad for p in model.blocks[1].parameters())
    assert all(p.requires_grad for p in model.blocks[2].parameters())


# ---- TTT under int6 fake quant (#691) ---------------------------------------------------------------

def _record_fake_quant(w: torch.Tensor) -> torch.Tensor:
    """#691's CastedLinear in train mode with its QAT flag on: per row s = max(max|w| / 31, 1/31) (fp32),
    w_q = clamp(round(w / s), -32, 31) * s, and the forward uses w + (w_q - w)."""
    s = torch.clamp(w.abs().amax(dim=1) / 31.0, min=1.0 / 31.0)
    w_q = torch.clamp(torch.round(w / s[:, None]), -32, 31) * s[:, None]
    return w + (w_q - w)


def test_ttt_fake_quant_forward_is_the_record_fake_quant_forward(tmp_path):
    from pgolf.trainers.layers import CastedLinear
    from pgolf.trainers.ttt import arm_fake_quant
    cfg, model, _ = setup("score_first", tmp_path, fake_quant=True)
    with torch.no_grad():  # rows with max |w| above 1 as well as below, so the 1/31 floor matters in some
        model.blocks[0].mlp.fc.weight[:5].mul_(40.0)
    plain = copy.deepcopy(model)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, CastedLinear):
                m.weight.copy_(_record_fake_quant(m.weight))
    n_linear = sum(isinstance(m, CastedLinear) for m in model.modules())
    assert arm_fake_quant(model, cfg) == n_linear > 0
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, VOCAB, (2, 32), generator=g)
    y = torch.randint(0, VOCAB, (2, 32), generator=g)
    for m in (model, ref, plain):
        m.train()
    loss, loss_ref = model(x, y), ref(x, y)
    assert torch.equal(loss, loss_ref) and not torch.equal(loss, plain(x, y))
    loss.backward()
    loss_ref.backward()  # straight-through: the gradient is the one taken at the fake-quantized weights
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, p_ref.grad, rtol=1e-5, atol=1e-7), name
    model.eval()
    plain.eval()
    with torch.no_grad():  # scoring runs in eval mode: unquantized, as in the record
        assert torch.equal(model(x, y), plain(x, y))
    cfg.ttt.fake_quant = False
    assert arm_fake_quant(copy.deepcopy(plain), cfg) == 0


def test_score_first_trains_under_fake_quant_when_asked(tmp_path):
    from pgolf.trainers import qat
    cfg, model, val = setup("score_first", tmp_path / "fq", fake_quant=True, epochs=1)
    cfg_off, model_off, _ = setup("score_first", tmp_path / "plain", epochs=1)
    val = val[:260]  # 3 chunks: two trained on
    res, res_off = _run(cfg, model, val), _run(cfg_off, model_off, val)
    assert qat.is_enabled(model) and not qat.is_enabled(model_off)
    assert res.info["trace_verdict"]["compliant"]
    assert res.val_loss != res_off.val_loss  # the first chunk scores the same weights, later chunks differ


def test_the_platform_judges_the_trace_after_the_run(tmp_path, monkeypatch):
    """The trainer only writes the trace; audit_ttt judges it against the validation tokens it loads
    itself, records the verdict and its time in result.json, and an unloadable split is a verdict of
    not compliant, never a missing one."""
    import json

    from pgolf import ttt_audit

    cfg, model, val = setup("score_first", tmp_path, epochs=1)
    res = run_ttt(model, val, synthetic_luts(), cfg, torch.device("cpu"), 0, 1, cfg.run.run_dir, bos_id=1)
    assert "trace_verdict" not in res.info
    result = {"status": "ok", "ttt": dict(res.info), "phases": {"ttt": 1.0}}
    path = os.path.join(cfg.run.run_dir, "result.json")
    with open(path, "w") as fh:
        json.dump(result, fh)
    monkeypatch.setattr(ttt_audit, "_val_tokens", lambda c: val)
    out = ttt_audit.audit_ttt(result, cfg.run.run_dir, cfg)
    on_disk = json.load(open(path))
    assert out["ttt"]["trace_verdict"]["compliant"] and on_disk["ttt"]["trace_verdict"]["compliant"]
    assert on_disk["time/ttt_verify_s"] >= 0 and "ttt_verify" in on_disk["phases"]
    assert ttt_audit.verdict_line(out) == "ttt trace verdict: compliant"
    # a trace whose last score event was dropped leaves tokens unscored: judged, not trusted
    trace = os.path.join(cfg.run.run_dir, res.info["trace"])
    lines = open(trace).read().splitlines()
    last_score = max(i for i, line in enumerate(lines) if '"event":"score"' in line)
    open(trace, "w").write("\n".join(lines[:last_score] + lines[last_score + 1:]) + "\n")
    tampered = {"status": "ok", "ttt": dict(res.info)}
    assert not ttt_audit.audit_ttt(tampered, cfg.run.run_dir, cfg)["ttt"]["trace_verdict"]["compliant"]

    def no_split(c):
        raise FileNotFoundError("no val shards under /nowhere")
    monkeypatch.setattr(ttt_audit, "_val_tokens", no_split)
    lost = ttt_audit.audit_ttt({"status": "ok", "ttt": dict(res.info)}, cfg.run.run_dir, cfg)["ttt"]["trace_verdict"]
    assert not lost["compliant"] and "/nowhere" in lost["reasons"][0]
    assert ttt_audit.audit_ttt({"status": "ok", "ttt": {"mode": "off"}}, cfg.run.run_dir, cfg) == \
        {"status": "ok", "ttt": {"mode": "off"}}
