"""Pickle-free tensor container + compression for the counted model blob.

Layout: MAGIC2 | u64 payload length | u32 header length | zeros to byte 64 | raw little-endian tensor
bytes, each tensor zero-padded to a multiple of 64 | UTF-8 JSON header. Two measured zstd effects set
it (benchmarks/RESULTS.md): a header ahead of the payload cost ~7%, and tensors that do not start on
64-byte boundaries (as torch.save aligns them) cost ~4% on heavy-tailed int6 codes. Version 1 blobs (MAGIC | u32 header
length | header | payload) still load.
The header lists every tensor (dtype, shape, offset, nbytes) plus free-form metadata, so loading a
downloaded artifact never executes code (torch.load would unpickle). A SHA-256 of the payload in
the header turns silent corruption (a flipped bit that still decompresses) into a clear error.
Loading is strict: one compressed stream, nothing after it, output bounded by the header's size.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import struct
import zlib

import numpy as np
import torch

from .config.quant import COMPRESSORS, QuantConfig

MAGIC = b"PGOLFQ\x01\x00"  # version 1: header first
MAGIC2 = b"PGOLFQ\x02\x00"  # version 2: header last
_V2 = struct.Struct("<QI")
_ALIGN = 64  # the payload and every tensor start on a 64-byte boundary
_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "uint8": torch.uint8, "bool": torch.bool,
}
MAX_HEADER = 1 << 24
MAX_PAYLOAD = 1 << 31  # 2 GiB: far above any blob under the 16 MB cap, far below a bomb's reach
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BROTLI_TAG = b"PGBR"  # brotli has no magic number: a 4-byte tag makes the codec detectable


class BlobError(ValueError):
    """The blob is corrupt, truncated or not a pgolf artifact."""


def dtype_from_name(name: str) -> torch.dtype:
    """The allow-listed dtype of a header name (never getattr(torch, name) on downloaded text)."""
    if not isinstance(name, str) or name not in _DTYPES:
        raise BlobError(f"dtype {name!r} is not allowed (expected one of {', '.join(_DTYPES)})")
    return _DTYPES[name]


def _planes(raw: bytes, size: int, inverse: bool) -> bytes:
    """Byte shuffle: byte k of every element together (fp16 high bytes compress far better alone)."""
    if size == 1 or not raw:
        return raw
    a = np.frombuffer(raw, dtype=np.uint8)
    return (a.reshape(size, -1).T if inverse else a.reshape(-1, size).T).tobytes()


def pack(tensors: dict[str, torch.Tensor], meta: dict, *, byte_shuffle: bool = False,
         order: list[str] | None = None) -> bytes:
    """`order`: tensor names in payload order (default sorted); grouping alike tensors helps the codec."""
    names = sorted(tensors) if order is None else list(order)
    if sorted(names) != sorted(tensors):
        raise BlobError("pack order must name every tensor exactly once")
    entries, chunks, offset = [], [], 0
    for name in names:
        t = tensors[name].detach().contiguous().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise BlobError(f"tensor {name}: dtype {dtype} is not serialisable")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        if byte_shuffle:
            raw = _planes(raw, t.element_size(), False)
        entries.append({"name": name, "dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(raw)})
        chunks.append(raw + b"\0" * (-len(raw) % _ALIGN))
        offset += len(chunks[-1])
    payload = b"".join(chunks)
    head = {"tensors": entries, "meta": meta, "payload_bytes": offset, "payload_sha256": hashlib.sha256(payload).hexdigest()}
    if byte_shuffle:
        head["byte_shuffle"] = True
    header = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    prefix = MAGIC2 + _V2.pack(len(payload), len(header))
    return prefix + b"\0" * (_ALIGN - len(prefix)) + payload + header


LAYOUTS = ("state", "sorted", "grouped")


def layout_order(tensors: dict[str, torch.Tensor], meta: dict, layout: str) -> list[str]:
    """Payload order. "state": as quantize_state_dict emits them (state_dict order, codes then scales:
    the records' torch.save order); "sorted": by name; "grouped": codes by category and format, then
    scales, then everything else, each in state order."""
    names = list(tensors)
    if layout == "state":
        return names
    if layout == "sorted":
        return sorted(names)
    if layout != "grouped":
        raise ValueError(f"unknown blob layout {layout!r} (expected {', '.join(LAYOUTS)})")
    info = meta.get("tensors", {})

    def key(n: str):
        base, _, part = n.rpartition(".")
        e = info.get(base, {}) if part in ("q", "scale") else {}
        if part == "q" and e.get("kind") == "int":
            return (0, e.get("category", ""), e.get("format", ""))
        if part == "scale" and e.get("kind") == "int":
            return (1, "", "")
        return (2, str(tensors[n].dtype), "")
    return sorted(names, key=key)


def _header(blob: bytes | memoryview) -> tuple[dict, memoryview]:
    """The parsed header and the payload bytes of a container of either version."""
    blob = memoryview(blob)
    if len(blob) >= _ALIGN and bytes(blob[:len(MAGIC2)]) == MAGIC2:
        plen, hlen = _V2.unpack_from(blob, len(MAGIC2))
        start = _ALIGN
        if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
            raise BlobError(f"declared sizes (payload {plen}, header {hlen}) are over the limits")
        if start + plen + hlen != len(blob):
            raise BlobError(f"container is {len(blob)} bytes, its sizes say {start + plen + hlen} (truncated or padded)")
        text, payload = blob[start + plen:], blob[start:start + plen]
    elif len(blob) >= len(MAGIC) + 4 and bytes(blob[:len(MAGIC)]) == MAGIC:
        (hlen,) = struct.unpack_from("<I", blob, len(MAGIC))
        start = len(MAGIC) + 4
        if hlen > MAX_HEADER:
            raise BlobError(f"header of {hlen} bytes is larger than the {MAX_HEADER} allowed")
        if start + hlen > len(blob):
            raise BlobError(f"truncated header: needs {hlen} bytes, {len(blob) - start} present")
        text, payload = blob[start:start + hlen], blob[start + hlen:]
    else:
        raise BlobError("not a pgolf tensor container (bad magic)")
    try:
        header = json.loads(bytes(text))
        if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) \
                or not isinstance(header.get("meta"), dict):
            raise ValueError("header lacks a tensor list or metadata")
        size = header.get("payload_bytes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_PAYLOAD:
            raise ValueError(f"payload_bytes {size!r} is not a size up to {MAX_PAYLOAD}")
        if not isinstance(header.get("payload_sha256"), str):
            raise ValueError("no payload_sha256: every pgolf blob carries its payload checksum")
    except (ValueError, TypeError) as exc:
        raise BlobError(f"corrupt header: {exc}") from exc
    return header, payload


def _decode(e: dict, payload, shuffled: bool) -> torch.Tensor:
    """One header entry's tensor, flat."""
    dtype = _DTYPES[e["dtype"]]
    raw = bytes(payload[e["offset"]:e["offset"] + e["nbytes"]])
    buf = bytearray(_planes(raw, torch.empty(0, dtype=dtype).element_size(), True) if shuffled else raw)
    if dtype == torch.bfloat16:
        return torch.frombuffer(buf, dtype=torch.uint8).view(torch.bfloat16) if buf else torch.empty(0, dtype=dtype)
    return torch.from_numpy(np.frombuffer(buf, dtype=np.dtype(e["dtype"]) if e["dtype"] != "bool" else np.bool_).copy())


def load_own(data: bytes, q: QuantConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """The blob a packed train_gpt.py wrote moments ago, compressed as `q` says: its checksum is the one
    check (the package's runs and anything loading a blob from elsewhere use unpack(decompress(...)),
    which the shipped file does without, as it does without the platform's config checks)."""
    if q.compressor == "zstd":
        import zstandard
        raw = zstandard.ZstdDecompressor().decompress(data)
    elif q.compressor == "brotli":
        import brotli
        raw = brotli.decompress(data[len(_BROTLI_TAG):])
    else:
        raw = (lzma if q.compressor == "lzma" else zlib).decompress(data)
    plen, _ = _V2.unpack_from(raw, len(MAGIC2))
    payload, header = raw[_ALIGN:_ALIGN + plen], json.loads(raw[_ALIGN + plen:])
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise BlobError("payload checksum mismatch: the blob is corrupt")
    shuffled = header.get("byte_shuffle") is True
    return {e["name"]: _decode(e, payload, shuffled).reshape(e["shape"]) for e in header["tensors"]}, header["meta"]


def unpack(blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    header, payload = _header(blob)
    if len(payload) != header["payload_bytes"]:
        raise BlobError(f"payload is {len(payload)} bytes, header says {header['payload_bytes']} (truncated or padded)")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise BlobError("payload checksum mismatch: the blob is corrupt")
    shuffled = header.get("byte_shuffle") is True
    tensors = {}
    for e in header["tensors"]:
        try:
            dtype = dtype_from_name(e["dtype"])
            bad_range = not (0 <= e["offset"] and 0 <= e["nbytes"] and e["offset"] + e["nbytes"] <= len(payload))
            shape = [int(s) for s in e["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BlobError(f"corrupt header entry {e!r}: {exc}") from exc
        if bad_range:
            raise BlobError(f"tensor {e.get('name')}: byte range outside the payload")
        if e["nbytes"] % torch.empty(0, dtype=dtype).element_size():
            raise BlobError(f"tensor {e['name']}: {e['nbytes']} bytes is not a whole number of {e['dtype']}")
        t = _decode(e, payload, shuffled)
        expected = int(np.prod(shape)) if shape else 1
        if t.numel() != expected:
            raise BlobError(f"tensor {e['name']}: {t.numel()} elements, shape {shape} needs {expected}")
        tensors[e["name"]] = t.reshape(shape)
    return tensors, header["meta"]


def compress(data: bytes, compressor: str, level: int, threads: int = 0) -> bytes:
    if compressor == "zlib":
        return zlib.compress(data, level)
    if compressor == "zstd":
        import zstandard  # imported here so a missing wheel is a loud error, never a silent zlib fallback
        return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compress(data)
    if compressor == "lzma":
        return lzma.compress(data, preset=level)
    if compressor == "brotli":
        import brotli
        return _BROTLI_TAG + brotli.compress(data, quality=level, lgwin=24)
    raise ValueError(f"unknown compressor '{compressor}' (expected {', '.join(COMPRESSORS)})")


def smallest(payloads: list[bytes], compressor: str, level: int, threads: int = 0) -> tuple[bytes, bytes]:
    """(payload, blob) of the payload that compresses smallest, the first on a tie. Each payload's
    header holds its own tensor offsets, so the loader needs no hint of which layout won."""
    best = None
    for p in payloads:
        blob = compress(p, compressor, level, threads)
        if best is None or len(blob) < len(best[1]):
            best = (p, blob)
    return best


class _Stream:
    """Bounded reads from one compressed stream: `read(n)` never inflates more than n bytes."""

    def __init__(self, data: bytes):
        self.data, self.pending = data, b""
        if data.startswith(_ZSTD_MAGIC):
            import zstandard
            self.kind = "zstd"
            self.reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=False)
        elif data.startswith(_XZ_MAGIC):
            self.kind, self.obj = "lzma", lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        elif data.startswith(_BROTLI_TAG):
            import brotli
            self.kind, self.obj, self.data = "brotli", brotli.Decompressor(), data[len(_BROTLI_TAG):]
        else:
            self.kind, self.obj = "zlib", zlib.decompressobj()
        self.fed = False

    def read(self, n: int) -> bytes:
        out = self.pending[:n]
        self.pending = self.pending[n:]
        while len(out) < n:
            chunk = self._more(n - len(out))
            if not chunk:
                break
            out += chunk
        return out

    def _more(self, n: int) -> bytes:
        if self.kind == "zstd":
            return self.reader.read(n)
        if self.kind == "zlib":
            src = self.obj.unconsumed_tail if self.fed else self.data
            self.fed = True
            return self.obj.decompress(src, n) if src or not self.obj.eof else b""
        if self.kind == "lzma":
            if self.obj.eof:
                return b""
            src, self.fed = (b"" if self.fed else self.data), True
            return self.obj.decompress(src, n)
        if self.obj.is_finished():
            return b""
        # No can_accept_more_data() shortcut: brotli 1.2 reports True while output is still pending.
        src, self.fed = (b"" if self.fed else self.data), True
        got = self.obj.process(src, output_buffer_limit=n)
        self.pending += got[n:]  # the limit is a soft cap: keep the excess for the next read
        return got[:n]

    def trailing(self) -> bool:
        """Bytes after the end of the compressed stream (or a stream that never ended)."""
        if self.kind == "zlib":
            return bool(self.obj.unused_data) or not self.obj.eof
        if self.kind == "lzma":
            return bool(self.obj.unused_data) or not self.obj.eof
        if self.kind == "brotli":
            return not self.obj.is_finished()
        import zstandard
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(self.data)  # one frame, already known to inflate to the bounded size
        return bool(obj.unused_data) or not obj.eof


def decompress(data: bytes, max_bytes: int = MAX_PAYLOAD) -> bytes:
    """The container inside one compressed stream, inflated no further than its header declares."""
    if not data:
        raise BlobError("empty blob")
    try:
        s = _Stream(data)
        head = s.read(_ALIGN)
        if head.startswith(MAGIC2) and len(head) == _ALIGN:
            plen, hlen = _V2.unpack_from(head, len(MAGIC2))
            if hlen > MAX_HEADER or len(head) + plen + hlen > max_bytes:
                raise BlobError(f"declared sizes (payload {plen}, header {hlen}) are over the {max_bytes} allowed")
            out = head + s.read(plen + hlen)
        elif head.startswith(MAGIC):
            (hlen,) = struct.unpack_from("<I", head, len(MAGIC))
            if hlen > MAX_HEADER:
                raise BlobError(f"header of {hlen} bytes is larger than the {MAX_HEADER} allowed")
            end = len(MAGIC) + 4 + hlen
            head += s.read(max(0, end - len(head)))
            want = _header(head[:end])[0]["payload_bytes"]
            if end + want > max_bytes:
                raise BlobError(f"header declares {want} payload bytes, more than the {max_bytes} allowed")
            out = head + s.read(max(0, end + want - len(head)))
        else:
            raise BlobError("the stream does not hold a pgolf tensor container (bad magic)")
        if s.read(1):
            raise BlobError(f"the stream inflates past the {len(out)} bytes its header declares (a bomb or a corrupt header)")
        if s.trailing():
            raise BlobError("bytes after the end of the compressed stream (or a stream cut short): not the blob pgolf wrote")
        return out
    except BlobError:
        raise
    except Exception as exc:  # every codec has its own error type; the caller needs one
        raise BlobError(f"cannot decompress blob ({len(data)} bytes): {exc}") from exc
