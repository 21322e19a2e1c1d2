"""#1019's self-generated GPTQ calibration: tokens sampled from the model, no data read, no training
budget used, and the generation forwards never reach the Hessians."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pgolf.trainers.config import ModelConfig, TrainConfig
from pgolf.trainers.contract import PHASE_POLICY
from pgolf.trainers.gptq import collect_hessians, gptq_targets
from pgolf.trainers.model import GPT
from pgolf.trainers.posttrain import calibrate_gptq
from pgolf.trainers.selfgen import self_generated_tokens

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model() -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # zero-init projections would make every sample alike
    return model.train()


def test_tokens_are_seeded_samples_in_the_vocabulary():
    model = _model()
    a = self_generated_tokens(model, 5, 12, 64, 0.8, 2, seed=3, device=CPU)
    assert [t.shape for t in a] == [(2, 12), (2, 12), (1, 12)]
    assert all(int(t.min()) >= 0 and int(t.max()) < 64 for t in a) and model.training
    b = self_generated_tokens(model, 5, 12, 64, 0.8, 2, seed=3, device=CPU)
    c = self_generated_tokens(model, 5, 12, 64, 0.8, 2, seed=4, device=CPU)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))


def test_self_gen_calibration_reads_no_data_and_counts_against_no_cap():
    model = _model()
    cfg = TrainConfig()
    cfg.model = model.cfg
    cfg.data.train_seq_len = 16
    q = cfg.quant
    q.gptq, q.mlp_format, q.attn_format, q.passthrough_max_numel = True, "int6", "int6", 0
    q.gptq_calib, q.gptq_selfgen_seqs, q.gptq_selfgen_batch = "self_gen", 3, 2
    ctx = SimpleNamespace(cfg=cfg, ddp=SimpleNamespace(rank=0, world_size=1), model=model, device=CPU,
                          train_loader=None, train_files=None, phases={})
    got = calibrate_gptq(ctx)  # train_files=None: a data read would fail here
    targets = gptq_targets(model, q)
    assert got["batches"] == 2 and got["layers"] == len(targets) > 0
    # the same seeded tokens through the hooks alone: the generation forwards added nothing
    seqs = self_generated_tokens(model, 3, 16, 64, 0.8, 2, seed=cfg.run.seed, device=CPU)
    want, _ = collect_hessians(model, targets, iter(seqs), CPU, len(seqs), None, 0.0)
    assert all(torch.equal(got["hessians"][k], want[k]) for k in targets)
    assert PHASE_POLICY["gptq_selfgen"] == "report_only" and PHASE_POLICY["gptq_calibration"] == "train"
