"""The challenge's `.bin` token shard format (numpy only).

Layout: a 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, token count, then
zeros) followed by `num_tokens` little-endian uint16 token ids. Shards written here are byte-identical
to the official exporter's, so the demo corpus exercises exactly the code path real FineWeb takes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_BYTES = 2
MAX_TOKEN_ID = 65535  # uint16 storage

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_BYTES",
    "ShardError",
    "write_shard",
    "read_shard",
    "read_header",
    "shard_num_tokens",
    "list_shards",
    "check_shard_sizes",
    "check_manifest",
]


class ShardError(ValueError):
    """A shard file (or a shard directory) is missing, malformed or holds out-of-range ids."""


def write_shard(path: PathLike, tokens) -> int:
    """Write `tokens` as one shard; returns the number of tokens written.

    Refuses ids outside [0, 65535] instead of letting numpy wrap them silently into uint16.
    The file is written to a temporary name and renamed, so a crash never leaves a shard whose
    header promises more tokens than the body holds.
    """
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ShardError(f"{path}: token ids must be integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype != np.uint16:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            pos = int(np.argmax(arr < 0))
            raise ShardError(
                f"{path}: refusing to write negative token id {int(arr[pos])} at position {pos}; "
                "shards store unsigned 16-bit ids"
            )
        if hi > MAX_TOKEN_ID:
            pos = int(np.argmax(arr > MAX_TOKEN_ID))
            raise ShardError(
                f"{path}: refusing to write token id {int(arr[pos])} at position {pos}; shards store "
                f"uint16 ids, so the vocabulary must be <= {MAX_TOKEN_ID + 1}"
            )
    if arr.size >= 2**31:
        raise ShardError(f"{path}: {arr.size} tokens do not fit the int32 token count of the header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = MAGIC
    header[1] = VERSION
    header[2] = arr.size
    body = arr.astype("<u2", copy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(body.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return int(arr.size)


def read_header(path: PathLike) -> np.ndarray:
    """Read and validate the 256-int32 header (magic, version); returns it as an int32 array."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file not found")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ShardError(
            f"{path}: file is {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte shard header; "
            "the file is truncated or not a token shard (re-download or rebuild it)"
        )
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise ShardError(
            f"{path}: bad magic number {int(header[0])} (expected {MAGIC}); this is not a "
            "parameter-golf token shard (wrong file, or written by another tool)"
        )
    if int(header[1]) != VERSION:
        raise ShardError(
            f"{path}: unsupported shard version {int(header[1])} (expected {VERSION}); "
            "re-export the shard with the current format"
        )
    if int(header[2]) < 0:
        raise ShardError(f"{path}: negative token count {int(header[2])} in the header; the file is corrupt")
    return header


def shard_num_tokens(path: PathLike) -> int:
    """Token count from the header alone (does not read or size-check the body)."""
    return int(read_header(path)[2])


def _checked_count(path: Path) -> int:
    """Token count of a shard whose file size matches its header (a stat, no body read)."""
    n = int(read_header(path)[2])
    expected = HEADER_BYTES + TOKEN_BYTES * n
    actual = path.stat().st_size
    if actual < expected:
        raise ShardError(
            f"{path}: truncated shard: header says {n} tokens ({expected} bytes) but the file has "
            f"{actual} bytes; the download or write was interrupted (re-download or rebuild it)"
        )
    if actual > expected:
        raise ShardError(
            f"{path}: oversized shard: header says {n} tokens ({expected} bytes) but the file has "
            f"{actual} bytes ({actual - expected} extra); the header and body disagree (rebuild it)"
        )
    return n


def check_shard_sizes(files) -> int:
    """Header and size of every shard, before step 0: a truncated training shard would otherwise
    surface only when the stream reaches it. Returns the total token count."""
    return sum(_checked_count(Path(f)) for f in files)


def read_shard(path: PathLike, vocab_size: int | None = None) -> np.ndarray:
    """Read a shard's token ids as a uint16 array, validating header, size and (optionally) ids."""
    path = Path(path)
    n = _checked_count(path)
    tokens = np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)
    if tokens.size != n:
        raise ShardError(f"{path}: read {tokens.size} tokens, expected {n}; the file changed while reading")
    tokens = tokens.astype(np.uint16, copy=False)
    if vocab_size is not None and n:
        bad = tokens >= vocab_size
        if bad.any():
            pos = int(np.argmax(bad))
            raise ShardError(
                f"{path}: token id {int(tokens[pos])} at position {pos} is outside the vocabulary "
                f"(vocab_size={vocab_size}, max id {int(tokens.max())}); the shard was made with a "
                "different tokenizer than the model's vocab_size"
            )
    return tokens


SIDECAR_PREFIX = "fineweb_val_bytes_"


def list_shards(data_path: PathLike, split: str) -> list[Path]:
    """Sorted `fineweb_{split}_*.bin` files in `data_path`; an error names the directory and pattern."""
    if split not in ("train", "val"):
        raise ShardError(f"unknown split {split!r}: expected 'train' or 'val'")
    directory = Path(data_path)
    pattern = f"fineweb_{split}_*.bin"
    if not directory.is_dir():
        raise ShardError(
            f"data directory {directory} does not exist (looking for {pattern}); build the demo data "
            "with `pgolf data demo` or download shards with `pgolf data fineweb`"
        )
    # the CaseOps byte sidecars (fineweb_val_bytes_*.bin) share the val prefix but hold no tokens
    files = sorted(p for p in directory.glob(pattern) if p.is_file() and not p.name.startswith(SIDECAR_PREFIX))
    if not files:
        raise ShardError(
            f"no {split} shards matching {pattern} in {directory}; build the demo data with "
            "`pgolf data demo` or download shards with `pgolf data fineweb`"
        )
    return files


def check_manifest(data_path: PathLike, tokenizer_path: PathLike, vocab_size: int) -> None:
    """The shards' own record of their tokenizer (a pgolf data manifest two folders above the shards,
    when there is one) must match the run's tokenizer file and vocab_size: ids from another tokenizer
    are in range yet spell other bytes, and the score would be silently wrong."""
    import hashlib
    import json

    root = Path(data_path).resolve().parent.parent
    mpath = root / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no manifest (or not ours): the piece-count and id checks still apply
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return
    rel = manifest.get("tokenizer_path")
    entry = manifest["files"].get(rel) if isinstance(rel, str) else None
    if isinstance(manifest.get("vocab_size"), int) and manifest["vocab_size"] != vocab_size:
        raise ShardError(f"{mpath}: the shards were made with a {manifest['vocab_size']}-piece tokenizer but "
                         f"model.vocab_size = {vocab_size}; set model.vocab_size to match the data")
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return
    h = hashlib.sha256()
    with open(tokenizer_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != entry["sha256"]:
        raise ShardError(f"tokenizer {tokenizer_path} (sha256 {h.hexdigest()[:12]}) is not the one the shards in "
                         f"{data_path} were made with ({root / rel}, sha256 {entry['sha256'][:12]} in {mpath}); "
                         "point data.tokenizer_path at the data's own tokenizer")
