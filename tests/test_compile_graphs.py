"""torch.compile on the CPU with dynamo's `eager` backend (no inductor, no GPU): graph breaks and
recompiles are decided by dynamo alone, so the traps that would cost minutes on an H100 show here.

- every stack's model traces to one graph in training, no-grad eval and inference mode (Rotary's
  inference-mode cache check used to break the inference graph once per layer);
- plain eval, sliding eval and score-first TTT each compile a fixed number of graphs, however many
  batches, uneven final batches, short final windows and chunks they meet;
- padding a short batch or window for the compiled model leaves the sums unchanged.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import pytest
import torch
from torch._dynamo.utils import counters

from test_sliding import synthetic_luts as luts
from test_stacks import LINEAGE_ONLY

from pgolf.experiment import load_experiment
from pgolf.trainers import qat
from pgolf.trainers.config import ModelConfig, TrainConfig
from pgolf.trainers.evaluate import evaluate, is_compiled
from pgolf.trainers.model import GPT
from pgolf.trainers.sliding import evaluate_sliding
from pgolf.trainers.ttt import run_score_first
from pgolf.trainers.ttt_trace import TraceWriter

# lineage-only steps (test_stacks.LINEAGE_ONLY) trace no code path their smoke-run neighbours do not
STACKS = sorted(p for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "experiments", "stacks", "*.toml"))
                if os.path.basename(p)[:-5] not in LINEAGE_ONLY)
VOCAB = 96
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def shrink(m: ModelConfig) -> ModelConfig:
    """The stack's techniques on tiny shapes."""
    m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = 3, 32, 2, 1
    m.xsa_last_n = min(m.xsa_last_n, m.num_layers)
    m.ve_layers = [m.num_layers - 1] if m.ve_dim else []
    m.ve_dim = min(m.ve_dim, 8)
    m.rope_dims = min(m.rope_dims, 8)
    m.bigram_buckets = min(m.bigram_buckets, 64)
    m.bigram_dim = min(m.bigram_dim, 16)
    m.vocab_size = VOCAB
    if m.num_loops:
        m.loop_start = m.loop_end = 1
    if m.parallel_start >= 0:
        m.parallel_start = 2
    return m


def random_model(cfg: ModelConfig) -> GPT:
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-initialised projections would hide attention
    return model


def stream(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _graph_shape(path: str) -> str:
    """What decides the traced graph: the shrunk model config, with each float reduced to its sign (a
    float field can switch a branch on at > 0; its value only changes numbers)."""
    m = dataclasses.asdict(shrink(load_experiment(path).resolved().model))
    return json.dumps({k: (("+" if v > 0 else "-" if v < 0 else "0") if isinstance(v, float) else v)
                       for k, v in m.items()}, sort_keys=True)


# one stack per distinct model shape: stacks whose model configs differ only in float values trace the
# same graph (16 stack files, 11 shapes)
SHAPES = list({_graph_shape(p): p for p in reversed(STACKS)}.values())


@pytest.mark.parametrize("path", SHAPES, ids=lambda p: os.path.basename(p)[:-5])
def test_every_stack_traces_to_one_graph_in_every_mode(path):
    cfg = shrink(load_experiment(path).resolved().model)
    model = GPT(cfg)
    qat.arm(model)  # the late-QAT branch exists while training, as in the trainer
    x = torch.randint(0, VOCAB, (2, 32))
    y = torch.randint(0, VOCAB, (2, 32))
    found = {"train": torch._dynamo.explain(model)(x, y)}
    model.eval()
    with torch.no_grad():
        found["no_grad eval"] = torch._dynamo.explain(model)(x, y, reduction="none")
    with torch.inference_mode():
        found["inference mode"] = torch._dynamo.explain(model)(x, y, reduction="none")
    for mode, ex in found.items():
        reasons = [str(b.reason).splitlines()[0] for b in ex.break_reasons]
        assert ex.graph_break_count == 0 and ex.graph_count == 1, f"{mode}: {ex.graph_count} graphs, {reasons}"


def test_eval_passes_compile_one_graph_each_and_padding_changes_nothing():
    cfg = ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=VOCAB, rope_dims=8,
                      rope_ntk_ref_len=0, smear_gate="v2", bigram_hash="v2", bigram_buckets=64, bigram_dim=16)
    model = random_model(cfg).eval()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    assert is_compiled(compiled) and not is_compiled(model)
    table, seq = luts(), 32
    # 11 full sequences in batches of 4 (the last holds 3); sliding: a short final window and a
    # final batch of 5 windows, two passes each.
    val = stream(11 * seq + 20)
    plain_kw = dict(seq_len=seq, batch_tokens=4 * seq, device=CPU)
    slide_kw = dict(seq_len=seq, stride=8, batch_seqs=8, device=CPU)

    g0 = graphs()
    got = [evaluate(compiled, val, table, **plain_kw) for _ in range(2)]
    g1 = graphs()
    slid = [evaluate_sliding(compiled, val, table, **slide_kw) for _ in range(2)]
    g2 = graphs()
    assert g1 - g0 == 1, f"plain eval compiled {g1 - g0} graphs (uneven last batch recompiled)"
    assert g2 - g1 == 1, f"sliding eval compiled {g2 - g1} graphs (short window or batch recompiled)"

    want = evaluate(model, val, table, **plain_kw)
    want_slid = evaluate_sliding(model, val, table, **slide_kw)
    for a, b in ((got[0], want), (got[1], want), (slid[0], want_slid), (slid[1], want_slid)):
        assert a.tokens == b.tokens and a.bytes == b.bytes  # padded positions are not counted
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-6)
    assert want_slid.tokens == val.numel() - 1  # every position once, the short tail included


