"""TTT across two gloo processes on CPU equals the single-process run: windows and training sequences
split across ranks, gradients averaged (or rank 0 trains and broadcasts), per-document LoRA spread over
ranks, phased TTT's batches round-robin with its global SGD split like score-first's, and the trace
gathered on rank 0 still verifies. One spawn runs all the modes."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_ttt import setup, synthetic_luts

from pgolf.trainers.train import leave_process_group
from pgolf.trainers.ttt import run_ttt
from pgolf.ttt_audit import verdict_for

PHASED = dict(lora_targets=["attn.c_q", "attn.c_v", "mlp", "head"], lora_chunk_tokens=32, lora_batch_docs=2,
              lora_lr=0.01, phased_prefix_docs=4, phased_phases=1, epochs=1, chunk_tokens=64)
CASES = {
    # mode: (single-process overrides, per-rank overrides giving the same global batch)
    "score_first": ({"batch_seqs": 4, "epochs": 2}, {"batch_seqs": 2, "epochs": 2}),
    "pre_eval_full": ({"batch_seqs": 4, "epochs": 1, "rank0_only": True}, {"batch_seqs": 4, "epochs": 1, "rank0_only": True}),
    "lora_doc": ({}, {}),
    # one phase at 4 documents = the end of round 0 on two ranks (2 batches of 2) and of batch 1 on one
    "phased": ({**PHASED, "batch_seqs": 4}, {**PHASED, "batch_seqs": 2}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for mode, (_, overrides) in CASES.items():
            d = os.path.join(out_dir, mode)
            cfg, model, val = setup(mode, d, **overrides)
            res = run_ttt(model, val, synthetic_luts(), cfg, torch.device("cpu"), rank, world, d, bos_id=1)
            if rank == 0:
                with open(os.path.join(d, "res.json"), "w") as fh:
                    json.dump({"loss": res.val_loss, "tokens": res.tokens, "bytes": res.bytes,
                               "verdict": verdict_for(os.path.join(d, res.info["trace"]), val, 1)}, fh)
        leave_process_group()  # barrier first: a rank tearing gloo down while its peer works can SIGABRT
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ttt_two_ranks")
    for mode in CASES:
        (out / mode).mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return {mode: json.loads((out / mode / "res.json").read_text()) for mode in CASES}


@pytest.mark.parametrize("mode", list(CASES))
def test_two_ranks_match_one(mode, two_rank_results, tmp_path):
    torch.set_num_threads(1)
    cfg, model, val = setup(mode, tmp_path, **CASES[mode][0])
    one = run_ttt(model, val, synthetic_luts(), cfg, torch.device("cpu"), 0, 1, str(tmp_path), bos_id=1)
    two = two_rank_results[mode]
    assert two["tokens"] == one.tokens and two["bytes"] == one.bytes
    assert two["loss"] == pytest.approx(one.val_loss, rel=1e-5)
    verdict = verdict_for(os.path.join(str(tmp_path), one.info["trace"]), val, 1)
    assert two["verdict"]["compliant"] == verdict["compliant"] == (mode != "pre_eval_full")
    assert two["verdict"]["stats"]["scored_tokens"] == one.tokens
