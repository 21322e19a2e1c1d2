"""Weight mapping between a record's own `GPT` (the SP8192 lineage, #1394/#1493/#1855) and pgolf's model built
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

# #1855 keeps each kind of block matrix in one bank (first half / second half of qo and kv by layer).
_BANKS = {"qo_bank": ("attn.c_q.weight", "attn.proj.weight"), "kv_bank": ("attn.c_k.weight", "attn.c_v.weight"),
          "mlp_up_bank": ("mlp.fc.weight",), "mlp_down_bank": ("mlp.proj.weight",)}


def unbank(record_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """#1855's banked state dict in per-block names; its SmearGate (a 1 x W linear and a 1-vector
    lambda) in pgolf's (a W-vector and a scalar). Other state dicts pass through."""
    out = {}
    for k, v in record_state.items():
        if k in _BANKS:
            names = _BANKS[k]
            n = v.size(0) // len(names)
            for half, name in enumerate(names):
                for i in range(n):
                    out[f"blocks.{i}.{name}"] = v[half * n + i]
        elif k == "smear_gate.weight":
            out["smear.weight"] = v.reshape(-1)
        elif k == "smear_lambda":
            out["smear.lam"] = v.reshape(())
        else:
            out[k] = v
    return out


def record_to_pgolf(record_state: dict[str, torch.Tensor], pgolf_state: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """The record's state dict renamed to pgolf's names; ValueError on a missing, extra or reshaped
    tensor, naming it."""
    out = {RECORD_TO_PGOLF.get(k, k): v for k, v in unbank(record_state).items()}
    missing = sorted(set(pgolf_state) - set(out))
    extra = sorted(set(out) - set(pgolf_state))
    if missing or extra:
        raise ValueError(f"record/pgolf tensors differ: missing in record {missing[:5]}, not in pgolf {extra[:5]}")
    bad = [k for k, v in out.items() if tuple(v.shape) != tuple(pgolf_state[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{k}: record shape {tuple(out[k].shape)} != pgolf shape {tuple(pgolf_state[k].shape)}")
    return out
