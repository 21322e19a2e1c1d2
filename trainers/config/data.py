"""Where the tokens come from and how many go into a step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._base import need

# The tokenizations pgolf knows: name -> (vocab size, CaseOps). CaseOps (#1729) data carries a per-token
# byte sidecar for val (fineweb_val_bytes_*.bin) and BPB is counted from it; sp1024_caseops exists for
# the demo corpus only (smoke runs of CaseOps stacks at a small vocab), the other four as FineWeb exports.
# "custom": a tokenizer of your own at any vocab size (its piece count is checked against the model at load).
Variant = Literal["sp1024", "sp4096", "sp8192", "sp1024_caseops", "sp8192_caseops", "custom"]
VARIANTS: dict[str, tuple[int, bool]] = {"sp1024": (1024, False), "sp4096": (4096, False), "sp8192": (8192, False),
                                        "sp1024_caseops": (1024, True), "sp8192_caseops": (8192, True)}
CASEOPS_SUFFIX = "lossless_caps_caseops_v1_reserved"  # the export's own names (#1729)


def variant_layout(variant: str) -> tuple[str, str]:
    """(dataset folder, tokenizer file under tokenizers/) of a variant, named as the exports name them."""
    vocab, caseops = VARIANTS[variant]
    tail = f"_{CASEOPS_SUFFIX}" if caseops else ""
    return f"fineweb10B_sp{vocab}{tail}", f"fineweb_{vocab}_bpe{tail}.model"


def variant_for(vocab: int, caseops: bool) -> str | None:
    """The variant of that vocab and tokenization, None when pgolf has none."""
    return next((n for n, v in VARIANTS.items() if v == (vocab, caseops)), None)


@dataclass(kw_only=True)
class DataConfig:
    def validate(self) -> None:
        need(self.variant in VARIANTS or self.variant == "custom",
             f"data.variant = {self.variant!r}: expected one of {', '.join(VARIANTS)}, custom")
        need(self.train_seq_len >= 1, f"data.train_seq_len must be >= 1, got {self.train_seq_len}")
        need(self.train_batch_tokens >= 1, f"data.train_batch_tokens must be >= 1, got {self.train_batch_tokens}")
        need(self.grad_accum_steps >= 0, f"data.grad_accum_steps must be >= 0 (0 = 8 // world_size), got {self.grad_accum_steps}")
        need(self.val_tokens_limit >= 0, f"data.val_tokens_limit must be >= 0 (0 = all), got {self.val_tokens_limit}")

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches per optimizer step: the field, or the baseline's 8 // world_size."""
        return self.grad_accum_steps or max(8 // world_size, 1)

    @property
    def caseops(self) -> bool:
        """CaseOps data: val BPB comes from the byte sidecar, not the byte tables."""
        return VARIANTS.get(self.variant, (0, False))[1]

    # The tokenizer/shard family; model.vocab_size must be its vocab (TrainConfig.validate).
    variant: Variant = "sp1024"
    # CaseOps load check, per val document: "exact" = sidecar sum equals the canonical recount (decode ->
    # inverse transform -> UTF-8); "at_least" = not below it, for an export whose sidecar also counts raw
    # whitespace the tokenizer's normaliser collapses (the run logs both totals either way)
    sidecar_recount: Literal["exact", "at_least"] = "exact"
    # Directory holding fineweb_train_*.bin / fineweb_val_*.bin. Relative paths resolve against the
    # current working directory of the trainer (the platform passes absolute paths).
    data_path: str = "data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    train_batch_tokens: int = 524_288  # global tokens per optimizer step
    train_seq_len: int = 1024
    grad_accum_steps: int = 0  # 0 = 8 // world_size (the baseline rule)
    val_tokens_limit: int = 0  # 0 = whole validation split; >0 only for smoke/CPU runs
