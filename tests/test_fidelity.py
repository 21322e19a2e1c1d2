"""Fidelity of the quantizer to the records (issue #18): every stack's codes and scales bit-equal to
its record's rule, re-derived from the records' scripts on fixed weights whose rows have max |w| both
below and above 1; control tensors stored as the record stores them; the sliding tail windows."""
from __future__ import annotations

import os

import pytest
import torch

from pgolf.experiment import load_experiment
from pgolf.trainers.config import ConfigError, QuantConfig
from pgolf.trainers.model import GPT, is_control
from pgolf.trainers.quant import dequantize_state_dict, plan_state_dict, quantize_state_dict
from pgolf.trainers.sliding import plan_windows

STACKS = os.path.join(os.path.dirname(__file__), "..", "experiments", "stacks")
F16_TINY = torch.tensor(2.0**-14, dtype=torch.float16)


def stack_cfg(name: str, smoke: bool = False):
    return load_experiment(os.path.join(STACKS, f"{name}.toml"), smoke=smoke).config


def fixed_rows(seed: int, rows: int = 40, cols: int = 256) -> torch.Tensor:
    """Heavy-tailed rows scaled so row max |w| runs from ~3e-4 to ~5; row 0 all zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.randn(rows, cols, generator=g).exp()
    w = w / w.abs().amax(dim=1, keepdim=True) * torch.logspace(-3.5, 0.7, rows)[:, None]
    w[0] = 0.0
    return w


# ---- the records' rules, restated (techniques.md 3.22-3.23) --------------------------------------

def rec_int8(w):
    """Every record and the baseline: clip at the 99.99984th percentile of |w_row|, s = max(clip/127,
    1/127) in fp32, codes = clamp(round(clamp(w, +-clip) / s), +-127); s is stored fp16."""
    clip = torch.quantile(w.abs(), 0.9999984, dim=1)
    s = torch.clamp(clip / 127.0, min=1.0 / 127.0)
    x = torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None])
    return torch.clamp(torch.round(x / s[:, None]), -127, 127).to(torch.int8), s.to(torch.float16)


def rec_narrow_tiny(q):
    """#162/#180/#264/#366: s = fp16(max(row max / Q, 1e-12)), then s >= fp16 tiny; codes in [-(Q+1), Q]
    rounded with the fp16 scale."""
    def rule(w):
        s = torch.clamp(w.abs().amax(dim=1) / q, min=1e-12).to(torch.float16)
        s = torch.maximum(s, F16_TINY)
        return torch.clamp(torch.round(w / s.float()[:, None]), -(q + 1), q).to(torch.int8), s
    return rule


def rec_int6_one_over_q(w):
    """#198/#287/#315/#317: s = fp16(max(row max / 31, 1/31)), codes in [-32, 31]."""
    s = torch.clamp(w.abs().amax(dim=1) / 31.0, min=1.0 / 31.0).to(torch.float16)
    return torch.clamp(torch.round(w / s.float()[:, None]), -32, 31).to(torch.int8), s


def rec_gptq_lite(w):
    """#414/#549/#691: five clips (0.999, 0.9995, 0.9999, 0.99999 quantiles, row max), s = fp16(max(clip/31,
    1/31)), codes in [-31, 31]; the first candidate with the strictly smallest mean squared error wins."""
    best = None
    for pct in (0.999, 0.9995, 0.9999, 0.99999, 1.0):
        clip = torch.quantile(w.abs(), pct, dim=1) if pct < 1.0 else w.abs().amax(dim=1)
        s = torch.clamp(clip / 31.0, min=1.0 / 31.0).to(torch.float16)
        codes = torch.clamp(torch.round(w / s.float()[:, None]), -31, 31)
        err = float((w - codes * s.float()[:, None]).pow(2).mean())
        if best is None or err < best[0]:
            best = (err, codes.to(torch.int8), s)
    return best[1], best[2]


NAMES = {"embed": "tok_emb.weight", "mlp": "blocks.0.mlp.fc.weight", "attn": "blocks.0.attn.c_q.weight",
         "bigram": "bigram.table.weight"}
_INT6_162 = {"mlp": rec_narrow_tiny(31), "attn": rec_narrow_tiny(31), "bigram": rec_int8}  # tok_emb kept fp16
_INT5_180 = {"mlp": rec_narrow_tiny(15), "attn": rec_narrow_tiny(31), "bigram": rec_narrow_tiny(31)}  # tok_emb fp16
_INT6_198 = {"embed": rec_int8, "mlp": rec_int6_one_over_q, "attn": rec_int6_one_over_q, "bigram": rec_int8}
_LITE_414 = {"embed": rec_int8, "mlp": rec_gptq_lite, "attn": rec_gptq_lite, "bigram": rec_int8}
RULES = {
    "baseline": {"embed": rec_int8, "mlp": rec_int8, "attn": rec_int8},
    "pr162": _INT6_162, "pr180": _INT5_180, "pr366": _INT5_180,
    "pr264": {"embed": rec_int8, **_INT5_180},
    "pr198": _INT6_198, "pr287": _INT6_198, "pr315": _INT6_198, "pr317": _INT6_198,
    "pr414": _LITE_414, "pr414_lateqat": _LITE_414, "pr549": _LITE_414, "pr691": _LITE_414,
}


def _state(cats) -> dict[str, torch.Tensor]:
    return {NAMES[c]: fixed_rows(seed=i) for i, c in enumerate(cats)}


