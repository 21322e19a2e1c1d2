"""EMA, SWA / Tight SWA and magnitude pruning (techniques.md §3.18, §3.19, §3.21)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pgolf.trainers.averaging import WeightAverager
from pgolf.trainers.config import AvgConfig
from pgolf.trainers.prune import magnitude_prune


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, 4))
        self.b = nn.Parameter(torch.zeros(4))


def _set(model: Toy, value: float) -> None:
    with torch.no_grad():
        model.w.fill_(value)
        model.b.fill_(-value)


def test_ema_math_from_initial_weights():
    m = Toy()
    _set(m, 1.0)
    avg = WeightAverager(m, AvgConfig(ema_decay=0.9))
    expect = 1.0
    for step, value in enumerate([2.0, 4.0, -1.0, 3.0], start=1):
        _set(m, value)
        avg.after_step(step, scale=1.0)
        expect = 0.9 * expect + 0.1 * value
    assert avg.ema["w"].dtype == torch.float32 and avg.ema["w"].device == m.w.device
    assert torch.allclose(avg.ema["w"], torch.full((3, 4), expect))
    assert avg.apply() == "ema"
    assert torch.allclose(m.w, torch.full((3, 4), expect)) and torch.allclose(m.b, torch.full((4,), -expect))


def test_ema_start_step():
    m = Toy()
    avg = WeightAverager(m, AvgConfig(ema_decay=0.5, ema_start_step=3))
    assert avg.ema is None
    for step, value in enumerate([5.0, 6.0, 8.0, 10.0], start=1):
        _set(m, value)
        avg.after_step(step, 1.0)
        if step < 3:
            assert avg.ema is None
    # step 3 snapshots 8, step 4 averages: 0.5 * 8 + 0.5 * 10
    assert torch.allclose(avg.ema["w"], torch.full((3, 4), 9.0)) and avg.ema_updates == 1


def test_ema_keeps_fp32_shadow_of_bf16_weights():
    m = Toy().to(torch.bfloat16)
    _set(m, 1.0)
    avg = WeightAverager(m, AvgConfig(ema_decay=0.999))
    _set(m, 2.0)
    avg.after_step(1, 1.0)
    assert avg.ema["w"].dtype == torch.float32
    assert avg.ema["w"][0, 0].item() == pytest.approx(1.001)  # below bf16 resolution at 1.0, kept in fp32


def test_swa_collects_only_under_threshold_and_on_period():
    m = Toy()
    avg = WeightAverager(m, AvgConfig(swa_every=2, swa_start_frac=0.5, swa_apply=True))
    scales = [1.0, 1.0, 0.8, 0.6, 0.45, 0.4, 0.3, 0.2, 0.1, 0.0]
    for step, s in enumerate(scales, start=1):
        _set(m, float(step))
        avg.after_step(step, s)
    # collected at steps 6, 8, 10 (even and scale < 0.5); step 5 is odd
    assert avg.swa_count == 3
    assert avg.apply() == "swa"
    assert torch.allclose(m.w, torch.full((3, 4), (6 + 8 + 10) / 3))


def test_swa_collected_but_not_applied_unless_configured():
    m = Toy()
    avg = WeightAverager(m, AvgConfig(swa_every=1, swa_start_frac=0.2, swa_apply=False))
    for step in range(1, 6):
        _set(m, float(step))
        avg.after_step(step, 0.1)
    assert avg.swa_count == 5
    assert avg.apply() == "none"
    assert torch.all(m.w == 5.0)  # last weights untouched (#414/#691 discard their Tight SWA)


def test_swa_needs_two_checkpoints():
    m = Toy()
    avg = WeightAverager(m, AvgConfig(swa_every=1, swa_start_frac=0.5, swa_apply=True))
    _set(m, 3.0)
    avg.after_step(1, 0.1)
    _set(m, 7.0)
    assert avg.apply() == "none" and torch.all(m.w == 7.0)


def test_ema_and_applied_swa_are_exclusive():
    with pytest.raises(ValueError, match="pick one"):
        AvgConfig(ema_decay=0.997, swa_every=50, swa_apply=True).validate()
    AvgConfig(ema_decay=0.997, swa_every=50, swa_apply=False).validate()  # #414: collect + EMA


def test_magnitude_pruning_fraction():
    torch.manual_seed(0)
    model = nn.Module()
    model.big = nn.Parameter(torch.randn(512, 256))  # 131,072 > 65,536
    model.small = nn.Parameter(torch.randn(128, 256))  # 32,768: left alone
    model.vec = nn.Parameter(torch.randn(100_000))  # 1-D: left alone
    before_small, before_vec = model.small.detach().clone(), model.vec.detach().clone()
    absw = model.big.detach().abs().flatten()
    threshold = torch.quantile(absw, 0.03)
    stats = magnitude_prune(model, 0.03, 65_536)
    assert set(stats) == {"big"}
    zeros = int((model.big == 0).sum())
    assert zeros == stats["big"] == int((absw < threshold).sum())
    assert abs(zeros / model.big.numel() - 0.03) < 1e-3
    kept = model.big.detach().abs()[model.big != 0]
    assert kept.min() >= threshold
    assert torch.equal(model.small, before_small) and torch.equal(model.vec, before_vec)
    assert magnitude_prune(model, 0.0) == {}


class Tables(nn.Module):
    """A bf16 token table next to an fp32 matrix, as the records store tok_emb / bigram next to linears."""
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(64, 16).to(torch.bfloat16)
        self.fc = nn.Parameter(torch.zeros(8, 16))


def _swa_30(cfg: AvgConfig):
    """30 checkpoints of fixed weights (~N(0, 0.5) plus a drift), collected and applied."""
    m = Tables()
    avg = WeightAverager(m, cfg)
    g = torch.Generator().manual_seed(0)
    seen = []
    for step in range(1, 31):
        with torch.no_grad():
            m.tok_emb.weight.copy_((torch.randn(64, 16, generator=g) * 0.5 + 0.01 * step).to(torch.bfloat16))
            m.fc.copy_(torch.randn(8, 16, generator=g))
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        avg.after_step(step, scale=0.1)
    assert avg.apply() == "swa" and avg.swa_count == 30
    return m, seen


def test_swa_native_sum_matches_the_record_rule():
    # #162/#180/#198/#264: sum = first checkpoint as stored; sum += each later one in the tensor's own
    # dtype; mean = (sum / n) in that dtype, cast back to the parameter's dtype.
    m, seen = _swa_30(AvgConfig(swa_every=1, swa_start_frac=0.5, swa_apply=True, swa_sum_dtype="native"))
    for k in ("tok_emb.weight", "fc"):
        acc = seen[0][k].clone()
        for ck in seen[1:]:
            acc += ck[k]
        expect = (acc / len(seen)).to(seen[0][k].dtype)
        assert torch.equal(m.state_dict()[k], expect), k
    # the default fp32 sum is the exact mean rounded once: it differs from the bf16 running sum
    m32, _ = _swa_30(AvgConfig(swa_every=1, swa_start_frac=0.5, swa_apply=True))
    exact = torch.stack([ck["tok_emb.weight"].float() for ck in seen]).mean(0)
    assert torch.equal(m32.tok_emb.weight, exact.to(torch.bfloat16))
    assert not torch.equal(m32.tok_emb.weight, m.tok_emb.weight)
    assert torch.equal(m32.fc, m.fc)  # fp32 tensors sum in fp32 either way
    with pytest.raises(ValueError, match="swa_sum_dtype"):
        AvgConfig(swa_sum_dtype="bf16").validate()
