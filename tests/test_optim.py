"""Muon (orthogonal updates, WD, MuonEq-R, Polar Express), Adam/AdamW groups and the LR schedule
(techniques.md §3.15-§3.17)."""
from __future__ import annotations

import pytest
import torch

from pgolf.trainers.config import ModelConfig, OptimConfig, ScheduleConfig
from pgolf.trainers.model import GPT
from pgolf.trainers.muon import NS_POLAR_EXPRESS, NS_QUINTIC, Muon, newton_schulz, row_normalize
from pgolf.trainers.optim import apply_schedules, build_optimizers, lr_scale, muon_momentum, split_params


def _muon_update(grad: torch.Tensor, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros_like(grad))
    opt = Muon([p], lr=1.0, momentum=0.0, **kw)
    p.grad = grad.clone()
    opt.step()
    return -p.detach()


def test_muon_update_is_near_orthogonal():
    torch.manual_seed(0)
    for shape in ((128, 64), (64, 192)):
        u = _muon_update(torch.randn(*shape))
        u = u / max(1.0, shape[0] / shape[1]) ** 0.5  # undo the tall-matrix RMS scale
        s = torch.linalg.svdvals(u)
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())


def test_polar_express_coefficients_tighten_the_spectrum():
    assert len(NS_POLAR_EXPRESS) == 5 and NS_QUINTIC == ((3.4445, -4.7750, 2.0315),)
    torch.manual_seed(1)
    g = torch.randn(128, 64)
    s_q = torch.linalg.svdvals(newton_schulz(g, 5, coeffs=NS_QUINTIC))
    s_p = torch.linalg.svdvals(newton_schulz(g, 5, coeffs=NS_POLAR_EXPRESS))
    assert s_p.min() > s_q.min() and (s_p - 1).abs().max() < (s_q - 1).abs().max()
    assert s_p.min() > 0.8 and s_p.max() < 1.2
    u = _muon_update(g, ns_coeffs="polar_express")
    assert torch.allclose(u, newton_schulz(g, 5, coeffs=NS_POLAR_EXPRESS) * 2**0.5, atol=1e-6)
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0, momentum=0.0, ns_coeffs="cubic")


def test_muoneq_r_equalises_rows():
    torch.manual_seed(2)
    g = torch.randn(96, 64)
    assert torch.allclose(row_normalize(g).norm(dim=1), torch.ones(96), atol=1e-5)
    d = torch.rand(96, 1) * 10 + 0.1  # arbitrary positive per-row scales
    with_rn = _muon_update(g, row_norm=True), _muon_update(d * g, row_norm=True)
    without = _muon_update(g), _muon_update(d * g)
    assert torch.allclose(*with_rn, atol=1e-5)  # invariant to per-row gradient scale
    assert not torch.allclose(*without, atol=1e-3)


def test_muon_wd_shrinks_weights_by_scheduled_lr_times_wd():
    w0 = torch.randn(32, 16)
    p = torch.nn.Parameter(w0.clone())
    opt = Muon([p], lr=0.04, momentum=0.95, weight_decay=0.04)
    for g in opt.param_groups:
        g["base_lr"] = 0.04
    apply_schedules([opt], scale=0.5, momentum=0.95)  # scheduled lr = 0.02
    p.grad = torch.zeros_like(p)  # zero update: only the decay acts
    opt.step()
    assert torch.allclose(p.detach(), w0 * (1 - 0.02 * 0.04), atol=1e-7)
    q = torch.nn.Parameter(w0.clone())
    plain = Muon([q], lr=0.04, momentum=0.95)
    q.grad = torch.zeros_like(q)
    plain.step()
    assert torch.equal(q.detach(), w0)


