"""Sliding-window evaluation: every position scored exactly once (no tail double count), context of at
least seq_len - stride, and stride == seq_len equal to the plain evaluation bit for bit."""
import pytest
import torch

from pgolf.trainers.bpb import ByteLUTs
from pgolf.trainers.config import ModelConfig
from pgolf.trainers.evaluate import evaluate
from pgolf.trainers.model import GPT
from pgolf.trainers.sliding import evaluate_sliding, plan_windows, rank_slice, score_windows

VOCAB = 96


def synthetic_luts(vocab=VOCAB, seed=0):
    g = torch.Generator().manual_seed(seed)
    boundary = torch.zeros(vocab, dtype=torch.bool)
    boundary[:2] = True
    return ByteLUTs(base_bytes=torch.randint(1, 5, (vocab,), generator=g).to(torch.int16) * (~boundary),
                    has_leading_space=torch.rand(vocab, generator=g) < 0.3, is_boundary=boundary)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=VOCAB))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # zero-init projections would make every position alike
    return model.eval()


def val_stream(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g)


def coverage(plan):
    counts = torch.zeros(plan.n_pos, dtype=torch.int64)
    for ws, ln, sf in zip(plan.starts.tolist(), plan.lengths.tolist(), plan.score_from.tolist()):
        assert ln <= plan.seq_len and ws + ln <= plan.n_pos
        counts[ws + sf: ws + ln] += 1
        if ws > 0:
            assert sf == plan.seq_len - plan.stride  # >= seq_len - stride tokens of context
    return counts


@pytest.mark.parametrize("n_pos,seq_len,stride", [(1024, 64, 64), (1024, 64, 16), (1000, 64, 16), (1003, 64, 7),
                                                  (50, 64, 16), (64, 64, 16), (65, 64, 16), (130, 64, 64)])
def test_every_position_scored_exactly_once(n_pos, seq_len, stride):
    plan = plan_windows(n_pos, seq_len, stride)
    assert torch.equal(coverage(plan), torch.ones(n_pos, dtype=torch.int64))
    assert int(plan.score_from[0]) == 0  # the first window is scored fully
    assert sum(int(plan.lengths[i] > plan.seq_len) for i in range(len(plan))) == 0
    assert sum(int(plan.lengths[i] < plan.seq_len) for i in range(len(plan))) <= 1  # only the tail is short


def test_tail_is_counted_once_where_the_records_rule_repeats_it():
    n_pos, seq_len, stride = 1000, 64, 16
    # the records' rule: a window at every multiple of the stride while tokens remain, each scoring
    # its last `stride` positions, so partial tail windows re-score the final positions
    records = torch.zeros(n_pos, dtype=torch.int64)
    for ws in range(0, n_pos, stride):
        end = min(ws + seq_len, n_pos)
        records[ws if ws == 0 else max(end - stride, ws): end] += 1
    assert int(records[-1]) > 1 and int(records.sum()) > n_pos
    ours = coverage(plan_windows(n_pos, seq_len, stride))
    assert int(ours.max()) == 1 and int(ours.sum()) == n_pos


def test_stride_equal_to_seq_len_matches_plain_eval_exactly():
    model, luts = tiny_model(), synthetic_luts()
    seq_len = 32
    val = val_stream(24 * seq_len + 1)
    for world in (1, 3):
        plain, slid = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        for rank in range(world):
            p = evaluate(model, val, luts, seq_len=seq_len, batch_tokens=4 * seq_len * world, device=torch.device("cpu"),
                         rank=rank, world_size=world)
            s = evaluate_sliding(model, val, luts, seq_len=seq_len, stride=seq_len, batch_seqs=4,
                                 device=torch.device("cpu"), rank=rank, world_size=world)
            assert (p.val_loss, p.val_bpb, p.tokens, p.bytes) == (s.val_loss, s.val_bpb, s.tokens, s.bytes)
            plain += torch.tensor([p.val_loss * p.tokens, p.tokens, p.bytes], dtype=torch.float64)
            slid += torch.tensor([s.val_loss * s.tokens, s.tokens, s.bytes], dtype=torch.float64)
        assert torch.equal(plain, slid)


def test_sliding_scores_all_tokens_with_more_context():
    model, luts = tiny_model(), synthetic_luts()
    val = val_stream(20 * 32 + 1)
    plain = evaluate(model, val, luts, seq_len=32, batch_tokens=256, device=torch.device("cpu"))
    slid = evaluate_sliding(model, val, luts, seq_len=32, stride=8, batch_seqs=5, device=torch.device("cpu"))
    assert slid.tokens == plain.tokens == val.numel() - 1
    assert slid.bytes == plain.bytes
    assert slid.val_loss != plain.val_loss


def test_rank_split_sums_to_the_single_process_score():
    model, luts = tiny_model(), synthetic_luts()
    val = val_stream(777)
    plan = plan_windows(val.numel() - 1, 32, 8)
    whole = score_windows(model, val, luts, plan, 0, len(plan), 4, torch.device("cpu"))
    parts = sum(score_windows(model, val, luts, plan, *rank_slice(len(plan), r, 3), 4, torch.device("cpu"))
                for r in range(3))
    assert whole[1] == parts[1] == 776 and whole[2] == parts[2]
    assert torch.allclose(whole, parts, rtol=1e-9)
