"""Token loading for training and validation (the baseline's sequential rules).

Training reads one stream through the sorted train shards, wrapping at the end; every optimizer
micro-step takes one shared chunk and gives each rank a disjoint contiguous span of
`local_tokens + 1` tokens (the extra token supplies the last target). Validation concatenates the
val shards and trims them so they split into whole `seq_len` windows plus one target token.
"""
from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch

from .shards import ShardError, read_shard

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["LoaderError", "TokenStream", "DistributedTokenLoader", "load_validation_tokens", "resolve_files"]


class LoaderError(ValueError):
    """Batch geometry or shard list that cannot be served."""


def resolve_files(files: PathLike | Iterable[PathLike]) -> list[Path]:
    """Sorted shard paths from a list of paths, or from a single glob pattern / file path.

    Sorting matters: the baseline stream order (and hence every seed's data order) is defined by
    the shard file names, not by the order a caller happened to list them in.
    """
    if isinstance(files, (str, os.PathLike)):
        text = os.fspath(files)
        if any(ch in text for ch in "*?["):
            paths = [Path(p) for p in _glob.glob(text)]
            if not paths:
                raise LoaderError(f"no shard files match the pattern {text}")
        else:
            paths = [Path(text)]
    else:
        paths = [Path(p) for p in files]
    if not paths:
        raise LoaderError("empty shard list: pass at least one .bin file (see pgolf.trainers.shards.list_shards)")
    return sorted(paths)


class TokenStream:
    """Sequential reader over the sorted shards that wraps around to the first shard forever."""

    def __init__(self, files: PathLike | Sequence[PathLike], vocab_size: int | None = None):
        self.files = resolve_files(files)
        self.vocab_size = vocab_size
        self.file_idx = 0
        self.tokens = self._load(0)
        self.pos = 0

    def _load(self, idx: int) -> np.ndarray:
        return read_shard(self.files[idx], vocab_size=self.vocab_size)

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.tokens = self._load(self.file_idx)
        self.pos = 0

    def take(self, n: int) -> torch.Tensor:
        """Next `n` tokens of the stream as an int64 tensor, crossing shard boundaries as needed."""
        if n < 0:
            raise LoaderError(f"TokenStream.take: n must be >= 0, got {n}")
        parts: list[np.ndarray] = []
        remaining = n
        empty_in_a_row = 0
        while remaining > 0:
            avail = self.tokens.size - self.pos
            if avail <= 0:
                empty_in_a_row += 1
                if empty_in_a_row > len(self.files):
                    raise ShardError(
                        f"all {len(self.files)} shards hold zero tokens (first: {self.files[0]}); nothing to train on"
                    )
                self._advance_file()
                continue
            empty_in_a_row = 0
            k = min(remaining, avail)
            parts.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            remaining -= k
        if not parts:
            return torch.empty(0, dtype=torch.int64)
        chunk = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return torch.from_numpy(chunk.astype(np.int64))


class DistributedTokenLoader:
    """Per-rank (x, y) batches cut from one shared stream chunk (the baseline rule).

    Every rank reads the same stream and keeps only its own span, so no coordination is needed
    and the union of all ranks' data equals the single-process stream order.
    """

    def __init__(
        self,
        files: PathLike | Sequence[PathLike],
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        vocab_size: int | None = None,
    ):
        if world_size < 1:
            raise LoaderError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise LoaderError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.stream = TokenStream(files, vocab_size=vocab_size)

    def local_tokens(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> int:
        """Tokens per rank per micro-step; raises unless the geometry divides exactly."""
        if seq_len < 1 or grad_accum_steps < 1 or global_tokens < 1:
            raise LoaderError(
                f"batch geometry must be positive: global_tokens={global_tokens}, seq_len={seq_len}, "
                f"grad_accum_steps={grad_accum_steps}"
            )
        denom = self.world_size * grad_accum_steps
        if global_tokens % denom:
            raise LoaderError(
                f"train_batch_tokens={global_tokens} is not divisible by world_size*grad_accum_steps="
                f"{self.world_size}*{grad_accum_steps}={denom}; pick a batch that is a multiple of {denom}"
            )
        local = global_tokens // denom
        if local % seq_len:
            raise LoaderError(
                f"per-rank micro-batch of {local} tokens (train_batch_tokens={global_tokens} / {denom}) is "
                f"not a multiple of seq_len={seq_len}; use train_batch_tokens a multiple of "
                f"{denom * seq_len}"
            )
        return local

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        local = self.local_tokens(global_tokens, seq_len, grad_accum_steps)
        span = local + 1
        chunk = self.stream.take(span * self.world_size)
        mine = chunk[self.rank * span : (self.rank + 1) * span]
        x = mine[:-1].reshape(-1, seq_len)
        y = mine[1:].reshape(-1, seq_len)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            x, y = x.to(self.device), y.to(self.device)
        return x, y


def load_validation_tokens(
    files: PathLike | Sequence[PathLike],
    seq_len: int,
    limit: int = 0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """All val tokens (sorted shards, concatenated), trimmed to whole windows plus one target.

    `limit > 0` keeps only the first `limit` tokens before trimming; it exists for smoke and CPU runs
    and makes the score incomparable with full-validation numbers.
    """
    if seq_len < 1:
        raise LoaderError(f"seq_len must be >= 1, got {seq_len}")
    if limit < 0:
        raise LoaderError(f"val token limit must be >= 0 (0 = whole split), got {limit}")
    paths = resolve_files(files)
    parts = [read_shard(p, vocab_size=vocab_size) for p in paths]
    tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
    total = int(tokens.size)
    if limit > 0:
        tokens = tokens[:limit]
    n = int(tokens.size)
    if n < seq_len + 1:
        what = f"{total} tokens" + (f" (limited to {n})" if limit > 0 and n < total else "")
        raise LoaderError(
            f"validation split too small: {what} in {len(paths)} file(s) starting with {paths[0]}, "
            f"need at least seq_len+1={seq_len + 1}; use a smaller seq_len or a larger val_tokens_limit"
        )
    keep = ((n - 1) // seq_len) * seq_len + 1
    return torch.from_numpy(tokens[:keep].astype(np.int64))
