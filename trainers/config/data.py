"""Where the tokens come from and how many go into a step."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class DataConfig:
    # Directory holding fineweb_train_*.bin / fineweb_val_*.bin. Relative paths resolve against the
    # current working directory of the trainer (the platform passes absolute paths).
    data_path: str = "data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    train_batch_tokens: int = 524_288  # global tokens per optimizer step
    train_seq_len: int = 1024
    grad_accum_steps: int = 0  # 0 = 8 // world_size (the baseline rule)
    val_tokens_limit: int = 0  # 0 = whole validation split; >0 only for smoke/CPU runs
