"""Late QAT (techniques.md §3.20, §8.1): the switch is a buffer tensor, so flipping it changes the
forward after it flips, eagerly and under torch.compile (where #315's Python flag was folded away)."""
from __future__ import annotations

import pytest
import torch

from pgolf.trainers import qat
from pgolf.trainers.config import ModelConfig
from pgolf.trainers.layers import CastedLinear
from pgolf.trainers.model import GPT


def _model(device="cpu") -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(num_layers=2, model_dim=128, num_heads=4, num_kv_heads=2, vocab_size=256,
                            bigram_hash="v2", bigram_buckets=64, bigram_dim=64, ortho_init=True)).to(device)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.proj.weight.normal_(0, 0.3)
            blk.mlp.proj.weight.normal_(0, 0.3)
    return model


def test_fake_quant_int6_grid_and_straight_through_gradient():
    torch.manual_seed(0)
    w = torch.randn(8, 32) * 2
    q = qat.fake_quant_int6(w)
    scale = (w.abs().amax(1, keepdim=True) / 31).clamp_min(1 / 31)
    codes = q / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().min() >= -32 and codes.round().max() <= 31
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6
    wp = w.clone().requires_grad_(True)
    out = qat.ste_weight(wp, torch.tensor(1.0))
    assert torch.allclose(out, q)
    out.sum().backward()
    assert torch.equal(wp.grad, torch.ones_like(w))  # identity gradient
    assert torch.equal(qat.ste_weight(w, torch.tensor(0.0)), w)  # flag 0: exactly w


def test_late_qat_switch_changes_the_eager_forward():
    model = _model()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    model.train()
    before = model(x, y).item()
    n = qat.arm(model)
    assert n == sum(isinstance(m, CastedLinear) for m in model.modules()) and not qat.is_enabled(model)
    assert model(x, y).item() == before  # armed but off: bit-identical
    qat.set_enabled(model, True)
    assert qat.is_enabled(model)
    on = model(x, y).item()
    assert on != before
    model.eval()
    assert model(x, y).item() == before  # training only, like the records
    model.train()
    qat.set_enabled(model, False)
    assert model(x, y).item() == before
    assert "qat_flag" not in "".join(model.state_dict())  # never reaches the artifact


@pytest.mark.parametrize("device,backend,rel", [
    # aot_eager on the CPU: dynamo plus AOTAutograd's functionalised graph, where a flag read as a
    # Python constant would be folded, without inductor; fp32, so eager and compiled agree closely.
    ("cpu", "aot_eager", 1e-6),
    pytest.param("cuda", "inductor", 1e-2, marks=[
        pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
])
def test_late_qat_switch_changes_the_compiled_forward(device, backend, rel):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = _model(device)
    qat.arm(model)
    model.train()
    compiled = torch.compile(model, dynamic=False, backend=backend)
    x = torch.randint(0, 256, (2, 64), device=device)
    y = torch.randint(0, 256, (2, 64), device=device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        off = compiled(x, y).item()
        graphs = counters["stats"]["unique_graphs"]
        qat.set_enabled(model, True)
        on = compiled(x, y).item()
        eager_on = model(x, y).item()
        qat.set_enabled(model, False)
        off_again = compiled(x, y).item()
    assert on != off, "the compiled graph ignored the flipped QAT flag (constant-folded)"
    assert on == pytest.approx(eager_on, rel=rel)
    assert off_again == pytest.approx(off, rel=rel / 100)
    assert counters["stats"]["unique_graphs"] == graphs, "flipping the QAT flag recompiled"
    torch._dynamo.reset()
