"""The CaseOps per-token byte sidecar (#1729): `fineweb_val_bytes_NNNNNN.bin` next to each val shard, the
same header and length, holding for every token the UTF-8 bytes of the ORIGINAL text it stands for
(BOS and case operators 0). BPB of a CaseOps variant is counted from it, never from the byte tables,
which would score the operators' own bytes. At load it is checked against the shards and recounted
the canonical way: per document, decode -> inverse transform -> UTF-8 bytes equals the sidecar sum."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .caseops import CaseOpsError, canonical_bytes
from .shards import SIDECAR_PREFIX, ShardError, read_shard


def sidecar_path(val_file: Path) -> Path:
    return val_file.with_name(val_file.name.replace("fineweb_val_", SIDECAR_PREFIX, 1))


def refuse_unused_sidecars(val_files: list) -> None:
    """Plain-variant run on CaseOps data: the byte tables would score the operators' bytes too."""
    found = [sidecar_path(Path(vf)) for vf in val_files if sidecar_path(Path(vf)).is_file()]
    if found:
        raise ShardError(f"{found[0]} is a CaseOps byte sidecar, but data.variant is not a CaseOps variant: its "
                         "val BPB would count the case operators as bytes; set data.variant to the data's *_caseops variant")


def load_val_bytes(val_files: list, n_used: int, sp, bos_id: int, exact: bool = True) -> tuple[torch.Tensor, dict]:
    """(int32 bytes per position of the first `n_used` val tokens, totals) from the sidecars of `val_files`.
    ShardError (exit 3) names the sidecar that is missing, sized wrong or disagrees with the recount
    (`exact`: per document equal; else not below it)."""
    tokens, counts, owner = [], [], []
    for i, vf in enumerate(val_files):
        path = sidecar_path(Path(vf))
        if not path.is_file():
            raise ShardError(f"{path} is missing: a CaseOps variant needs a byte sidecar next to each val shard "
                             f"({Path(vf).name}); download or build the data again")
        tok, side = read_shard(vf), read_shard(path)
        if side.size != tok.size:
            raise ShardError(f"{path} holds {side.size} byte counts for the {tok.size} tokens of {Path(vf).name}; "
                             "the sidecar was not made with these shards")
        tokens.append(tok)
        counts.append(side)
        owner.append(np.full(tok.size, i, dtype=np.int32))
    tok, side, own = (np.concatenate(a) for a in (tokens, counts, owner))
    starts = np.flatnonzero(tok == bos_id)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate(([0], starts))
    ends = np.concatenate((starts[1:], [tok.size]))
    # every document holding a scored position is recounted whole (a limit may cut the last one)
    totals = {"documents": 0, "sidecar_bytes": 0, "recount_bytes": 0}
    for doc, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        if s >= n_used:
            break
        ids = tok[s + 1:e] if tok[s] == bos_id else tok[s:e]
        claimed = int(side[s:e].sum(dtype=np.int64))
        try:
            recount = canonical_bytes(sp, ids.tolist())
        except CaseOpsError as exc:
            recount = f"undecodable ({exc})"
        ok = isinstance(recount, int) and (claimed == recount if exact else claimed >= recount)
        if not ok or (tok[s] == bos_id and side[s] != 0):
            path = sidecar_path(Path(val_files[int(own[s])]))
            raise ShardError(f"{path}: val document {doc} (position {s}) claims {claimed} original bytes, the "
                             f"canonical recount (decode, inverse CaseOps, UTF-8) gives {recount}; the sidecar "
                             "does not match the shards: rebuild or download the data again" +
                             ("" if not exact or not isinstance(recount, int) or claimed < recount else
                              " (or, for an export that counts whitespace the normaliser collapses, set "
                              "data.sidecar_recount = \"at_least\")"))
        totals["documents"] += 1
        totals["sidecar_bytes"] += claimed
        totals["recount_bytes"] += recount
    return torch.from_numpy(side[:n_used].astype(np.int32)), totals
