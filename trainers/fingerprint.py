"""Environment and data fingerprints written into every run (reproduction failures in the
challenge came from environment and data drift)."""
from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys

import torch


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_sha() -> str:
    from . import codebundle
    if codebundle.PACKED is not None:
        # a packed train_gpt.py runs from a temp dir: git there would report whatever checkout holds
        # TMPDIR. Its code is identified by the code_version it carries instead.
        return "packed:" + codebundle.PACKED["code_version"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device, world_size: int) -> dict:
    gpu_name = torch.cuda.get_device_name(0) if device.type == "cuda" else ""
    try:
        import flash_attn  # noqa: F401
        fa_version = getattr(flash_attn, "__version__", "unknown")
    except Exception:  # optional dependency; any import failure means "not available"
        fa_version = ""
    gpu_count = world_size if device.type == "cuda" else 0
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "flash_attn": fa_version,
        "device": device.type,
        "gpu_name": gpu_name,
        "gpu_count": gpu_count,
        "world_size": world_size,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "node_class": f"{gpu_count}x{gpu_name}" if gpu_count else f"cpu{os.cpu_count()}",
        "git_sha": git_sha(),
    }


def _head_digest(path: str, nbytes: int = 1 << 20) -> tuple[int, str]:
    with open(path, "rb") as fh:
        return os.path.getsize(path), hashlib.sha256(fh.read(nbytes)).hexdigest()


def val_in_train(train_files: list, val_files: list) -> bool:
    """True when a validation shard is also read by the training loader (same file, or same size and
    same first MiB: a copied shard). Hashing whole train shards would cost minutes at 80 x 200 MB."""
    val_real = {os.path.realpath(f) for f in val_files}
    if any(os.path.realpath(f) in val_real for f in train_files):
        return True
    val_digests = {_head_digest(str(f)) for f in val_files}
    val_sizes = {size for size, _ in val_digests}
    return any(os.path.getsize(f) in val_sizes and _head_digest(str(f)) in val_digests for f in train_files)


def data_fingerprint(train_files: list, val_files: list, tokenizer_path: str, val_tokens: int) -> dict:
    return {
        "val_in_train": val_in_train(train_files, val_files),
        "train_shards": len(train_files),
        "val_shards": len(val_files),
        "val_sha256": hashlib.sha256("".join(sha256_file(f) for f in val_files).encode()).hexdigest(),
        "tokenizer_sha256": sha256_file(tokenizer_path),
        "val_tokens": val_tokens,
    }