@pytest.mark.parametrize("stack", sorted(RULES))
def test_codes_and_scales_bit_equal_to_the_record(stack):
    rules = RULES[stack]
    state = _state(rules)
    maxes = state[NAMES["mlp"]].abs().amax(dim=1)
    assert (maxes[1:] < 1).sum() > 10 and (maxes > 1).sum() > 5
    cfg = stack_cfg(stack).quant
    cfg.passthrough_max_numel = 4096  # small test matrices; the size rules are tested in test_quant.py
    out, meta = quantize_state_dict(state, cfg)
    deq = dequantize_state_dict(out, meta)
    for cat, rule in rules.items():
        name = NAMES[cat]
        q_ref, s_ref = rule(state[name])
        assert meta["tensors"][name]["kind"] == "int", (stack, name)
        assert torch.equal(out[name + ".q"], q_ref), (stack, name)
        assert torch.equal(out[name + ".scale"], s_ref), (stack, name)
        assert torch.equal(deq[name], q_ref.float() * s_ref.float()[:, None]), (stack, name)


def test_one_over_q_floor_differs_exactly_on_rows_below_one():
    """#264 with the former global 1/Q floor: int5/int6 codes differ on rows with 0 < max |w| < 1 and
    agree on rows with max |w| >= 1, where row max / Q is above the floor anyway."""
    cfg = stack_cfg("pr264").quant
    cfg.passthrough_max_numel = 4096
    old = QuantConfig(**{**vars(cfg), "scale_floor_int5": None, "scale_floor_int6": None})
    state = _state(["embed", "mlp", "attn", "bigram"])
    new_out, _ = quantize_state_dict(state, cfg)
    old_out, _ = quantize_state_dict(state, old)
    assert torch.equal(new_out["tok_emb.weight.q"], old_out["tok_emb.weight.q"])  # int8 keeps 1/127
    for cat in ("mlp", "attn", "bigram"):
        name = NAMES[cat]
        rowmax = state[name].abs().amax(dim=1)
        same = (new_out[name + ".q"] == old_out[name + ".q"]).all(dim=1)
        assert same[rowmax >= 1].all() and not same[(rowmax > 0.05) & (rowmax < 1)].any(), cat


def test_int8_fp16_rounding_option_moves_codes_by_one():
    w = fixed_rows(seed=7, rows=64, cols=2048)
    q_ref, s_ref = rec_int8(w)
    out, _ = quantize_state_dict({"tok_emb.weight": w}, QuantConfig(int8_round_scale="fp16"))
    diff = out["tok_emb.weight.q"].int() - q_ref.int()
    assert torch.equal(out["tok_emb.weight.scale"], s_ref)
    assert diff.abs().max() == 1 and 0 < int(diff.ne(0).sum()) < w.numel() // 100
    with pytest.raises(ConfigError, match="int8_round_scale"):
        QuantConfig(int8_round_scale="bf16").validate()


@pytest.mark.parametrize("stack,stored", [("baseline", torch.float32), ("pr264", torch.float16),
                                          ("pr691", torch.float16)])
def test_control_tensors_stored_as_the_record_does(stack, stored):
    """The baseline keeps control tensors fp32 (patterns checked first); the records check size first,
    so every (small) control tensor ships fp16 and comes back as fp16 values in fp32."""
    cfg = stack_cfg(stack, smoke=True)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items() if is_control(k)}
    out, meta = quantize_state_dict(state, cfg.quant)
    deq = dequantize_state_dict(out, meta)
    controls = list(state)
    assert len(controls) >= 8
    for n in controls:
        assert out[n].dtype == stored, n
        assert deq[n].dtype == state[n].dtype and torch.equal(deq[n], state[n].to(stored).to(state[n].dtype)), n
    if stack != "baseline":  # the full-size model: no tensor at all is left fp32 in the records' stacks
        with torch.device("meta"):
            full = GPT(stack_cfg(stack).model).state_dict()
        plans = plan_state_dict(full, stack_cfg(stack).quant)
        assert sum(is_control(n) for n in full) > 40 and all(p.kind != "fp32" for p in plans.values())


def test_sliding_tail_windows_record_rescores_the_last_stride():
    """The records start a window at every multiple of the stride while >= stride positions remain:
    each short tail window scores the same last `stride` positions again. pgolf scores every position
    once (docs/stacks.md, "Fidelity")."""
    n_pos, seq_len, stride = 992, 64, 16
    rec = torch.zeros(n_pos, dtype=torch.int64)
    for ws in range(0, n_pos, stride):
        wlen = min(ws + seq_len, n_pos) - ws
        if wlen >= stride or ws == 0:
            s = 0 if ws == 0 else max(wlen - stride, 0)
            rec[ws + s:ws + wlen] += 1
    plan = plan_windows(n_pos, seq_len, stride)
    ours = torch.zeros(n_pos, dtype=torch.int64)
    for ws, ln, sf in zip(plan.starts.tolist(), plan.lengths.tolist(), plan.score_from.tolist()):
        ours[ws + sf:ws + ln] += 1
    assert torch.equal(ours, torch.ones(n_pos, dtype=torch.int64))
    assert torch.equal(rec[:n_pos - stride], ours[:n_pos - stride])
    assert rec[n_pos - stride:].tolist() == [seq_len // stride] * stride  # 1 + 3 short tail windows
    assert len(plan) == n_pos // stride - (seq_len // stride - 1)
