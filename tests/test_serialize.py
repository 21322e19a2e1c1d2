"""Pickle-free blob: exact round trip through every compressor, clear errors on corrupt input."""
import io
import zlib

import pytest
import torch

from pgolf.trainers import serialize
from pgolf.trainers.config import QuantConfig
from pgolf.trainers.quant import quantize_state_dict
from pgolf.trainers.serialize import BlobError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.q": torch.randint(-32, 32, (64, 48), generator=g, dtype=torch.int8),
        "a.scale": torch.rand(64, generator=g).half(),
        "ctrl": torch.randn(7, generator=g),
        "emb": torch.randn(10, 3, generator=g).bfloat16(),
        "scalar": torch.tensor(0.25),
        "empty": torch.zeros(0, 5),
        "ids": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


@pytest.mark.parametrize("compressor,level,threads", [("zstd", 3, 0), ("zstd", 3, 2), ("lzma", 6, 0), ("zlib", 9, 0)])
def test_round_trip_is_exact(compressor, level, threads):
    tensors = _tensors()
    meta = {"scheme": "x", "tensors": {"a": {"kind": "int"}}}
    blob = serialize.compress(serialize.pack(tensors, meta), compressor, level, threads)
    back, meta_back = serialize.unpack(serialize.decompress(blob))
    assert meta_back == meta
    assert back.keys() == tensors.keys()
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape, k
        assert torch.equal(back[k].view(torch.uint8) if t.dtype == torch.bfloat16 else back[k],
                           t.view(torch.uint8) if t.dtype == torch.bfloat16 else t), k


def test_quantized_state_round_trip_restores_every_tensor_as_quantized():
    g = torch.Generator().manual_seed(1)
    state = {"tok_emb.weight": torch.randn(300, 256, generator=g), "blocks.0.mlp.fc.weight": torch.randn(512, 256, generator=g),
             "blocks.0.attn_scale": torch.randn(256, generator=g)}
    tensors, meta = quantize_state_dict(state, QuantConfig(mlp_format="int5", passthrough_max_numel=100))
    back, meta_back = serialize.unpack(serialize.decompress(serialize.compress(serialize.pack(tensors, meta), "zstd", 3)))
    assert meta_back == meta
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k


def test_pack_is_deterministic():
    a = serialize.pack(_tensors(), {"m": 1})
    b = serialize.pack(dict(reversed(list(_tensors().items()))), {"m": 1})
    assert a == b


def test_truncated_and_corrupt_blobs_are_clear_errors():
    packed = serialize.pack(_tensors(), {"m": 1})
    for comp in ("zstd", "lzma", "zlib"):
        blob = serialize.compress(packed, comp, 3)
        with pytest.raises(BlobError):
            serialize.unpack(serialize.decompress(blob[: len(blob) // 2]))
        flipped = bytearray(blob)
        flipped[len(flipped) // 2] ^= 0xFF
        with pytest.raises(BlobError):
            serialize.unpack(serialize.decompress(bytes(flipped)))
    with pytest.raises(BlobError, match="empty"):
        serialize.decompress(b"")
    with pytest.raises(BlobError, match="truncated|payload"):
        serialize.unpack(packed[:-10])
    corrupt = bytearray(packed)
    corrupt[-3] ^= 0x01  # a payload bit: only the checksum can see it
    with pytest.raises(BlobError, match="checksum"):
        serialize.unpack(bytes(corrupt))
    with pytest.raises(BlobError, match="magic"):
        serialize.unpack(b"garbage" * 10)


def test_a_pickle_is_refused_not_executed():
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    with pytest.raises(BlobError):
        serialize.unpack(serialize.decompress(zlib.compress(buf.getvalue())))
