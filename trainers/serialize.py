"""Pickle-free tensor container + compression for the counted model blob.

Layout: MAGIC | u32 header length | UTF-8 JSON header | raw little-endian tensor bytes.
The header lists every tensor (dtype, shape, offset, nbytes) plus free-form metadata, so loading a
downloaded artifact never executes code (torch.load would unpickle). A SHA-256 of the payload in
the header turns silent corruption (a flipped bit that still decompresses) into a clear error.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib

import numpy as np
import torch

MAGIC = b"PGOLFQ\x01\x00"
_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "uint8": torch.uint8, "bool": torch.bool,
}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"


class BlobError(ValueError):
    """The blob is corrupt, truncated or not a pgolf artifact."""


def pack(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    entries, chunks, offset = [], [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise BlobError(f"tensor {name}: dtype {dtype} is not serialisable")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        entries.append({"name": name, "dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    payload = b"".join(chunks)
    header = json.dumps({"tensors": entries, "meta": meta, "payload_bytes": offset,
                         "payload_sha256": hashlib.sha256(payload).hexdigest()},
                        sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def unpack(blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    if len(blob) < len(MAGIC) + 4 or not blob.startswith(MAGIC):
        raise BlobError("not a pgolf tensor container (bad magic)")
    (hlen,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    if start + hlen > len(blob):
        raise BlobError(f"truncated header: needs {hlen} bytes, {len(blob) - start} present")
    try:
        header = json.loads(blob[start:start + hlen])
        entries = header["tensors"]
        if not isinstance(entries, list) or not isinstance(header.get("meta"), dict):
            raise ValueError("header lacks a tensor list or metadata")
    except (ValueError, KeyError, TypeError) as exc:
        raise BlobError(f"corrupt header: {exc}") from exc
    payload = memoryview(blob)[start + hlen:]
    if len(payload) != header.get("payload_bytes"):
        raise BlobError(f"payload is {len(payload)} bytes, header says {header.get('payload_bytes')} (truncated or padded)")
    digest = header.get("payload_sha256")
    if digest is not None and hashlib.sha256(payload).hexdigest() != digest:
        raise BlobError("payload checksum mismatch: the blob is corrupt")
    tensors = {}
    for e in entries:
        try:
            dtype = _DTYPES.get(e["dtype"])
            bad_range = not (0 <= e["offset"] and 0 <= e["nbytes"] and e["offset"] + e["nbytes"] <= len(payload))
        except (KeyError, TypeError) as exc:
            raise BlobError(f"corrupt header entry {e!r}: {exc}") from exc
        if dtype is None or bad_range:
            raise BlobError(f"tensor {e.get('name')}: bad dtype or range")
        buf = bytearray(payload[e["offset"]:e["offset"] + e["nbytes"]])
        if dtype == torch.bfloat16:
            t = torch.frombuffer(buf, dtype=torch.uint8).view(torch.bfloat16) if buf else torch.empty(0, dtype=dtype)
        else:
            np_dtype = np.dtype(e["dtype"]) if e["dtype"] != "bool" else np.bool_
            t = torch.from_numpy(np.frombuffer(buf, dtype=np_dtype).copy())
        expected = int(np.prod(e["shape"])) if e["shape"] else 1
        if t.numel() != expected:
            raise BlobError(f"tensor {e['name']}: {t.numel()} elements, shape {e['shape']} needs {expected}")
        tensors[e["name"]] = t.reshape(e["shape"])
    return tensors, header["meta"]


def compress(data: bytes, compressor: str, level: int, threads: int = 0) -> bytes:
    if compressor == "zlib":
        return zlib.compress(data, level)
    if compressor == "zstd":
        import zstandard  # imported here so a missing wheel is a loud error, never a silent zlib fallback
        return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compress(data)
    if compressor == "lzma":
        return lzma.compress(data, preset=level)
    raise ValueError(f"unknown compressor '{compressor}' (expected zlib, zstd or lzma)")


def decompress(data: bytes) -> bytes:
    if not data:
        raise BlobError("empty blob")
    try:
        if data.startswith(_ZSTD_MAGIC):
            import zstandard
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31)
        if data.startswith(_XZ_MAGIC):
            return lzma.decompress(data)
        return zlib.decompress(data)
    except Exception as exc:  # every codec has its own error type; the caller needs one
        raise BlobError(f"cannot decompress blob ({len(data)} bytes): {exc}") from exc