def test_score_first_ttt_compiles_a_fixed_number_of_graphs_however_many_chunks(tmp_path):
    cfg = TrainConfig()
    cfg.model = ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=VOCAB, rope_dims=8)
    cfg.data.train_seq_len = 32
    cfg.eval.sliding_stride, cfg.eval.sliding_batch_seqs = 16, 4
    t = cfg.ttt
    t.mode, t.chunk_tokens, t.epochs, t.batch_seqs, t.lr = "score_first", 4 * 32, 2, 2, 0.01
    table = luts()
    model = random_model(cfg.model)
    compiled = torch.compile(model, backend="eager", dynamic=False)
    world = 2  # rank 0 of 2 without a process group: rank 0's share of every chunk

    def run(chunks: int, name: str):
        # +7 tokens: a short final window and a last chunk unlike the others
        val = stream(chunks * t.chunk_tokens + 7, seed=chunks)
        trace = TraceWriter(str(tmp_path / name))
        before = graphs()
        res = run_score_first(compiled, val, table, cfg, CPU, 0, world, trace)
        trace.close()
        return res, graphs() - before

    _, first = run(3, "a.jsonl")
    res, second = run(7, "b.jsonl")
    assert res.info["chunks"] == 8 and res.info["updates"] > 0
    assert second == 0, f"{second} new graph(s) on the longer stream: recompiling per chunk"
    assert first == 2, f"{first} graphs for score-first TTT (one scoring, one SGD)"


def test_whole_run_through_the_compiled_path(demo_data, tmp_path):
    """The trainer with every compiled code path on, with dynamo alone (run.compile_backend =
    "eager"): compile warm-up rolled back, late QAT, EMA, validation on the compiled model, then the
    compiled scoring model for the round trip, sliding eval and score-first TTT. It must finish with
    the eager run's numbers and the log must say it compiled."""
    from pgolf.trainers.train import run_training

    def config(run_dir, compile_on: bool) -> TrainConfig:
        cfg = load_experiment(os.path.join(os.path.dirname(STACKS[0]), "pr691.toml")).resolved()
        shrink(cfg.model)
        cfg.model.vocab_size = 1024
        d, s = cfg.data, cfg.schedule
        d.data_path, d.tokenizer_path = str(demo_data.data_path), str(demo_data.tokenizer_path)
        d.train_seq_len, d.train_batch_tokens, d.grad_accum_steps, d.val_tokens_limit = 64, 512, 1, 2048
        s.iterations, s.warmdown_iters, s.warmup_steps, s.max_wallclock_seconds = 8, 4, 2, 0.0
        cfg.avg.late_qat_threshold = 0.6  # switches on during the warmdown
        cfg.avg.swa_every = 0
        cfg.eval.val_loss_every, cfg.eval.val_batch_size, cfg.eval.train_log_every = 4, 1024, 4
        cfg.eval.sliding_stride, cfg.eval.sliding_pass, cfg.eval.sliding_batch_seqs = 32, True, 8
        cfg.ttt.chunk_tokens, cfg.ttt.epochs, cfg.ttt.batch_seqs = 512, 1, 4
        cfg.quant.gptq = False
        cfg.quant.compressor, cfg.quant.compress_level = "zlib", 9  # the GPU image has no zstandard wheel
        cfg.run.device, cfg.run.threads, cfg.run.run_dir, cfg.run.seed = "cpu", 1, str(run_dir), 3
        cfg.run.compile, cfg.run.compile_backend = compile_on, "eager"
        return cfg

    eager = run_training(config(tmp_path / "eager", False))
    g0 = graphs()
    from pgolf.ttt_audit import audit_ttt
    compiled = audit_ttt(run_training(config(tmp_path / "compiled", True)), str(tmp_path / "compiled"),
                         config(tmp_path / "compiled", True))
    # training; in-loop validation (no grad, eval mode); then on the scoring model: round trip (no
    # grad), sliding eval and TTT scoring (inference mode, one graph), TTT SGD (training)
    assert graphs() - g0 == 5, f"{graphs() - g0} graphs compiled in the run"
    log = (tmp_path / "compiled" / "train.log").read_text()
    assert "compile: eager, dynamic=False" in log and "late_qat:enabled" in log
    assert "compile: off" in (tmp_path / "eager" / "train.log").read_text()
    assert compiled["final/phase"] == "ttt" and compiled["ttt"]["trace_verdict"]["compliant"]
    for key in ("prequant/val_loss", "quant/val_loss", "sliding/val_loss", "final/val_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-9), key  # dynamo alone: the same ops
