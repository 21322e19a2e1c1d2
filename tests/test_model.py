"""Defining properties of every architectural technique of the seed stacks (techniques.md §3.1-§3.14,
§3.28), on tiny CPU models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.trainers.config import ModelConfig
from pgolf.trainers.layers import (Rotary, SmearGate, apply_rotary, bigram_index_v1,
                                   bigram_index_v2, exclusive_self_attention, ntk_base, rms_norm)
from pgolf.trainers.model import GPT, MLP, Block, CausalSelfAttention, count_parameters, is_control
from pgolf.trainers.optim import split_params


def tiny(**kw) -> ModelConfig:
    base = dict(num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2, vocab_size=256)
    base.update(kw)
    return ModelConfig(**base)


def ids(b=2, t=16, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


# ---- baseline ----------------------------------------------------------------------------------


def test_baseline_param_count_unchanged():
    with torch.device("meta"):
        model = GPT(ModelConfig())
    assert count_parameters(model) == 17_059_912
    assert model.bigram is None and model.smear is None and model.ve is None and model.backout_lambda is None
    assert model.skip_gates is None


def test_seed_stack_shapes_count_exactly():
    """Every parameter the records count: bigram table/proj/scale, smear gate, VE table/proj/scales."""
    common = dict(num_layers=11, mlp_mult=3.0, smear_gate="v2", bigram_hash="v2", bigram_buckets=2048, ortho_init=True)
    with torch.device("meta"):
        assert count_parameters(GPT(ModelConfig(**common))) == 26_829_913  # #287 / #317
        assert count_parameters(GPT(ModelConfig(**common, ve_dim=128, ve_layers=[9, 10]))) == 26_993_756  # #414 / #691
        pr180 = dict(common, num_layers=10, bigram_buckets=10240)
        assert count_parameters(GPT(ModelConfig(**pr180))) == 25_517_137
        assert count_parameters(GPT(ModelConfig(**pr180, backout=True))) == 25_517_138  # #366: + lambda


# ---- shape / activation / skips / softcap / q-gain -----------------------------------------------


def test_mlp_3x_hidden_and_leaky_relu_squared():
    mlp = MLP(tiny(mlp_mult=3.0, activation="leaky_relu2", leaky_slope=0.5))
    assert mlp.fc.weight.shape == (384, 128)
    with torch.no_grad():
        mlp.fc.weight.normal_()
        mlp.proj.weight.zero_()
        mlp.proj.weight[0] = 1.0  # output 0 = sum of the activations
    x = torch.randn(3, 128)
    pre = x @ mlp.fc.weight.T
    act = torch.where(pre > 0, pre**2, 0.25 * pre**2)  # h^2 above zero, (0.5 h)^2 below
    assert torch.allclose(mlp(x)[:, 0], act.sum(-1), rtol=1e-5)
    relu_mlp = MLP(tiny(mlp_mult=3.0))
    relu_mlp.load_state_dict(mlp.state_dict())
    assert torch.allclose(relu_mlp(x)[:, 0], torch.relu(pre).square().sum(-1), rtol=1e-5)


def test_unet_skip_counts_and_sigmoid_gates():
    model = GPT(tiny(num_layers=11, skip_gates=True))
    assert (model.num_encoder_layers, model.num_decoder_layers) == (5, 6)
    assert model.skip_weights.shape == (5, 128) and model.skip_gates.shape == (5, 128)
    assert torch.all(model.skip_gates == 0)  # sigmoid(0) = 0.5: an even blend at init
    # Gate -> +inf keeps x (lerp weight 1) and ignores the skip: same as an ungated model with zero skips.
    torch.manual_seed(0)
    gated = GPT(tiny(skip_gates=True))
    plain = GPT(tiny())
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "skip_gates"})
    with torch.no_grad():
        for blk in list(gated.blocks) + list(plain.blocks):
            blk.attn.proj.weight.normal_(0, 0.05)
            blk.mlp.proj.weight.normal_(0, 0.05)
        plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "skip_gates"})
        gated.skip_gates.fill_(50.0)
        plain.skip_weights.zero_()
    x = ids()
    assert torch.allclose(gated.hidden(x), plain.hidden(x), atol=1e-5)
    with torch.no_grad():
        gated.skip_gates.zero_()
    assert not torch.allclose(gated.hidden(x), plain.hidden(x), atol=1e-3)


def test_logit_softcap_bounds_logits():
    model = GPT(tiny(logit_softcap=30.0))
    with torch.no_grad():
        model.tok_emb.weight.normal_(0, 50.0)
    z = model.logits(ids())
    assert z.abs().max() <= 30.0
    h = model.hidden(ids())
    raw = F.linear(h, model.tok_emb.weight).float()
    assert torch.allclose(z, 30.0 * torch.tanh(raw / 30.0), atol=1e-4)


def test_q_gain_init():
    model = GPT(tiny(qk_gain_init=1.5))
    for blk in model.blocks:
        assert blk.attn.q_gain.shape == (4,) and torch.all(blk.attn.q_gain == 1.5)
        assert is_control("blocks.0.attn.q_gain")


# ---- RoPE -------------------------------------------------------------------------------------


def test_ntk_rope_base():
    assert ntk_base(10000.0, 64, 1024, 1024) == 10000.0  # not above the reference length
    assert ntk_base(10000.0, 64, 2048, 0) == 10000.0  # off
    assert ntk_base(10000.0, 64, 2048, 1024) == pytest.approx(10000.0 * 2 ** (64 / 62))
    assert round(ntk_base(10000.0, 64, 2048, 1024), -2) == 20500  # "~20.4k for D_r = 64" (20,452)
    assert round(ntk_base(10000.0, 16, 2048, 1024), -2) == 22100  # "~22.1k for D_r = 16"
    rot = Rotary(16, 10000.0, ntk_ref_len=1024)
    expected = 1.0 / (ntk_base(10000.0, 16, 2048, 1024) ** (torch.arange(0, 16, 2).float() / 16))
    assert torch.allclose(rot.inv_freq(2048, torch.device("cpu")), expected)
    assert torch.allclose(rot.inv_freq(512, torch.device("cpu")),
                          1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16)))


def test_partial_rope_leaves_last_48_dims_unchanged():
    rot = Rotary(16, 10000.0)
    cos, sin = rot(32, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 4, 32, 64)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., 16:], x[..., 16:])
    assert not torch.allclose(y[..., :16], x[..., :16])
    # Rotation within the 16 dims: pair (j, j+8) keeps its norm.
    assert torch.allclose(y[..., :8] ** 2 + y[..., 8:16] ** 2, x[..., :8] ** 2 + x[..., 8:16] ** 2, atol=1e-5)
    full = Rotary(16, 10000.0)(32, torch.device("cpu"), torch.float32)
    assert torch.allclose(apply_rotary(x[..., :16], *full), y[..., :16])
    attn = CausalSelfAttention(tiny(rope_dims=16, model_dim=256), 0)
    assert attn.rotary.dim == 16 and attn.head_dim == 64


# ---- LN scale ----------------------------------------------------------------------------------


def test_ln_scale_values():
    x = torch.randn(2, 5, 128)
    for layer in range(4):
        blk = Block(tiny(ln_scale=True), layer)
        assert blk.ln_scale == pytest.approx(1 / math.sqrt(layer + 1))
        assert torch.allclose(blk.norm(x), rms_norm(x) / math.sqrt(layer + 1))
    assert Block(tiny(), 3).ln_scale == 1.0


# ---- SmearGate ---------------------------------------------------------------------------------


def test_smeargate_v1_v2_blend():
    x = torch.randn(2, 6, 128)
    tok = ids(t=6)
    prev = torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)
    v1 = SmearGate("v1", 128)
    g1 = torch.sigmoid(torch.tensor(3.0))
    assert torch.all(v1.gate == 3.0)
    assert torch.allclose(v1(x, tok), g1 * x + (1 - g1) * prev, atol=1e-6)
    v2 = SmearGate("v2", 128)
    assert torch.all(v2.gate == 0.0)
    assert torch.allclose(v2(x, tok), 0.5 * x + 0.5 * prev, atol=1e-6)
    assert torch.allclose(v2(x, tok)[:, 0], 0.5 * x[:, 0])  # x_{-1} = 0


def test_smeargate_v3_identity_at_init_and_bos_mask():
    x = torch.randn(2, 8, 128)
    tok = torch.tensor([[5, 6, 1, 7, 8, 1, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8]])
    v3 = SmearGate("v3", 128, window=12, bos_id=1)
    assert v3.weight.shape == (12,) and v3.lam.item() == 0.0
    assert torch.equal(v3(x, tok), x)  # identity at init
    with torch.no_grad():
        v3.lam.fill_(0.7)
        v3.weight.normal_()
    y = v3(x, tok)
    bos = tok == 1
    assert torch.equal(y[bos], x[bos])  # BOS never receives the previous document's last token
    assert torch.equal(y[:, 0], x[:, 0])
    g = torch.sigmoid(x[..., :12] @ v3.weight)[..., None]
    expect = x + 0.7 * g * torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), 1)
    assert torch.allclose(y[~bos], expect[~bos], atol=1e-6)


def test_smeargate_placement_relative_to_norm():
    tok = ids()
    for version in ("v1", "v2", "v3"):
        model = GPT(tiny(smear_gate=version))
        e = model.tok_emb(tok)
        if version == "v2":
            want = model.smear(rms_norm(e), tok)
        else:
            want = rms_norm(model.smear(e, tok))
        assert torch.allclose(model.embed(tok), want, atol=1e-6), version
        assert is_control(f"smear.{'weight' if version == 'v3' else 'gate'}")


# ---- BigramHash --------------------------------------------------------------------------------


def test_bigram_v2_index_formula_and_reserved_bucket():
    tok = torch.tensor([[5, 7, 9, 1023], [0, 0, 3, 2]])
    idx = bigram_index_v2(tok, 2048)
    assert idx[0, 0] == 2047 and idx[1, 0] == 2047  # position 0: the reserved "no previous" bucket
    assert idx[0, 1] == ((36313 * 7) ^ (27191 * 5)) % 2047
    assert idx[0, 3] == ((36313 * 1023) ^ (27191 * 9)) % 2047
    big = bigram_index_v2(torch.randint(0, 1024, (8, 512)), 2048)
    assert big[:, 1:].max() < 2047 and big[:, 1:].min() >= 0  # t >= 1 never lands in the reserved bucket


def test_bigram_v1_index_formula():
    tok = torch.tensor([[5, 7, 9]])
    idx = bigram_index_v1(tok, 4096)
    assert idx.tolist() == [[5 % 4096, (5 * 92821 + 7) % 4096, (7 * 92821 + 9) % 4096]]


def test_bigram_v2_init_scale_and_groups():
    model = GPT(tiny(bigram_hash="v2", bigram_buckets=512, bigram_dim=64, ortho_init=True))
    b = model.bigram
    assert b.table.weight.shape == (512, 64) and torch.all(b.table.weight == 0)
    assert b.scale.item() == pytest.approx(0.05)
    assert torch.all(b(ids()) == 0)  # zero table -> zero contribution at init
    groups = split_params(model)
    names = {g: [n for n, _ in getattr(groups, g)] for g in ("matrix", "token", "scalar")}
    assert "bigram.table.weight" in names["token"]
    assert "bigram.proj.weight" in names["matrix"]
    assert "bigram.scale" in names["scalar"]
    v1 = GPT(tiny(bigram_hash="v1", bigram_buckets=512)).bigram
    assert v1.scale is None and torch.all(v1.proj.weight == 0) and v1.table.weight.std() > 0


# ---- value embeddings --------------------------------------------------------------------------


def test_value_embeddings_layers_scales_and_groups():
    model = GPT(tiny(ve_dim=64, ve_layers=[2, 3]))
    ve = model.ve
    assert ve.table.weight.shape == (256, 64) and ve.proj.weight.shape == (64, 64)  # kv_dim = 2 heads x 32
    assert ve.scale.item() == pytest.approx(0.1) and torch.equal(ve.layer_scales, torch.ones(2))
    base = torch.randn(2, 5, 64)
    assert ve.for_layer(base, 0) is None and ve.for_layer(base, 1) is None
    with torch.no_grad():
        ve.layer_scales.copy_(torch.tensor([2.0, 3.0]))
    assert torch.allclose(ve.for_layer(base, 3), base * 0.1 * 3.0)
    groups = split_params(model)
    assert "ve.table.weight" in [n for n, _ in groups.token]
    assert "ve.proj.weight" in [n for n, _ in groups.matrix]
    assert {"ve.scale", "ve.layer_scales"} <= {n for n, _ in groups.scalar}
    # Zero VE scales -> exactly the model without VE.
    torch.manual_seed(1)
    with torch.no_grad():
        ve.proj.weight.normal_()
        for blk in model.blocks:
            blk.attn.proj.weight.normal_(0, 0.05)
    x = ids()
    out = model.hidden(x)
    with torch.no_grad():
        ve.layer_scales.zero_()
    assert not torch.allclose(model.hidden(x), out, atol=1e-4)
    ref = GPT(tiny())
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("ve.")})
    assert torch.allclose(model.hidden(x), ref.hidden(x), atol=1e-6)


# ---- OrthoInit ---------------------------------------------------------------------------------


def test_orthoinit_as_the_records_apply_it():
    L = 4
    model = GPT(tiny(ortho_init=True, bigram_hash="v2", bigram_buckets=256, bigram_dim=64, ve_dim=64, ve_layers=[3]))
    eye = torch.eye(128)
    for blk in model.blocks:
        assert torch.all(blk.attn.proj.weight == 0) and torch.all(blk.mlp.proj.weight == 0)  # flagged: stay zero
        wq = blk.attn.c_q.weight
        assert torch.allclose(wq @ wq.T, eye, atol=1e-5)
        wk = blk.attn.c_k.weight  # 64 x 128: orthonormal rows
        assert torch.allclose(wk @ wk.T, torch.eye(64), atol=1e-5)
        wf = blk.mlp.fc.weight  # 384 x 128: orthonormal columns
        assert torch.allclose(wf.T @ wf, eye, atol=1e-5)
    factor = 1 / math.sqrt(2 * L)
    for proj in (model.bigram.proj.weight, model.ve.proj.weight):  # unflagged `.proj`: orthogonal x 1/sqrt(2L)
        s = torch.linalg.svdvals(proj)
        assert torch.allclose(s, torch.full_like(s, factor), atol=1e-5)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.005, rel=0.1)
    no_scale = GPT(tiny(ortho_init=True, ortho_proj_scale=False, bigram_hash="v2", bigram_buckets=256, bigram_dim=64))
    s = torch.linalg.svdvals(no_scale.bigram.proj.weight)
    assert torch.allclose(s, torch.ones_like(s), atol=1e-5)
    plain = GPT(tiny(bigram_hash="v2", bigram_buckets=256, bigram_dim=64))
    assert torch.all(plain.bigram.proj.weight == 0)  # without OrthoInit the projection keeps its zero init


# ---- XSA ---------------------------------------------------------------------------------------


def test_xsa_output_orthogonal_to_own_value_gqa_form():
    y = torch.randn(2, 8, 10, 16)
    v = torch.randn(2, 4, 10, 16)
    out = exclusive_self_attention(y, v)
    v_rep = v.repeat_interleave(2, dim=1)  # query head h uses KV head h // 2
    vn = F.normalize(v_rep, dim=-1)
    assert (out * vn).sum(-1).abs().max() < 1e-5
    assert torch.allclose(out, y - (y * vn).sum(-1, keepdim=True) * vn, atol=1e-6)


def test_xsa_inside_attention_last_n_layers():
    cfg = tiny(num_layers=4, xsa_last_n=2)
    assert [CausalSelfAttention(cfg, i).xsa for i in range(4)] == [False, False, True, True]
    torch.manual_seed(0)
    attn = CausalSelfAttention(cfg, 3)
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(128))
    x = torch.randn(2, 12, 128)
    y = attn(x).reshape(2, 12, 4, 32)  # [B, T, H, D] after the identity projection
    v = attn.c_v(x).reshape(2, 12, 2, 32).repeat_interleave(2, dim=2)
    assert (y * F.normalize(v, dim=-1)).sum(-1).abs().max() < 1e-4
    ref = CausalSelfAttention(tiny(num_layers=4), 3)
    ref.load_state_dict(attn.state_dict())
    assert (ref(x).reshape(2, 12, 4, 32) * F.normalize(v, dim=-1)).sum(-1).abs().max() > 1e-2


# ---- Backout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [-1, 1])
def test_backout_subtracts_lambda_times_mid_layer(layer):
    torch.manual_seed(0)
    model = GPT(tiny(num_layers=4, backout=True, backout_layer=layer))
    mid = 4 // 2 if layer < 0 else layer
    assert model.backout_layer == mid and model.backout_lambda.item() == pytest.approx(0.2)
    assert is_control("backout_lambda")
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.proj.weight.normal_(0, 0.05)
            blk.mlp.proj.weight.normal_(0, 0.05)
    outs = {}
    hooks = [blk.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i, blk in enumerate(model.blocks)]
    x = ids()
    h = model.hidden(x)
    for hk in hooks:
        hk.remove()
    assert torch.allclose(h, rms_norm(outs[3] - 0.2 * outs[mid]), atol=1e-6)
    assert not torch.allclose(h, rms_norm(outs[3]), atol=1e-4)


def test_bad_model_fields_are_rejected():
    for kw in (dict(activation="gelu"), dict(smear_gate="v4"), dict(bigram_hash="v3"), dict(rope_dims=7),
               dict(xsa_last_n=9), dict(ve_dim=64, ve_layers=[4]), dict(ve_dim=64)):
        with pytest.raises(ValueError):
            GPT(tiny(**kw))
