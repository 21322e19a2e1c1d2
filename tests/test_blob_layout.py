"""quant.layout = "smallest": every layout is compressed and the smallest blob kept; each loads alone."""
from __future__ import annotations

import torch

from pgolf.trainers import serialize
from pgolf.trainers.config import QuantConfig


def test_smallest_keeps_the_smallest_blob_and_it_loads_without_a_hint():
    g = torch.Generator().manual_seed(0)
    tensors = {"b.q": (torch.randn(64, 96, generator=g) * 8).round().clamp(-31, 31).to(torch.int8),
               "b.scale": torch.rand(64, generator=g).half(), "a.w": torch.randn(40, generator=g)}
    meta = {"tensors": {"b": {"kind": "int", "category": "mlp", "format": "int6"}}}
    packs = [serialize.pack(tensors, meta, order=serialize.layout_order(tensors, meta, lay)) for lay in serialize.LAYOUTS]
    sizes = [len(serialize.compress(p, "zlib", 9)) for p in packs]
    packed, blob = serialize.smallest(packs, "zlib", 9)
    assert len(blob) == min(sizes) and packed == packs[sizes.index(min(sizes))]  # the first on a tie
    assert len({bytes(p) for p in packs}) > 1  # the layouts really differ
    for p in packs:
        got, _ = serialize.unpack(p)
        assert all(torch.equal(got[k], v) for k, v in tensors.items())
    got, _ = serialize.unpack(serialize.decompress(blob))
    assert all(torch.equal(got[k], v) for k, v in tensors.items())
    QuantConfig(layout="smallest").validate()
