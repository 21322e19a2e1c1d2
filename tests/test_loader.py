from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.trainers.loader import DistributedTokenLoader, LoaderError, TokenStream, load_validation_tokens
from pgolf.trainers.shards import ShardError, write_shard


@pytest.fixture()
def three_shards(tmp_path):
    # distinct, recognisable ids: shard k holds k*1000 + i; written out of order on purpose
    sizes = [50, 7, 30]
    paths = []
    for k in (2, 0, 1):
        p = tmp_path / f"fineweb_train_{k:06d}.bin"
        write_shard(p, np.arange(sizes[k]) + 1000 * k)
        paths.append(p)
    stream = np.concatenate([np.arange(s) + 1000 * k for k, s in enumerate(sizes)])
    return paths, stream


def test_token_stream_crosses_shards_and_wraps(three_shards):
    paths, stream = three_shards
    ts = TokenStream(paths)  # unsorted input: the stream follows the sorted file names
    got = torch.cat([ts.take(n) for n in (10, 45, 3, 60, 0, 100)])
    assert got.dtype == torch.int64
    total = 10 + 45 + 3 + 60 + 100
    expected = np.resize(stream, total)  # np.resize repeats the array: the wrap-around
    np.testing.assert_array_equal(got.numpy(), expected)


def test_token_stream_glob_pattern(three_shards, tmp_path):
    _, stream = three_shards
    ts = TokenStream(str(tmp_path / "fineweb_train_*.bin"))
    np.testing.assert_array_equal(ts.take(len(stream)).numpy(), stream)
    with pytest.raises(LoaderError, match="no shard files match"):
        TokenStream(str(tmp_path / "fineweb_val_*.bin"))


def test_two_ranks_get_disjoint_spans_that_rebuild_the_stream(three_shards):
    paths, stream = three_shards
    seq_len, accum, world = 4, 2, 2
    global_tokens = 32  # local = 32 // (2*2) = 8 tokens = 2 sequences per rank per micro-step
    loaders = [DistributedTokenLoader(paths, rank=r, world_size=world, device="cpu") for r in range(world)]
    n_calls = 9  # 9 calls * 2 ranks * 9 tokens = 162 > 87 tokens in the stream: wraps around
    rebuilt = []
    for _ in range(n_calls):
        for r, ld in enumerate(loaders):
            x, y = ld.next_batch(global_tokens, seq_len, accum)
            assert x.shape == y.shape == (2, seq_len) and x.dtype == y.dtype == torch.int64
            # y is x shifted by one inside the rank's span of local+1 tokens
            span = torch.cat([x.reshape(-1), y.reshape(-1)[-1:]])
            np.testing.assert_array_equal(span[1:].numpy(), y.reshape(-1).numpy())
            rebuilt.append(span.numpy())
    # rank 0's span, then rank 1's span, then the next call's: together exactly the stream
    np.testing.assert_array_equal(np.concatenate(rebuilt), np.resize(stream, n_calls * world * 9))


def test_single_rank_matches_plain_stream(three_shards):
    paths, stream = three_shards
    ld = DistributedTokenLoader(paths, 0, 1)
    x, y = ld.next_batch(16, 8, 1)
    np.testing.assert_array_equal(x.reshape(-1).numpy(), stream[:16])
    np.testing.assert_array_equal(y.reshape(-1).numpy(), stream[1:17])
    x2, _ = ld.next_batch(16, 8, 1)
    np.testing.assert_array_equal(x2.reshape(-1).numpy(), stream[17:33])


def test_batch_geometry_errors(three_shards):
    paths, _ = three_shards
    ld = DistributedTokenLoader(paths, rank=1, world_size=2)
    with pytest.raises(LoaderError, match="not divisible by world_size\\*grad_accum_steps"):
        ld.next_batch(30, 4, 2)
    with pytest.raises(LoaderError, match="not a multiple of seq_len=3"):
        ld.next_batch(32, 3, 2)
    with pytest.raises(LoaderError, match="positive"):
        ld.next_batch(32, 4, 0)
    with pytest.raises(LoaderError, match="rank must be in"):
        DistributedTokenLoader(paths, rank=2, world_size=2)


def test_vocab_check_reaches_the_loader(tmp_path):
    p = tmp_path / "fineweb_train_000000.bin"
    write_shard(p, [1, 2, 5000])
    with pytest.raises(ShardError, match="token id 5000 at position 2"):
        TokenStream([p], vocab_size=1024)


def test_validation_truncation_rule(tmp_path):
    a, b = tmp_path / "fineweb_val_000001.bin", tmp_path / "fineweb_val_000000.bin"
    write_shard(a, np.arange(100, 123))  # 23 tokens, sorted second
    write_shard(b, np.arange(0, 20))  # 20 tokens, sorted first
    full = np.concatenate([np.arange(20), np.arange(100, 123)])  # N = 43
    v = load_validation_tokens([a, b], seq_len=8)
    assert v.dtype == torch.int64
    assert v.numel() == ((43 - 1) // 8) * 8 + 1 == 41
    np.testing.assert_array_equal(v.numpy(), full[:41])
    # exactly k*seq_len + 1 tokens are kept whole
    assert load_validation_tokens([a, b], seq_len=6).numel() == 43
    # limit cuts first, then the rule applies: 30 -> ((29)//8)*8+1 = 25
    v = load_validation_tokens([a, b], seq_len=8, limit=30)
    np.testing.assert_array_equal(v.numpy(), full[:25])
    with pytest.raises(LoaderError, match="need at least seq_len\\+1=65"):
        load_validation_tokens([a, b], seq_len=64)
    with pytest.raises(LoaderError, match="limited to 8"):
        load_validation_tokens([a, b], seq_len=8, limit=8)
