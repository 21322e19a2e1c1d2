"""Quantizer: per-format error bounds, category/passthrough/keep-list rules, GPTQ-lite clip search,
SD-clip, full-Hessian GPTQ beating round-to-nearest, and the state-dict round trip."""
import pytest
import torch

from pgolf.trainers.config import ConfigError, ModelConfig, QuantConfig
from pgolf.trainers.gptq import gptq_quantize
from pgolf.trainers.model import GPT
from pgolf.trainers.quant import (INT_FORMATS, category_of, dequantize_state_dict, plan_state_dict,
                                  quantize_rows_rtn, quantize_state_dict)


def _w(rows=64, cols=256, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * scale


def _deq(q, s):
    return q.float() * s.float()[:, None]


@pytest.mark.parametrize("fmt", ["int7", "int6", "int6_sym", "int5", "int4"])
def test_row_max_formats_error_at_most_half_a_step(fmt):
    f = INT_FORMATS[fmt]
    w = _w(scale=0.5)
    q, s = quantize_rows_rtn(w, f, "mlp", QuantConfig(scale_floor=0.0))
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (w.size(0),)
    assert int(q.min()) >= f.lo and int(q.max()) <= f.hi
    step = s.float()[:, None]
    # the fp16 scale may round down, so the row max can land half a step past +-q and get clamped
    clip_excess = (w.abs().amax(dim=1, keepdim=True) - f.q * step).clamp_min(0)
    assert ((w - _deq(q, s)).abs() <= step / 2 + clip_excess + 1e-6).all()
    # the codes use the grid: the largest |code| of each row is q (the row max maps to it)
    assert (q.abs().amax(dim=1) >= f.q - 1).all()


def test_int8_percentile_clip_bound_and_baseline_rule():
    w = _w(32, 4096, seed=1)
    w[0, 0] = 50.0  # an outlier the percentile clips away
    cfg = QuantConfig(int8_clip_percentile=99.99984)
    q, s = quantize_rows_rtn(w, INT_FORMATS["int8"], "embed", cfg)
    clip = torch.quantile(w.abs(), 0.9999984, dim=1)
    inside = w.abs() <= clip[:, None]
    err = (w - _deq(q, s)).abs()
    step = s.float()[:, None].expand_as(w)
    # codes are rounded with the fp32 scale and dequantized with the fp16 one (the baseline's rule):
    # |q| <= 127 codes each off by at most the fp16 half-ulp of the scale, 2^-11 relative
    assert (err[inside] <= step[inside] * (0.5 + 127 * 2.0**-11) + 1e-7).all()
    assert int(q.abs().max()) <= 127
    assert float(s[0]) < 50.0 / 127  # the outlier did not set the row's scale


def test_scale_floor_is_one_over_q_by_default():
    w = torch.full((4, 128), 1e-4)
    q, s = quantize_rows_rtn(w, INT_FORMATS["int6_sym"], "mlp", QuantConfig())
    assert torch.allclose(s.float(), torch.full((4,), 1 / 31), rtol=1e-3)
    assert int(q.abs().max()) == 0


def test_gptq_lite_per_matrix_picks_one_percentile_and_per_row_is_no_worse():
    w = _w(48, 512, seed=2)
    w[:, :3] *= 8  # a few outlier columns make clipping worthwhile
    f = INT_FORMATS["int6_sym"]
    mse = lambda q, s: float((w - _deq(q, s)).pow(2).sum())  # noqa: E731
    qm, sm = quantize_rows_rtn(w, f, "mlp", QuantConfig(clip_search="per_matrix"))
    qr, sr = quantize_rows_rtn(w, f, "mlp", QuantConfig(clip_search="per_row"))
    qo, so = quantize_rows_rtn(w, f, "mlp", QuantConfig(clip_search="off"))
    assert mse(qr, sr) <= mse(qm, sm) <= mse(qo, so)
    # per matrix: every row's scale comes from the same candidate percentile
    cands = [torch.quantile(w.abs(), p, dim=1) if p < 1 else w.abs().amax(dim=1)
             for p in QuantConfig().clip_percentiles]
    matches = [torch.equal(sm, (c / 31).clamp_min(1 / 31).half()) for c in cands]
    assert sum(matches) == 1


def test_sd_clip_scale_and_category_override():
    w = _w(16, 1024, seed=3)
    cfg = QuantConfig(sd_clip_k=12.0, sd_clip_k_mlp=3.0, scale_floor=0.0)
    _, s_mlp = quantize_rows_rtn(w, INT_FORMATS["int6"], "mlp", cfg)
    _, s_attn = quantize_rows_rtn(w, INT_FORMATS["int6"], "attn", cfg)
    std = w.std(dim=1)  # unbiased, as #1394
    assert torch.allclose(s_mlp.float(), (3.0 * std / 31).half().float())
    assert torch.allclose(s_attn.float(), (12.0 * std / 31).half().float())


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(4)
    cols = 96
    x = torch.randn(1024, cols, generator=g) @ (torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols**0.5)
    w = _w(40, cols, seed=5, scale=0.05)
    h = x.t() @ x
    for fmt in ("int6", "int4"):
        cfg = QuantConfig(scale_floor=0.0, gptq_block_size=32)
        qg, sg = gptq_quantize(w, h, INT_FORMATS[fmt], "mlp", cfg)
        qr, sr = quantize_rows_rtn(w, INT_FORMATS[fmt], "mlp", cfg)
        assert torch.equal(sg, sr)  # same scales, only the rounding differs
        out_err = lambda q, s: float((x @ (w - _deq(q, s)).t()).pow(2).sum())  # noqa: E731
        assert out_err(qg, sg) < 0.8 * out_err(qr, sr)
        assert int(qg.min()) >= INT_FORMATS[fmt].lo and int(qg.max()) <= INT_FORMATS[fmt].hi


def test_categories_and_plan_rules():
    assert category_of("tok_emb.weight") == "embed"
    assert category_of("lm_head.weight") == "embed"
    assert category_of("bigram.table.weight") == "bigram"
    assert category_of("blocks.3.mlp.fc.weight") == "mlp"
    assert category_of("blocks.3.attn.c_k.weight") == "attn"
    assert category_of("ve.table.weight") == "other"
    state = {
        "tok_emb.weight": torch.zeros(1024, 512),
        "blocks.0.attn_scale": torch.zeros(512),
        "blocks.0.attn.c_q.weight": torch.zeros(512, 512),
        "blocks.9.attn.c_k.weight": torch.zeros(256, 512),
        "blocks.8.attn.c_k.weight": torch.zeros(256, 512),
        "blocks.0.mlp.fc.weight": torch.zeros(1536, 512),
        "bigram.proj.weight": torch.zeros(512, 128),
        "steps": torch.zeros(3, dtype=torch.int64),
    }
    cfg = QuantConfig(mlp_format="int5", attn_format="int6", passthrough_max_numel=65_536,
                      fp16_keep=["tok_emb"], late_k_fp16_layers=[-1])
    plans = plan_state_dict(state, cfg)
    assert plans["tok_emb.weight"].kind == "fp16"
    assert plans["blocks.0.attn_scale"].kind == "fp32"
    assert (plans["blocks.0.attn.c_q.weight"].kind, plans["blocks.0.attn.c_q.weight"].fmt) == ("int", "int6")
    assert plans["blocks.9.attn.c_k.weight"].kind == "fp16"  # Late-K of the last layer
    assert plans["blocks.8.attn.c_k.weight"].kind == "int"
    assert plans["blocks.0.mlp.fc.weight"].fmt == "int5"
    assert plans["bigram.proj.weight"].kind == "fp16"  # 65,536 elements: passthrough
    assert plans["steps"].kind == "raw"
    cfg.passthrough_max_numel = 8_192
    assert plan_state_dict(state, cfg)["bigram.proj.weight"].kind == "int"


def test_state_dict_round_trip_restores_shapes_and_dtypes():
    torch.manual_seed(0)
    model = GPT(ModelConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, vocab_size=256))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = QuantConfig(embed_format="int8", mlp_format="int5", attn_format="int6_sym", passthrough_max_numel=1000,
                      clip_search="per_row")
    tensors, meta = quantize_state_dict(state, cfg)
    back = dequantize_state_dict(tensors, meta)
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype
        info = meta["tensors"][k]
        if info["kind"] == "fp32":
            assert torch.equal(back[k], v)
        elif info["kind"] == "int":
            q = tensors[k + ".q"]
            assert torch.equal(back[k], (q.float().reshape(q.size(0), -1)
                                         * tensors[k + ".scale"].float()[:, None]).reshape(v.shape))
            assert float((back[k] - v).pow(2).mean()) < 0.05 * float(v.pow(2).mean())
    GPT(model.cfg).load_state_dict(back, strict=True)


