"""Pickle-free blob: exact round trip through every compressor, clear errors on corrupt input."""
import io
import struct
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
    corrupt[64 + 3] ^= 0x01  # a payload bit: only the checksum can see it
    with pytest.raises(BlobError, match="checksum"):
        serialize.unpack(bytes(corrupt))
    with pytest.raises(BlobError, match="magic"):
        serialize.unpack(b"garbage" * 10)


def test_a_pickle_is_refused_not_executed():
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    with pytest.raises(BlobError):
        serialize.unpack(serialize.decompress(zlib.compress(buf.getvalue())))


# ---- strict loader (#12.5): every one of these loaded (or inflated fully) before
def _blob(comp="zlib", level=6, **kw):
    return serialize.compress(serialize.pack(_tensors(), {"m": 1}, **kw), comp, level)


@pytest.mark.parametrize("comp", ["zlib", "zstd", "lzma", "brotli"])
def test_trailing_bytes_after_the_stream_are_refused(comp):
    blob = _blob(comp)
    assert serialize.unpack(serialize.decompress(blob))[1] == {"m": 1}
    with pytest.raises(BlobError, match="after the end|cannot decompress"):
        serialize.decompress(blob + b"junk")


def test_header_without_payload_checksum_is_refused():
    import json
    import struct
    packed = serialize.pack(_tensors(), {"m": 1})
    plen, hlen = struct.unpack_from("<QI", packed, len(serialize.MAGIC2))
    start = 64
    payload, header = packed[start:start + plen], json.loads(packed[start + plen:])
    del header["payload_sha256"]
    h = json.dumps(header).encode()
    v2 = packed[:8] + struct.pack("<QI", plen, len(h)) + packed[20:64] + payload + h
    v1 = serialize.MAGIC + struct.pack("<I", len(h)) + h + payload  # the old layout, header first
    for stripped in (v1, v2):
        with pytest.raises(BlobError, match="payload_sha256"):
            serialize.unpack(stripped)


def test_version_1_blobs_still_load_and_the_header_now_goes_last():
    import json
    packed = serialize.pack(_tensors(), {"m": 1})
    plen, hlen = struct.unpack_from("<QI", packed, len(serialize.MAGIC2))
    start = 64
    assert packed[start + plen:].startswith(b"{")  # JSON after the tensor bytes
    header = json.loads(packed[start + plen:])
    assert all(e["offset"] % 64 == 0 for e in header["tensors"])  # every tensor 64-byte aligned
    v1 = serialize.MAGIC + struct.pack("<I", hlen) + packed[start + plen:] + packed[start:start + plen]
    for comp in ("zlib", "zstd"):
        back, meta = serialize.unpack(serialize.decompress(serialize.compress(v1, comp, 3)))
        assert meta == {"m": 1} and torch.equal(back["a.q"], _tensors()["a.q"])


def test_dtype_outside_the_allow_list_is_refused():
    from pgolf.trainers.quant import dequantize_state_dict
    meta = {"tensors": {"w": {"kind": "fp16", "dtype": "Tensor"}}}
    with pytest.raises(BlobError, match="not allowed"):
        dequantize_state_dict({"w": torch.zeros(2, dtype=torch.float16)}, meta)
    with pytest.raises(BlobError, match="not allowed"):
        serialize.dtype_from_name("__class__")


@pytest.mark.parametrize("comp", ["zlib", "zstd", "lzma", "brotli"])
def test_a_bomb_is_not_inflated_past_the_declared_size(comp, monkeypatch):
    packed = serialize.pack({"z": torch.zeros(1000, dtype=torch.int8)}, {"m": 1})
    bomb = serialize.compress(packed + b"\0" * (64 << 20), comp, 1 if comp != "brotli" else 1)
    seen = []
    real = serialize._Stream.read
    monkeypatch.setattr(serialize._Stream, "read", lambda self, n: seen.append(n) or real(self, n))
    with pytest.raises(BlobError, match="inflates past"):
        serialize.decompress(bomb)
    assert sum(seen) <= len(packed) + 1  # bounded reads only: never the 64 MiB behind the header


def test_brotli_and_byte_shuffle_round_trip_bit_exact():
    tensors = _tensors()
    for shuffle in (False, True):
        blob = serialize.compress(serialize.pack(tensors, {"m": 1}, byte_shuffle=shuffle), "brotli", 11)
        back, _ = serialize.unpack(serialize.decompress(blob))
        for k, t in tensors.items():
            a, b = (x.view(torch.uint8) if x.dtype == torch.bfloat16 else x for x in (back[k], t))
            assert back[k].dtype == t.dtype and torch.equal(a, b), (shuffle, k)
    assert serialize.pack(tensors, {}, byte_shuffle=True) != serialize.pack(tensors, {})


def test_brotli_blob_over_many_decoder_blocks_round_trips_bit_exact():
    # brotli's Python decoder hands output out in 32 KB-doubling blocks; a loader that stopped on
    # can_accept_more_data() rejected every blob above ~32 KB, so the small blobs above never saw it.
    g = torch.Generator().manual_seed(1)
    tensors = {"w.q": torch.randint(-31, 32, (256, 640), generator=g, dtype=torch.int8),
               "w.scale": torch.rand(512, generator=g).half(), "emb": torch.randn(256, 128, generator=g).half()}
    packed = serialize.pack(tensors, {"m": 1}, byte_shuffle=True)
    assert len(packed) > 6 * 32 * 1024
    blob = serialize.compress(packed, "brotli", 11)
    assert serialize.decompress(blob) == packed
    back, _ = serialize.unpack(packed)
    assert all(back[k].dtype == t.dtype and torch.equal(back[k], t) for k, t in tensors.items())


@pytest.mark.parametrize("compressor,shuffle", [("zstd", False), ("lzma", True), ("zlib", False), ("brotli", True)])
def test_the_shipped_loader_reads_its_own_blob_as_the_strict_one_does(compressor, shuffle):
    """A packed train_gpt.py loads the blob it just wrote with load_own (the strict loader stays in the
    package); both give the same tensors, and a flipped payload bit is still an error."""
    tensors, meta = _tensors(), {"m": 1}
    packed = serialize.pack(tensors, meta, byte_shuffle=shuffle)
    blob = serialize.compress(packed, compressor, 5)
    own, own_meta = serialize.load_own(blob, QuantConfig(compressor=compressor))
    strict, strict_meta = serialize.unpack(serialize.decompress(blob))
    assert own_meta == strict_meta == meta and own.keys() == strict.keys()
    for k, t in strict.items():
        assert own[k].dtype == t.dtype and own[k].shape == t.shape, k
        assert torch.equal(own[k].view(torch.uint8) if t.dtype == torch.bfloat16 else own[k],
                           t.view(torch.uint8) if t.dtype == torch.bfloat16 else t), k
    flipped = bytearray(packed)
    flipped[64] ^= 1
    with pytest.raises(BlobError, match="checksum"):
        serialize.load_own(serialize.compress(bytes(flipped), compressor, 5), QuantConfig(compressor=compressor))
