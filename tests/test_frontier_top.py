"""The leaderboard top (#1855) model techniques: SmearGate v3's BOS mask and document attention keep each
document blind to the one before, document attention equals running each document alone, the two-lane
parallel residual reduces to the GPT-J form when its lanes cannot diverge, the sparse attention gate."""
from __future__ import annotations

import pytest
import torch

from pgolf.trainers import attention
from pgolf.trainers.config import ModelConfig
from pgolf.trainers.model import GPT, count_parameters, is_control

BOS = 1


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0,
                rope_dims=4, ln_scale=True, skip_gates=True, xsa_last_n=3, bos_id=BOS)
    base.update(kw)
    return ModelConfig(**base)


def _perturbed(cfg: ModelConfig, seed: int = 0) -> GPT:
    """Every weight random (zero-init projections and zero gates would hide a leak)."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def _docs(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat((torch.tensor([BOS]), torch.randint(2, 64, (n - 1,), generator=g)))


TOP = dict(smear_gate="v3", doc_attention=True, attn_gate="sparse", attn_gate_window=12, attn_gate_scale=0.5,
           parallel_start=1, parallel_lanes=True)


def test_later_document_is_blind_to_the_earlier_one():
    model = _perturbed(_cfg(**TOP))
    second = _docs(7, 20)
    rows = torch.stack([torch.cat((_docs(s, 12), second)) for s in (1, 3)])
    with torch.no_grad():
        out = model.logits(rows)
    assert (out[0, :12] - out[1, :12]).abs().max() > 1e-2  # the first documents differ
    torch.testing.assert_close(out[0, 12:], out[1, 12:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["no_doc_attention", "smear_without_bos_mask"])
def test_each_guard_is_needed(which):
    """Without document attention, or with a smear that has no BOS mask (v2), the earlier document leaks."""
    kw = dict(TOP, doc_attention=False) if which == "no_doc_attention" else dict(TOP, smear_gate="v2")
    model = _perturbed(_cfg(**kw))
    second = _docs(7, 20)
    rows = torch.stack([torch.cat((_docs(s, 12), second)) for s in (1, 3)])
    with torch.no_grad():
        out = model.logits(rows)
    assert (out[0, 12:] - out[1, 12:]).abs().max() > 1e-3


def test_document_attention_equals_each_document_alone():
    """The block-diagonal causal mask (SDPA) gives the logits of running every document by itself
    (RoPE is relative, so a document's offset in the row does not matter)."""
    model = _perturbed(_cfg(**TOP), seed=3)
    lens = (9, 17, 6)
    docs = [_docs(10 + i, n) for i, n in enumerate(lens)]
    with torch.no_grad():
        packed = model.logits(torch.cat(docs)[None])[0]
        alone = torch.cat([model.logits(d[None])[0] for d in docs])
    torch.testing.assert_close(packed, alone, rtol=0, atol=2e-5)


def test_document_mask_is_block_diagonal_causal():
    ids = torch.tensor([[5, BOS, 7, 8, BOS, 9]])
    mask = attention.SDPA.documents(ids, BOS)[0, 0]
    doc = [0, 1, 1, 1, 2, 2]
    want = torch.tensor([[k <= q and doc[k] == doc[q] for k in range(6)] for q in range(6)])
    assert torch.equal(mask, want)


def test_two_lanes_reduce_to_gpt_j_when_the_lanes_cannot_diverge():
    """With every post-weight and lane residual 1 and resid_mix = (1, 0) both lanes get the same update
    l + a(norm l) + m(norm l): the GPT-J parallel block of #1493. (Lane 1 splits off before the U-Net
    skip is added to lane 0, as in #1855, so the lanes start at layer 2, after the only skip.)"""
    cfg = _cfg(parallel_start=2, parallel_lanes=True)
    lanes = _perturbed(cfg, seed=5)
    gptj = GPT(_cfg(parallel_start=2)).eval()
    with torch.no_grad():
        lanes.parallel_post_lambdas.fill_(1.0)
        lanes.parallel_resid_lambdas.fill_(1.0)
        for b in lanes.blocks[2:]:
            b.resid_mix[0].fill_(1.0)
            b.resid_mix[1].zero_()
        state = {k: v for k, v in lanes.state_dict().items() if not k.startswith("parallel_")}
        gptj.load_state_dict(state)
        ids = _docs(4, 24)[None]
        torch.testing.assert_close(lanes.logits(ids), gptj.logits(ids), rtol=0, atol=1e-5)
        lanes.parallel_post_lambdas[2, 1, 0] = 0.3  # MLP -> lane 0 now differs from MLP -> lane 1
        assert (lanes.logits(ids) - gptj.logits(ids)).abs().max() > 1e-3


def test_sparse_attention_gate_formula_and_shapes():
    cfg = _cfg(attn_gate="sparse", attn_gate_window=12, attn_gate_scale=0.5, num_layers=2, xsa_last_n=2)
    model = _perturbed(cfg, seed=2)
    attn = model.blocks[0].attn
    assert attn.attn_gate_w.shape == (4, 12) and is_control("blocks.0.attn.attn_gate_w")
    assert torch.count_nonzero(GPT(cfg).blocks[0].attn.attn_gate_w) == 0  # zeros at init: g = 1/2
    x = torch.randn(2, 10, 32)
    seen = {}
    attn.proj.register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    with torch.no_grad():
        attn(x)
        gated = seen.pop("in")
        g = torch.sigmoid(0.5 * x[..., :12] @ attn.attn_gate_w.T)  # [B, T, H]
        attn.attn_gate_w = None
        attn(x)
        plain = seen.pop("in")
    torch.testing.assert_close(gated, (plain.unflatten(-1, (4, 8)) * g[..., None]).flatten(-2), rtol=0, atol=1e-6)


def test_dense_gate_reads_the_whole_input_and_bad_values_are_errors():
    cfg = _cfg(attn_gate="dense", attn_gate_init_std=0.01)
    assert GPT(cfg).blocks[0].attn.attn_gate_w.shape == (4, 32)
    assert count_parameters(GPT(cfg)) - count_parameters(GPT(_cfg())) == 3 * 4 * 32
    with pytest.raises(ValueError, match="attn_gate"):
        GPT(_cfg(attn_gate="wide"))
    with pytest.raises(ValueError, match="parallel_lanes"):
        GPT(_cfg(parallel_lanes=True))
    lanes = GPT(_cfg(parallel_start=1, parallel_lanes=True))
    assert lanes.parallel_post_lambdas.shape == (3, 2, 2) and float(lanes.parallel_resid_lambdas.detach()[0, 0]) == pytest.approx(1.1)


# ---- LQER and the int8 gate rows ------------------------------------------------------------------


def _quant_cfg(**kw):
    from pgolf.trainers.config import QuantConfig
    base = dict(scheme="int6", embed_format="int6", mlp_format="int6", attn_format="int6", passthrough_max_numel=64)
    base.update(kw)
    return QuantConfig(**base)


def _roundtrip(state, cfg):
    from pgolf.trainers import serialize
    from pgolf.trainers.quant import dequantize_state_dict, quantize_state_dict
    q, meta = quantize_state_dict(state, cfg)
    blob = serialize.compress(serialize.pack(q, meta), "zlib", 9)
    q2, meta2 = serialize.unpack(serialize.decompress(blob))
    return dequantize_state_dict(q2, meta2), q, meta, len(blob)


def test_lqer_lowers_the_error_of_the_worst_tensors_and_ships_its_factors():
    torch.manual_seed(0)
    state = {f"blocks.{i}.mlp.fc.weight": torch.randn(64, 128) * (1 + i) for i in range(4)}
    state["blocks.0.attn.attn_gate_w"] = torch.randn(4, 12)
    plain, q0, _, bytes0 = _roundtrip(state, _quant_cfg())
    fixed, q1, meta, bytes1 = _roundtrip(state, _quant_cfg(lqer_rank=4, lqer_top_k=2))
    err = {n: float((state[n] - plain[n]).norm()) for n in state}
    err_lqer = {n: float((state[n] - fixed[n]).norm()) for n in state}
    worst = sorted((n for n in state if n.endswith("fc.weight")), key=lambda n: -err[n])[:2]
    assert [n for n in state if meta["tensors"][n].get("lqer")] == sorted(worst)
    for n in state:
        if n in worst:
            assert err_lqer[n] < err[n]
        else:
            assert err_lqer[n] == err[n]
    factors = sum(t.numel() * t.element_size() for k, t in q1.items() if ".lq" in k)
    assert set(q1) - set(q0) == {n + s for n in worst for s in (".lqA", ".lqAs", ".lqB", ".lqBs")}
    assert factors > 0 and bytes1 > bytes0  # the factors are blob tensors: counted in the artifact
    assert meta["tensors"][worst[0]]["lqer"] == "asym" and q1[worst[0] + ".lqA"].max() <= 1


def test_lqer_factor_formats_match_their_grids():
    from pgolf.trainers import lqer
    torch.manual_seed(1)
    a, b = torch.randn(64, 4), torch.randn(4, 128)
    parts, fmt = lqer.pack_factors(a, b, asym=True, group=64, bits=4)
    assert fmt == "asym" and parts[".lqA"].min() >= -2 and parts[".lqA"].max() <= 1 and parts[".lqAs"].numel() == 1
    assert parts[".lqB"].min() >= -8 and parts[".lqB"].max() <= 7 and parts[".lqBs"].numel() == 4 * 128 // 64
    parts, fmt = lqer.pack_factors(a, torch.randn(4, 100), asym=True, group=64, bits=4)  # 400 % 64 != 0
    assert fmt == "sym4" and parts[".lqA"].abs().max() <= 7 and parts[".lqAs"].shape == (64,)
    with pytest.raises(Exception, match="lqer"):
        _roundtrip({"x.mlp.fc.weight": torch.randn(8, 8)}, _quant_cfg(lqer_rank=-1))


def test_gate_int8_rows_use_the_row_max_scale():
    torch.manual_seed(2)
    w = torch.randn(8, 12)
    state = {"blocks.0.attn.attn_gate_w": w}
    out, q, meta, _ = _roundtrip(state, _quant_cfg(gate_int8_rows=True))
    assert meta["tensors"]["blocks.0.attn.attn_gate_w"]["kind"] == "gate_int8"
    scale = (w.abs().amax(1) / 127).half().float()
    assert torch.equal(q["blocks.0.attn.attn_gate_w.q"].abs().amax(1), torch.full((8,), 127, dtype=torch.int8))
    assert float((out["blocks.0.attn.attn_gate_w"] - w).abs().max()) <= float(scale.max()) / 2 + 1e-6


def test_varlen_path_builds_the_same_documents_as_the_mask():
    """The FlashAttention path (flattened batch, cu_seqlens at every BOS and row start) run through a
    stand-in varlen kernel (SDPA per segment) equals the SDPA block-diagonal mask path."""
    import torch.nn.functional as F

    def sdpa_bthd(q, k, v):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True, enable_gqa=True).transpose(1, 2)

    calls = []

    def varlen(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
        cu = cu_seqlens_q.tolist()
        calls.append((cu, max_seqlen_q))
        return torch.cat([sdpa_bthd(q[None, a:b], k[None, a:b], v[None, a:b])[0] for a, b in zip(cu[:-1], cu[1:])])

    fake = attention.AttentionBackend("fake-fa", 2, sdpa_bthd, varlen=varlen)
    model = _perturbed(_cfg(**TOP), seed=6)
    rows = torch.stack([torch.cat((_docs(1, 7), _docs(2, 9))), torch.cat((torch.tensor([9, 9, 9]), _docs(3, 13)))])
    with torch.no_grad():
        want = model.logits(rows)
        with attention.using(fake):
            got = model.logits(rows)
    assert calls and calls[0] == ([0, 7, 16, 19, 32], 13)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
