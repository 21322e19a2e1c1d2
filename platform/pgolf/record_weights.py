"""Weight mapping between a record's own `GPT` (the SP8192 lineage, #1394/#1493) and pgolf's model built
from the matching stack file, so one set of weights can be run through both and their logits compared.

The records name their tensors the way pgolf does (`tok_emb.weight`, `blocks.<i>.attn.c_q.weight`,
`skip_gates`, ...), so the mapping is the identity on names; what it checks is that both sides hold the
same set of tensors with the same shapes, which is where a config mismatch (loop count, MLP width,
vocab) shows first.
"""
from __future__ import annotations

import torch

# record tensor name -> pgolf tensor name, for names that differ (none in #1394/#1493).
RECORD_TO_PGOLF: dict[str, str] = {}


def record_to_pgolf(record_state: dict[str, torch.Tensor], pgolf_state: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """The record's state dict renamed to pgolf's names; ValueError on a missing, extra or reshaped
    tensor, naming it."""
    out = {RECORD_TO_PGOLF.get(k, k): v for k, v in record_state.items()}
    missing = sorted(set(pgolf_state) - set(out))
    extra = sorted(set(out) - set(pgolf_state))
    if missing or extra:
        raise ValueError(f"record/pgolf tensors differ: missing in record {missing[:5]}, not in pgolf {extra[:5]}")
    bad = [k for k, v in out.items() if tuple(v.shape) != tuple(pgolf_state[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{k}: record shape {tuple(out[k].shape)} != pgolf shape {tuple(pgolf_state[k].shape)}")
    return out
