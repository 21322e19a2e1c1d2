"""Test-time training on the validation stream (off in the baseline). techniques.md 3.27.

Modes: off | score_first (legal chunked score-first TTT, #461/#549/#691) | pre_eval_full (the flagged
multi-epoch full-model SGD of #264/#317/#366: trains on val tokens before scoring them, so its trace
fails verification) | lora_doc (legal per-document LoRA TTT, #77/#1530) | phased (legal phased score-first
TTT, #1610/#1626/#1855: batched per-document LoRA plus global SGD over documents already scored;
trainers/ttt_phased.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._base import choices, need


@dataclass(kw_only=True)
class TTTConfig:
    def validate(self) -> None:
        choices(self, "ttt")
        if self.mode == "off":
            need(not self.fake_quant, "ttt.fake_quant = true but ttt.mode = off: set ttt.fake_quant = false too")
            return
        need(self.epochs >= 0 and self.batch_seqs >= 1 and self.freeze_blocks >= 0 and self.grad_clip >= 0,
             "ttt.epochs, ttt.freeze_blocks and ttt.grad_clip must be >= 0 and ttt.batch_seqs >= 1")
        need(self.chunk_tokens >= 1, "ttt.chunk_tokens must be >= 1")
        need(self.mode != "lora_doc" or (self.lora_rank >= 1 and self.lora_chunk_tokens >= 1
                                         and self.lora_batch_docs >= 1 and bool(self.lora_targets)),
             "ttt.lora_rank, lora_chunk_tokens, lora_batch_docs must be >= 1 and lora_targets non-empty")
        need(self.mode != "phased" or (self.lora_rank >= 1 and self.lora_chunk_tokens >= 1 and self.lora_batch_docs >= 1
                                       and bool(self.lora_targets) and self.phased_phases >= 1
                                       and self.phased_prefix_docs >= 0 and self.lora_weight_decay >= 0),
             "ttt.mode = phased needs lora_rank, lora_chunk_tokens, lora_batch_docs, phased_phases >= 1, "
             "phased_prefix_docs and lora_weight_decay >= 0 and lora_targets non-empty")

    mode: Literal["off", "score_first", "pre_eval_full", "lora_doc", "phased"] = "off"
    # score_first chunk, also the "last chunk" the trace must leave untrained; phased: the global SGD's chunk
    # (lr, lr_schedule, momentum, epochs, freeze_blocks, grad_clip, batch_seqs are the global SGD's too)
    chunk_tokens: int = 32_768
    lr: float = 0.002
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # cosine (over chunks for score_first, over steps otherwise) | constant
    momentum: float = 0.9
    epochs: int = 3
    freeze_blocks: int = 0  # the first N blocks stay frozen
    grad_clip: float = 1.0  # 0 = off
    batch_seqs: int = 32  # training sequences per rank per optimizer step
    fake_quant: bool = False  # train under the int6 late-QAT fake quant (#549/#691: their QAT class flag stays on after training, and TTT trains in train mode); scoring stays unquantized
    rank0_only: bool = False  # pre_eval_full as #264 ran it: rank 0 trains alone, then broadcasts
    # lora_doc / phased: rank-r adapters on these modules (name suffixes), reset per document. lora_doc: Linear
    # modules only; phased also takes whole modules ("attn": #1855's O adapter from the attention input, "mlp")
    # and "head" (added to the logits before the softcap), one adapter per call of a looped layer.
    lora_rank: int = 8
    lora_alpha: float = 0.0  # 0 = rank (scale 1)
    lora_lr: float = 0.01
    lora_beta1: float = 0.9
    lora_beta2: float = 0.95
    lora_targets: list[str] = field(default_factory=lambda: ["attn.c_q", "attn.c_v"])
    lora_chunk_tokens: int = 256
    lora_window: int = 0  # context window per scored chunk; 0 = train_seq_len
    lora_batch_docs: int = 64
    lora_weight_decay: float = 0.0  # phased: AdamW weight decay of the adapters (#1855: 0.5)
    lora_warm_a: bool = False  # phased: keep A (only B restarts at 0) from batch to batch within a phase (#1767)
    phased_prefix_docs: int = 2000  # phased: the first N documents of the queue feed the global SGD phases
    phased_phases: int = 1  # phased: global SGD after N*(p+1)/phases documents are scored, p = 0..phases-1