def test_param_groups_and_adamw_decay():
    model = GPT(ModelConfig(num_layers=2, model_dim=128, num_heads=4, num_kv_heads=2, vocab_size=256,
                            bigram_hash="v2", bigram_buckets=64, bigram_dim=64, smear_gate="v2",
                            ve_dim=64, ve_layers=[1], backout=True, skip_gates=True))
    groups = split_params(model)
    token = {n for n, _ in groups.token}
    matrix = {n for n, _ in groups.matrix}
    scalar = {n for n, _ in groups.scalar}
    assert token == {"tok_emb.weight", "bigram.table.weight", "ve.table.weight"}
    assert {"bigram.proj.weight", "ve.proj.weight", "blocks.0.attn.c_q.weight", "blocks.1.mlp.proj.weight"} <= matrix
    assert {"smear.gate", "bigram.scale", "ve.scale", "ve.layer_scales", "backout_lambda", "skip_weights",
            "skip_gates", "blocks.0.resid_mix", "blocks.0.attn.q_gain"} <= scalar
    assert all(p.ndim == 2 for _, p in groups.matrix)
    n_all = sum(1 for _ in model.parameters())
    assert len(token) + len(matrix) + len(scalar) + len(groups.head) == n_all

    opts = build_optimizers(model, OptimConfig(adam_wd=0.04, muon_wd=0.04))
    tok, muon, sca = opts
    assert isinstance(tok, torch.optim.AdamW) and tok.param_groups[0]["weight_decay"] == 0.04
    assert isinstance(sca, torch.optim.AdamW) and sca.param_groups[0]["weight_decay"] == 0.04
    assert muon.param_groups[0]["weight_decay"] == 0.04
    tok, _, sca = build_optimizers(model, OptimConfig(adam_wd=0.04, token_wd=0.085, scalar_wd=0.02))
    assert tok.param_groups[0]["weight_decay"] == 0.085 and sca.param_groups[0]["weight_decay"] == 0.02
    tok, _, sca = build_optimizers(model, OptimConfig())
    assert type(tok) is torch.optim.Adam and type(sca) is torch.optim.Adam  # baseline: plain Adam


def test_adamw_decay_uses_scheduled_lr():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([{"params": [p], "lr": 0.1, "base_lr": 0.1}], weight_decay=0.5)
    apply_schedules([opt], scale=0.2, momentum=0.0)
    p.grad = torch.zeros(4)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((4,), 1 - 0.02 * 0.5))


def test_momentum_warmup():
    cfg = OptimConfig(muon_momentum=0.99, muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500)
    assert muon_momentum(0, cfg) == pytest.approx(0.92)
    assert muon_momentum(750, cfg) == pytest.approx(0.955)
    assert muon_momentum(1500, cfg) == pytest.approx(0.99) and muon_momentum(9000, cfg) == pytest.approx(0.99)


def test_step_and_wallclock_warmdown_and_min_lr_floor():
    s = ScheduleConfig(iterations=100, warmdown_iters=40, max_wallclock_seconds=0)
    assert lr_scale(59, 0, s) == 1.0 and lr_scale(60, 0, s) == 1.0
    assert lr_scale(80, 0, s) == pytest.approx(0.5) and lr_scale(100, 0, s) == 0.0
    s.min_lr = 0.1
    assert lr_scale(98, 0, s) == pytest.approx(0.1) and lr_scale(80, 0, s) == pytest.approx(0.5)
    frac = ScheduleConfig(iterations=100, warmdown_frac=0.25, max_wallclock_seconds=0)
    assert lr_scale(75, 0, frac) == 1.0 and lr_scale(90, 0, frac) == pytest.approx(0.4)
    # Wall clock: 100 ms/step so far, warmdown of 1000 steps = 100 s; 50 s left -> 0.5.
    w = ScheduleConfig(warmdown_iters=1000, max_wallclock_seconds=600)
    assert lr_scale(5500, 550_000, w) == pytest.approx(0.5)
    assert lr_scale(1000, 100_000, w) == 1.0
    assert lr_scale(5500, 550_000, w, cap_seconds=580) == pytest.approx(0.3)  # a reserve shortens the cap
    wf = ScheduleConfig(warmdown_frac=0.5, max_wallclock_seconds=600, min_lr=0.1)
    assert lr_scale(10, 450_000, wf) == pytest.approx(0.5) and lr_scale(10, 599_000, wf) == pytest.approx(0.1)


def test_muon_wd_taper_follows_the_1729_rule_and_reaches_the_optimizer():
    from pgolf.trainers.optim import wd_taper
    cfg = OptimConfig(muon_wd=0.1, wd_taper_start_frac=0.7, wd_taper_final_mult=0.5)
    assert [wd_taper(f, cfg) for f in (0.0, 0.7, 0.85, 1.0, 1.2)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.5])
    assert wd_taper(0.99, OptimConfig(muon_wd=0.1)) == 1.0  # default: off
    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = Muon([p], lr=0.04, momentum=0.95, weight_decay=0.1)
    for g in opt.param_groups:
        g["base_lr"] = 0.04
    apply_schedules([opt], scale=1.0, momentum=0.95, wd_mult=wd_taper(0.85, cfg))
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.075)
    apply_schedules([opt], scale=1.0, momentum=0.95)  # the base WD is kept, not the tapered one
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="wd_taper_start_frac"):
        OptimConfig(wd_taper_start_frac=1.5).validate()
