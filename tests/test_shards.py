from __future__ import annotations

import numpy as np
import pytest

from pgolf.trainers.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardError,
    list_shards,
    read_header,
    read_shard,
    shard_num_tokens,
    write_shard,
)


def _header(path):
    return np.fromfile(path, dtype="<i4", count=256)


def test_round_trip_and_exact_layout(tmp_path):
    tokens = np.array([1, 5, 0, 1023, 65535, 7], dtype=np.int64)
    path = tmp_path / "fineweb_train_000000.bin"
    assert write_shard(path, tokens) == tokens.size
    header = _header(path)
    assert header[0] == MAGIC and header[1] == 1 and header[2] == tokens.size
    assert not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * tokens.size
    body = path.read_bytes()[HEADER_BYTES:]
    assert body == tokens.astype("<u2").tobytes()  # little-endian uint16 body
    out = read_shard(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, tokens)
    assert shard_num_tokens(path) == tokens.size


def test_round_trip_empty_and_uint16_input(tmp_path):
    path = tmp_path / "empty.bin"
    write_shard(path, np.array([], dtype=np.uint16))
    assert read_shard(path).size == 0
    path2 = tmp_path / "u16.bin"
    arr = np.arange(100, dtype=np.uint16)
    write_shard(path2, arr)
    np.testing.assert_array_equal(read_shard(path2, vocab_size=100), arr)


@pytest.mark.parametrize("bad, what", [([1, 65536], "65536"), ([3, -1], "negative token id -1")])
def test_write_refuses_out_of_range_ids(tmp_path, bad, what):
    path = tmp_path / "x.bin"
    with pytest.raises(ShardError, match=what):
        write_shard(path, np.array(bad, dtype=np.int64))
    assert not path.exists()


def _write_raw(path, header_vals, body: bytes):
    header = np.zeros(256, dtype="<i4")
    for i, v in enumerate(header_vals):
        header[i] = v
    path.write_bytes(header.tobytes() + body)


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad_magic.bin"
    _write_raw(path, [12345, 1, 2], np.array([1, 2], "<u2").tobytes())
    with pytest.raises(ShardError) as exc:
        read_shard(path)
    msg = str(exc.value)
    assert str(path) in msg and "bad magic number 12345" in msg and "20240520" in msg


def test_wrong_version(tmp_path):
    path = tmp_path / "bad_version.bin"
    _write_raw(path, [MAGIC, 2, 2], np.array([1, 2], "<u2").tobytes())
    with pytest.raises(ShardError) as exc:
        read_shard(path)
    assert str(path) in str(exc.value) and "unsupported shard version 2" in str(exc.value)


def test_truncated_and_oversized_are_distinct(tmp_path):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(10))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(data[:-4])
    with pytest.raises(ShardError) as exc:
        read_shard(trunc)
    msg = str(exc.value)
    assert str(trunc) in msg and "truncated shard" in msg and "10 tokens" in msg and str(len(data) - 4) in msg
    over = tmp_path / "over.bin"
    over.write_bytes(data + b"\x00\x00")
    with pytest.raises(ShardError) as exc:
        read_shard(over)
    msg = str(exc.value)
    assert str(over) in msg and "oversized shard" in msg and "2 extra" in msg
    short = tmp_path / "short.bin"
    short.write_bytes(data[:100])
    with pytest.raises(ShardError, match="shorter than the 1024-byte shard header"):
        read_header(short)


def test_token_id_outside_vocab(tmp_path):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, [1, 5, 1023, 1024, 2000, 3])
    np.testing.assert_array_equal(read_shard(path, vocab_size=2001)[:3], [1, 5, 1023])
    with pytest.raises(ShardError) as exc:
        read_shard(path, vocab_size=1024)
    msg = str(exc.value)
    assert str(path) in msg and "token id 1024 at position 3" in msg and "vocab_size=1024" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ShardError, match="not found"):
        read_shard(tmp_path / "nope.bin")


def test_list_shards(tmp_path):
    for name in ["fineweb_train_000001.bin", "fineweb_train_000000.bin", "fineweb_val_000000.bin", "other.bin"]:
        write_shard(tmp_path / name, [1, 2, 3])
    assert [p.name for p in list_shards(tmp_path, "train")] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert [p.name for p in list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShardError) as exc:
        list_shards(empty, "train")
    assert str(empty) in str(exc.value) and "fineweb_train_*.bin" in str(exc.value)
    with pytest.raises(ShardError, match="does not exist"):
        list_shards(tmp_path / "missing", "val")
    with pytest.raises(ShardError, match="unknown split"):
        list_shards(tmp_path, "test")
