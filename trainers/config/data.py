"""Where the tokens come from and how many go into a step."""
from __future__ import annotations

from dataclasses import dataclass
from ._base import need


@dataclass(kw_only=True)
class DataConfig:
    def validate(self) -> None:
        need(self.train_seq_len >= 1, f"data.train_seq_len must be >= 1, got {self.train_seq_len}")
        need(self.train_batch_tokens >= 1, f"data.train_batch_tokens must be >= 1, got {self.train_batch_tokens}")
        need(self.grad_accum_steps >= 0, f"data.grad_accum_steps must be >= 0 (0 = 8 // world_size), got {self.grad_accum_steps}")
        need(self.val_tokens_limit >= 0, f"data.val_tokens_limit must be >= 0 (0 = all), got {self.val_tokens_limit}")

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches per optimizer step: the field, or the baseline's 8 // world_size."""
        return self.grad_accum_steps or max(8 // world_size, 1)

    # Directory holding fineweb_train_*.bin / fineweb_val_*.bin. Relative paths resolve against the
    # current working directory of the trainer (the platform passes absolute paths).
    data_path: str = "data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    train_batch_tokens: int = 524_288  # global tokens per optimizer step
    train_seq_len: int = 1024
    grad_accum_steps: int = 0  # 0 = 8 // world_size (the baseline rule)
    val_tokens_limit: int = 0  # 0 = whole validation split; >0 only for smoke/CPU runs
