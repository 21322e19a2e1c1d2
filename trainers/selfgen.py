"""GPTQ calibration tokens sampled from the trained model itself (#1019): no training or validation
data is read, so the pass needs no share of the training budget. Each sequence starts from one
uniform random token and is extended by sampling softmax(logits / T) one token at a time (no KV
cache: the prefix is re-run, as #1019 does)."""
from __future__ import annotations

import torch
from torch import nn

from .evaluate import autocast_for


@torch.no_grad()
def self_generated_tokens(model: nn.Module, n_seqs: int, seq_len: int, vocab_size: int, temperature: float,
                          batch: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """`n_seqs` sequences of `seq_len` tokens as [b, seq_len] batches of at most `batch` rows. Call it
    before any Hessian hooks are registered: the generation forwards must not be calibration inputs."""
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, n_seqs, batch):
            b = min(batch, n_seqs - start)
            tokens = torch.randint(0, vocab_size, (b, 1), device=device, generator=gen)
            for _ in range(seq_len - 1):
                with autocast_for(device):
                    last = model.logits(tokens)[:, -1, :].float()
                nxt = torch.multinomial(torch.softmax(last / temperature, dim=-1), 1, generator=gen)
                tokens = torch.cat([tokens, nxt], dim=1)
            out.append(tokens)
    finally:
        model.train(was_training)
    return out
