"""Attention backend selection (trainers/attention.py) and its plumbing through the model.

Only SDPA runs on this CPU, so the flash paths are exercised with fake `flash_attn_func` modules that
take FlashAttention's (B, T, H, D) layout with fewer KV heads and compute SDPA underneath: a layout or
GQA mistake in the model shows up as different logits. Real kernels are compared in test_gpu.py."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from pgolf.trainers import attention
from pgolf.trainers.attention import AttentionBackendError, resolve
from pgolf.trainers.config import ConfigError, ModelConfig, TrainConfig
from pgolf.trainers.layers import exclusive_self_attention
from pgolf.trainers.model import GPT

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only ever passed to resolve(); device_capability is faked


def fake_flash_module(calls: list, returns_tuple: bool = False, version: str = "0.0-fake"):
    mod = types.ModuleType("fake_flash")

    def flash_attn_func(q, k, v, causal=False, softmax_scale=None):
        b, t, h, d = q.shape
        hkv = k.size(2)
        assert causal, "the model's attention is causal"
        assert k.shape == v.shape == (b, t, hkv, d), (q.shape, k.shape, v.shape)
        assert h % hkv == 0
        calls.append((tuple(q.shape), tuple(k.shape)))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           enable_gqa=h != hkv).transpose(1, 2).contiguous()
        return (y, torch.zeros(b, h, t)) if returns_tuple else y

    mod.flash_attn_func = flash_attn_func
    mod.__version__ = version
    return mod


@pytest.fixture
def fakes(monkeypatch):
    """Install fake flash modules on a pretend Hopper; returns the call logs."""
    calls = {"fa3": [], "fa2": []}
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake_flash_module(calls["fa3"], returns_tuple=True))
    monkeypatch.setitem(sys.modules, "flash_attn", fake_flash_module(calls["fa2"]))
    monkeypatch.setattr(attention, "device_capability", lambda device: (9, 0))
    return calls


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = attention.active()
    yield
    attention.set_active(previous)


# ---- selection ---------------------------------------------------------------------------------


def test_cpu_auto_is_sdpa_and_explicit_flash_is_an_error():
    b = resolve("auto", CPU, torch.float32)
    assert b.name == "sdpa" and b.heads_dim == 1
    assert any("fa3 needs a CUDA device" in n for n in b.notes)
    assert "fa2 needs a CUDA device" in b.describe()
    assert resolve("sdpa", CPU).name == "sdpa"
    for name in ("fa3", "fa2"):
        with pytest.raises(AttentionBackendError, match=f"'{name}' cannot run here: {name} needs a CUDA device"):
            resolve(name, CPU)
    with pytest.raises(AttentionBackendError, match="must be one of auto, fa3, fa2, sdpa"):
        resolve("flex", CPU)


def test_auto_order_fa3_then_fa2_then_sdpa(fakes, monkeypatch):
    b = resolve("auto", CUDA)
    assert (b.name, b.heads_dim, b.version, b.notes) == ("fa3", 2, "flash_attn_interface 0.0-fake", ())
    monkeypatch.setattr(attention, "device_capability", lambda device: (8, 0))  # Ampere: FA3 kernels are Hopper-only
    b = resolve("auto", CUDA)
    assert b.name == "fa2" and "fa3 needs compute capability 9.x, device has 8.0" in b.describe()
    monkeypatch.setattr(attention, "device_capability", lambda device: (7, 5))
    assert resolve("auto", CUDA).name == "sdpa"
    with pytest.raises(AttentionBackendError, match="fa2 needs compute capability 8.x"):
        resolve("fa2", CUDA)


def test_missing_or_broken_modules(fakes, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # import raises ImportError
    b = resolve("auto", CUDA)
    assert b.name == "fa2" and "cannot import flash_attn_interface" in b.notes[0]
    with pytest.raises(AttentionBackendError, match="cannot import flash_attn_interface.flash_attn_func"):
        resolve("fa3", CUDA)
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))  # no flash_attn_func
    assert resolve("auto", CUDA).name == "sdpa"
    with pytest.raises(AttentionBackendError, match="fa2"):
        resolve("fa2", CUDA)


def test_dtype_and_head_dim_limits(fakes):
    assert resolve("auto", CUDA, torch.float32).name == "sdpa"
    with pytest.raises(AttentionBackendError, match="bf16/fp16"):
        resolve("fa3", CUDA, torch.float32)
    with pytest.raises(AttentionBackendError, match="head_dim"):
        resolve("fa2", CUDA, head_dim=36)


def test_configure_and_using_set_the_active_backend(fakes):
    assert attention.configure("fa2", CUDA).name == "fa2"
    assert attention.active().name == "fa2"
    with attention.using(attention.SDPA):
        assert attention.active() is attention.SDPA
    assert attention.active().name == "fa2"


def test_trainer_rejects_an_unavailable_explicit_backend():
    from pgolf.trainers.train import run_training

    cfg = TrainConfig()
    cfg.run.device, cfg.run.attention_backend = "cpu", "fa3"
    with pytest.raises(ConfigError, match="run.attention_backend = 'fa3' cannot run here"):
        run_training(cfg)  # fails before touching any data
    cfg.run.attention_backend = "flash"
    with pytest.raises(ConfigError, match="must be one of"):
        run_training(cfg)


# ---- layouts -------------------------------------------------------------------------------------


def test_xsa_gives_the_same_result_in_both_layouts():
    torch.manual_seed(0)
    y = torch.randn(2, 8, 10, 16)  # [B, H, T, D]
    v = torch.randn(2, 4, 10, 16)
    a = exclusive_self_attention(y, v, 1)
    b = exclusive_self_attention(y.transpose(1, 2), v.transpose(1, 2), 2)
    torch.testing.assert_close(b, a.transpose(1, 2), rtol=0, atol=0)


def test_split_merge_heads_round_trip():
    x = torch.randn(2, 5, 4 * 8)
    for backend in (attention.SDPA, attention.AttentionBackend("fake", 2, attention.SDPA.fn)):
        s = backend.split_heads(x, 4)
        assert s.size(backend.heads_dim) == 4 and s.size(3 - backend.heads_dim) == 5
        assert torch.equal(backend.merge_heads(s), x)
    assert attention.AttentionBackend("fake", 2, attention.SDPA.fn).split_heads(x, 4).data_ptr() == x.data_ptr()


def _random_model(dtype: torch.dtype) -> GPT:
    """Every technique that touches attention (GQA, partial RoPE, VE, XSA on all layers), with every
    weight random so zero-initialised projections do not hide the attention output."""
    cfg = ModelConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, vocab_size=128, mlp_mult=2.0,
                      rope_dims=8, xsa_last_n=2, ve_dim=16, ve_layers=[1], bigram_hash="v2", bigram_buckets=32,
                      bigram_dim=16, smear_gate="v2")
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.ndim >= 2 else 0.5)
    return model.to(dtype)


@pytest.mark.parametrize("name", ["fa3", "fa2"])
def test_flash_plumbing_matches_sdpa(fakes, name):
    model = _random_model(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    ref = model.logits(ids)
    grads_ref = torch.autograd.grad(ref.square().mean(), list(model.parameters()))
    backend = resolve(name, CUDA, head_dim=16)
    with attention.using(backend):
        got = model.logits(ids)
        grads = torch.autograd.grad(got.square().mean(), list(model.parameters()))
    assert len(fakes[name]) == 2  # one call per layer
    assert fakes[name][0] == ((2, 24, 4, 16), (2, 24, 2, 16))  # (B, T, H, D); K/V keep their 2 heads
    assert ref.abs().mean() > 0.5
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, gr, rtol=5e-2, atol=5e-3)


def test_fp32_calls_fall_back_to_sdpa_exactly(fakes):
    model = _random_model(torch.float32)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(2))
    ref = model.logits(ids)
    with attention.using(resolve("fa3", CUDA, head_dim=16)):
        got = model.logits(ids)
    assert fakes["fa3"] == []
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
