"""The SP8192 lineage (#1394 -> #1493): depth recurrence, GPT-J parallel residuals, the loop switch
under torch.compile, and GPTQ on the tied embedding."""
from __future__ import annotations

import copy
import time

import torch
from torch._dynamo.utils import counters

from pgolf.trainers.config import ModelConfig, QuantConfig, ScheduleConfig
from pgolf.trainers.gptq import collect_hessians, gptq_quantize, gptq_targets
from pgolf.trainers.model import GPT, layer_plan, set_looping
from pgolf.trainers.quant import INT_FORMATS
from pgolf.trainers.recurrence import LoopSwitch

V = 64


def tiny(**kw) -> ModelConfig:
    base = dict(num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=V, mlp_mult=4.0)
    base.update(kw)
    return ModelConfig(**base)


def noisy(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-init projections would hide the blocks
    return model


def ids(b: int = 2, t: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_layer_plans_are_the_records_logged_sequences():
    r1394 = ModelConfig(num_layers=11, num_loops=2, loop_start=4, loop_end=5)
    r1493 = ModelConfig(num_layers=11, num_loops=2, loop_start=3, loop_end=5)
    # the `layer_loop:enabled` lines of the records' seed-42 logs
    assert layer_plan(r1394, True) == ([0, 1, 2, 3, 4, 5, 4], [5, 4, 5, 6, 7, 8, 9, 10])
    assert layer_plan(r1493, True) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert layer_plan(r1493, False) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    assert layer_plan(ModelConfig(num_layers=9), True) == ([0, 1, 2, 3], [4, 5, 6, 7, 8])


def test_looped_model_is_an_unrolled_model_with_shared_weights():
    looped = noisy(tiny(num_loops=1, loop_start=1, loop_end=1, skip_gates=True))  # plan 0,1 | 1,2
    assert looped.looping and looped.skip_weights.shape[0] == 2
    unrolled = GPT(tiny(num_layers=4, skip_gates=True))  # plan 0,1 | 2,3
    sd = {k: v for k, v in looped.state_dict().items() if not k.startswith("blocks.")}
    for dst, src in enumerate([0, 1, 1, 2]):
        sd.update({f"blocks.{dst}.{k}": v for k, v in looped.blocks[src].state_dict().items()})
    unrolled.load_state_dict(sd)
    x = ids()
    with torch.no_grad():
        assert torch.equal(looped.logits(x), unrolled.logits(x))
        set_looping(looped, False)  # unlooped: the physical layers, the first skip weight only
        plain = GPT(tiny(skip_gates=True))
        plain.load_state_dict({k: (v[:1] if k.startswith("skip_") else v) for k, v in looped.state_dict().items()})
        assert torch.equal(looped.logits(x), plain.logits(x))


def test_parallel_block_reads_one_input_for_both_branches():
    model = noisy(tiny(parallel_start=1))
    assert [b.parallel for b in model.blocks] == [False, True, True]
    b, x, x0 = model.blocks[2], torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    with torch.no_grad():
        mixed = b.resid_mix[0] * x + b.resid_mix[1] * x0
        n = b.norm(mixed)
        want = mixed + b.attn_scale * b.attn(n) + b.mlp_scale * b.mlp(n)
        assert torch.allclose(b(x, x0), want, atol=1e-6)
        b.parallel = False
        assert not torch.allclose(b(x, x0), want, atol=1e-4)


def test_loop_switch_takes_effect_under_compile_with_one_graph_per_plan():
    torch._dynamo.reset()
    counters.clear()
    model = noisy(tiny(num_loops=1, loop_start=1, loop_end=1, loop_enable_frac=0.5))
    sched = ScheduleConfig(iterations=10, max_wallclock_seconds=0.0)
    switch = LoopSwitch(model, model.cfg, sched)
    assert not model.looping and switch.warmup_plans() == (False, True)
    compiled = torch.compile(model, backend="eager", dynamic=False, fullgraph=True)
    x, y = ids(), ids(seed=2)
    with torch.no_grad():
        unlooped = model(x, y)
        assert torch.equal(compiled(x, y), unlooped)
        assert not switch.due(4, 0.0) and switch.due(5, 0.0) and not switch.due(6, 0.0)
        looped = model(x, y)
        assert not torch.equal(looped, unlooped)
        assert torch.equal(compiled(x, y), looped)  # the flip reached the compiled graph
        for on in (False, True, False, True):
            set_looping(model, on)
            compiled(x, y)
    assert int(counters["stats"]["unique_graphs"]) == 2
    torch._dynamo.reset()
    by_time = LoopSwitch(noisy(tiny(num_loops=1, loop_start=1, loop_end=1, loop_enable_frac=0.35)),
                         tiny(num_loops=1, loop_start=1, loop_end=1, loop_enable_frac=0.35),
                         ScheduleConfig(max_wallclock_seconds=100.0))
    assert not by_time.due(0, 34_000.0) and by_time.due(1, 35_000.0)


def test_gptq_calibrates_and_quantizes_the_tied_embedding():
    model = noisy(tiny(num_layers=2))
    cfg = QuantConfig(embed_format="int8", mlp_format="int6_sym", attn_format="int6_sym", passthrough_max_numel=100,
                      gptq=True, gptq_categories=["mlp", "attn", "embed"], sd_clip_k_embed=20.0, scale_floor=1e-10)
    targets = gptq_targets(model, cfg)
    assert "tok_emb.weight" in targets and targets["tok_emb.weight"] is model.head_input
    assert "tok_emb.weight" not in gptq_targets(model, QuantConfig(embed_format="int8", gptq=True))
    batches = [ids(seed=s) for s in range(3)]
    hess, used = collect_hessians(model, {"tok_emb.weight": targets["tok_emb.weight"]}, iter(batches),
                                  torch.device("cpu"), 3, None, time.perf_counter())
    with torch.no_grad():
        hs = torch.cat([model.hidden(b).reshape(-1, 32) for b in batches])
    assert used == 3 and torch.allclose(hess["tok_emb.weight"], hs.t() @ hs, rtol=1e-4, atol=1e-4)
    w = model.tok_emb.weight.detach()
    q, s = gptq_quantize(w, hess["tok_emb.weight"], INT_FORMATS["int8"], "embed", cfg)
    assert q.shape == w.shape and q.dtype == torch.int8 and int(q.abs().max()) <= 127
    # the SD-clip scale: 20 std of the row over 127 levels
    assert torch.allclose(s.float(), (20.0 * w.float().std(dim=1) / 127).half().float(), rtol=1e-3)
    rtn = torch.clamp(torch.round(w / s.float()[:, None]), -127, 127)
    h = hess["tok_emb.weight"]

    def err(codes):
        e = w - codes.float() * s.float()[:, None]
        return float(((e @ h) * e).sum())

    assert err(q) <= err(rtn)


def test_pgolf_looping_default_is_the_final_plan():
    cfg = tiny(num_loops=2, loop_start=1, loop_end=1, loop_enable_frac=0.35)
    assert GPT(cfg).looping  # the round-trip / TTT model evaluates in the looped plan
    model = GPT(copy.deepcopy(cfg))
    LoopSwitch(model, cfg, ScheduleConfig()).finish()
    assert model.looping


def test_demo_corpus_at_8192_has_a_checked_tokenizer_and_byte_luts(data_root):
    import numpy as np

    from pgolf.datasets import ensure_demo
    from pgolf.trainers.bpb import build_byte_luts, check_tokenizer, load_tokenizer

    m = ensure_demo(data_root / "demo_sp8192", vocab=8192, progress=None)  # shared with the stack smoke runs
    assert m.vocab_size == 8192 and m.data_path.name == "fineweb10B_sp8192"
    sp = load_tokenizer(str(m.tokenizer_path))
    assert sp.vocab_size() == 8192
    luts = build_byte_luts(sp, 8192)
    check_tokenizer(sp, luts)
    assert m.raw["bytes"]["val"] > m.tokens["val"]  # > 1 byte per token at 8192 pieces
    val = np.fromfile(sorted(m.data_path.glob("fineweb_val_*.bin"))[0], dtype="<u2", offset=1024)
    assert int(val.max()) < 8192 and int(val.max()) > 1024
