"""Two gloo processes on CPU with the same global batch reproduce a single-process run: the loader
gives each rank the same spans the single process would read, DDP averages, Muon shares its
orthogonalised updates. Only the summation order differs, so results agree to float tolerance."""
import json
import os
import subprocess
import sys

import pytest

from test_train import tiny_config


def _run(cfg_path, nproc):
    if nproc == 1:
        cmd = [sys.executable, "-m", "pgolf.trainers.gpt", "--config", str(cfg_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "pgolf.trainers.gpt", "--config", str(cfg_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_two_process_ddp_matches_single_process(demo_data, tmp_path, compiled):
    """`compiled`: DDP over a torch.compile'd module, as on 8 GPUs, with dynamo's eager backend."""
    results = {}
    for nproc in (1, 2):
        cfg = tiny_config(demo_data, tmp_path / f"run{nproc}", iterations=6)
        cfg.run.compile, cfg.run.compile_backend = compiled, "eager"
        cfg.data.grad_accum_steps = 0  # the baseline rule: 8 // world_size micro-steps
        cfg.data.train_batch_tokens = 8 * 2 * 64  # 8 micro-batches of 2 sequences in total
        cfg.schedule.warmup_steps = 0
        cfg.eval.val_loss_every = 0
        path = tmp_path / f"cfg{nproc}.json"
        cfg.write_json(str(path))
        _run(path, nproc)
        results[nproc] = json.loads((tmp_path / f"run{nproc}" / "result.json").read_text())
    one, two = results[1], results[2]
    assert two["env"]["world_size"] == 2
    assert one["steps"] == two["steps"] == 6
    for key in ("prequant/val_loss", "final/val_loss", "final/val_bpb"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    assert two["data/val_scored_tokens"] == one["data/val_scored_tokens"]
    log = (tmp_path / "run2" / "train.log").read_text()
    assert ("compile: eager, dynamic=False" if compiled else "compile: off") in log
