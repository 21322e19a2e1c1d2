"""Published record scores (data, for baselines and tests) and the tokens-per-byte ratios measured from
record logs; in BPB as the records report them."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pgolf.formatting import json_safe
from pgolf.stats import LN2, bpb_to_nats

# Ratios measured from record logs (techniques.md section 1.5: BPB/nats = 0.5923, 0.3871, 0.4570), expressed
# as tokens per byte. Approximate: a run should always convert with its own `data/tokens_per_byte`.
TOKENS_PER_BYTE_APPROX: dict[str, float] = {
    "sp1024": 0.5923 * LN2,
    "sp8192": 0.3871 * LN2,
    "sp8192_caseops": 0.4570 * LN2,
}


@dataclass(frozen=True)
class RecordPreset:
    """Published per-seed scores of a record, in BPB as the record reports them (techniques.md section 6).

    `seeds` is None when the record does not tie its scores to seed numbers; such a preset can only be a
    Welch or one-sample baseline, never a paired one."""

    name: str
    folder: str
    per_seed_bpb: tuple[float, ...]
    tokenizer: str = "sp1024"
    seeds: tuple[int, ...] | None = None
    reported_std_bpb: float | None = None  # as printed in the record's README (some use ddof 0)

    @property
    def mean_bpb(self) -> float:
        return float(np.mean(self.per_seed_bpb))

    def values_nats(self, tokens_per_byte: float) -> list[float]:
        return [float(v) for v in bpb_to_nats(np.asarray(self.per_seed_bpb), tokens_per_byte)]

    def by_seed_nats(self, tokens_per_byte: float) -> dict[int, float]:
        if self.seeds is None:
            raise ValueError(f"record {self.name} publishes no seed numbers; it cannot be a paired baseline")
        return dict(zip(self.seeds, self.values_nats(tokens_per_byte)))

    def to_dict(self) -> dict[str, Any]:
        return json_safe({**asdict(self), "mean_bpb": self.mean_bpb})


RECORD_PRESETS: dict[str, RecordPreset] = {p.name: p for p in (
    RecordPreset("naive_baseline", "records/track_10min_16mb/2026-03-17_NaiveBaseline", (1.2243657,)),
    RecordPreset("long_context_seq2048", "records/track_10min_16mb/2026-03-18_LongContextSeq2048",
                 (1.20576485, 1.20617460, 1.20715923), seeds=(1337, 1338, 1339), reported_std_bpb=0.00071667),
    RecordPreset("#180", "records/track_10min_16mb/2026-03-20_10L_Int5MLP_MuonWD04_SWA50",
                 (1.14271, 1.14298, 1.14260), reported_std_bpb=0.00016),
    RecordPreset("#414", "records/track_10min_16mb/2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233",
                 (1.1228, 1.1236, 1.1236), reported_std_bpb=0.0005),
    RecordPreset("#549", "records/track_10min_16mb/2026-03-23_LeakyReLU_LegalTTT_ParallelMuon",
                 (1.1192, 1.1200, 1.1189), reported_std_bpb=0.0006),
)}
