"""Graphs torch.compile builds for the trainer's forward and scoring passes, counted with dynamo's
`eager` backend on the CPU (dynamo decides graph breaks and recompiles; no inductor, no GPU needed).

    python benchmarks/compile_graphs.py                         # this checkout's trainer
    git worktree add /tmp/old 1bc1d35 && python benchmarks/compile_graphs.py --trainer-src /tmp/old

--trainer-src points pgolf.trainers at another checkout's trainers/ folder, so two versions can be
compared side by side. Prints, for the pr691 model at tiny shapes, graphs and breaks of one training
and one inference-mode forward; then, on a 2-layer model, graphs compiled by two plain-eval passes and
two sliding-eval passes over a stream with a short last batch and window, and by score-first TTT on 3
chunks then on 7 (as rank 0 of 2).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer-src", help="a checkout whose trainers/ folder to measure (default: this one)")
    args = ap.parse_args(argv)
    import pgolf.trainers

    if args.trainer_src:
        pgolf.trainers.__path__[:] = [os.path.join(os.path.abspath(args.trainer_src), "trainers")]
    from torch._dynamo.utils import counters

    from gpu_bench import load_stack, synthetic_luts
    from pgolf.trainers.config import ModelConfig, TrainConfig
    from pgolf.trainers.evaluate import evaluate
    from pgolf.trainers.model import GPT
    from pgolf.trainers.sliding import evaluate_sliding
    from pgolf.trainers.ttt import run_score_first
    from pgolf.trainers.ttt_trace import TraceWriter

    cpu = torch.device("cpu")
    print(f"trainer sources: {os.path.dirname(pgolf.trainers.__path__[0])}  torch {torch.__version__}")

    def graphs() -> int:
        return int(counters["stats"]["unique_graphs"])

    torch.manual_seed(0)
    model = GPT(load_stack("experiments/stacks/pr691.toml", tiny=True).model)
    x = torch.randint(0, 1024, (4, 128))
    y = torch.randint(0, 1024, (4, 128))
    ex = torch._dynamo.explain(model)(x, y)
    print(f"pr691 tiny forward, training:       {ex.graph_count} graph(s), {ex.graph_break_count} break(s)")
    model.eval()
    with torch.inference_mode():
        ex = torch._dynamo.explain(model)(x, y, reduction="none")
    print(f"pr691 tiny forward, inference mode: {ex.graph_count} graph(s), {ex.graph_break_count} break(s)")

    vocab, seq = 96, 32
    luts = synthetic_luts(vocab, cpu)

    def stream(n: int, seed: int) -> torch.Tensor:
        return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))

    torch._dynamo.reset()
    model = GPT(ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=vocab, rope_dims=8,
                            rope_ntk_ref_len=0, smear_gate="v2", bigram_hash="v2", bigram_buckets=64,
                            bigram_dim=16)).eval()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    val = stream(11 * seq + 20, 1)  # 11 sequences in batches of 4; sliding: a short final window
    g0 = graphs()
    for _ in range(2):
        evaluate(compiled, val, luts, seq_len=seq, batch_tokens=4 * seq, device=cpu)
    g1 = graphs()
    for _ in range(2):
        evaluate_sliding(compiled, val, luts, seq_len=seq, stride=8, batch_seqs=8, device=cpu)
    g2 = graphs()
    print(f"plain eval, 2 passes:   {g1 - g0} graph(s)")
    print(f"sliding eval, 2 passes: {g2 - g1} graph(s)")

    torch._dynamo.reset()
    cfg = TrainConfig()
    cfg.model = ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=vocab, rope_dims=8)
    cfg.data.train_seq_len = seq
    cfg.eval.sliding_stride, cfg.eval.sliding_batch_seqs = 16, 4
    t = cfg.ttt
    t.mode, t.chunk_tokens, t.epochs, t.batch_seqs, t.lr = "score_first", 4 * seq, 2, 2, 0.01
    compiled = torch.compile(GPT(cfg.model), backend="eager", dynamic=False)
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for chunks in (3, 7):
            trace = TraceWriter(os.path.join(tmp, f"trace{chunks}.jsonl"))
            before = graphs()
            run_score_first(compiled, stream(chunks * t.chunk_tokens + 7, chunks), luts, cfg, cpu, 0, 2, trace)
            trace.close()
            counts.append(graphs() - before)
    print(f"score-first TTT, 3 chunks then 7: {counts[0]} graph(s), then {counts[1]} more")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.chdir(ROOT)
    sys.exit(main())