def test_bad_quant_config_is_a_config_error():
    with pytest.raises(ConfigError, match="mlp_format"):
        QuantConfig(mlp_format="int3").validate()
    with pytest.raises(ConfigError, match="clip_search"):
        QuantConfig(clip_search="rows").validate()
    with pytest.raises(ConfigError, match="compressor"):
        QuantConfig(compressor="bzip2").validate()


def test_gptq_calibration_respects_the_training_deadline():
    import time

    from pgolf.trainers.gptq import collect_hessians, gptq_targets

    torch.manual_seed(0)
    model = GPT(ModelConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, vocab_size=256))
    cfg = QuantConfig(mlp_format="int6", attn_format="int6", passthrough_max_numel=1000)
    targets = gptq_targets(model, cfg)
    assert set(targets) == {f"blocks.{i}.{n}.weight" for i in range(2)
                            for n in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")}

    def batches():
        while True:
            yield torch.randint(0, 256, (2, 16))

    h, used = collect_hessians(model, targets, batches(), torch.device("cpu"), 3, None, time.perf_counter())
    assert used == 3
    hq = h["blocks.0.attn.c_q.weight"]
    assert torch.allclose(hq, hq.t()) and float(torch.linalg.eigvalsh(hq.double()).min()) > -1e-6
    h0, used0 = collect_hessians(model, targets, batches(), torch.device("cpu"), 3, 0.0, time.perf_counter() - 1.0)
    assert used0 == 0 and all(float(v.abs().sum()) == 0 for v in h0.values())


def test_train_schedule_takes_the_gptq_reserve_off_the_cap():
    from pgolf.trainers.config import TrainConfig
    from pgolf.trainers.posttrain import train_schedule

    cfg = TrainConfig()
    cfg.quant.gptq, cfg.quant.gptq_reserve_seconds = True, 8.0
    assert train_schedule(cfg).max_wallclock_seconds == 592.0
    assert cfg.schedule.max_wallclock_seconds == 600.0  # the config itself is untouched
    cfg.quant.gptq = False
    assert train_schedule(cfg).max_wallclock_seconds == 600.0
    cfg.quant.gptq, cfg.quant.gptq_reserve_seconds = True, 600.0
    with pytest.raises(ConfigError, match="reserve"):
        train_schedule(cfg)


def test_one_sort_quantiles_equal_torch_quantile():
    from pgolf.trainers.quant import quantile_rows

    g = torch.Generator().manual_seed(6)
    for n in (2, 64, 777, 1536):
        a = torch.randn(50, n, generator=g).abs()
        fracs = [0.999, 0.9995, 0.9999, 0.99999, 0.9999984, 0.5]
        for f, q in zip(fracs, quantile_rows(a, fracs)):
            assert torch.equal(q, torch.quantile(a, f, dim=1)), (n, f)


def test_gptq_clip_pick_by_weight_mse_as_1019_and_1218():
    g = torch.Generator().manual_seed(11)  # a draw where the two rules pick different clips
    cols = 64
    x = torch.randn(512, cols, generator=g) @ (torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols**0.5)
    w = torch.randn(32, cols, generator=g) * 0.02
    h = x.t() @ x
    got = {}
    for pick in ("hessian", "mse"):
        cfg = QuantConfig(scale_floor=0.0, gptq_block_size=32, clip_search="per_matrix", gptq_pick=pick,
                          clip_percentiles=[0.8, 0.9, 0.99, 1.0])
        got[pick] = gptq_quantize(w, h, INT_FORMATS["int4"], "mlp", cfg)
    w_err = lambda q, s: float((w - _deq(q, s)).pow(2).sum())  # noqa: E731
    out_err = lambda q, s: float((x @ (w - _deq(q, s)).t()).pow(2).sum())  # noqa: E731
    assert not torch.equal(got["hessian"][1], got["mse"][1])  # different candidates won
    assert w_err(*got["mse"]) < w_err(*got["hessian"]) and out_err(*got["hessian"]) < out_err(*got["mse"])
