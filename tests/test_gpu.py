"""GPU correctness (issue 7). Every test but the last is `@pytest.mark.gpu` and skips without CUDA:
CUDA vs CPU logits, compiled vs eager (and no graph breaks), each available FlashAttention backend vs
SDPA (kernel and whole model, XSA on), late QAT switching a compiled forward, batched Muon in bf16,
and a 2-process NCCL DDP run against one process with the same global batch (needs 2 GPUs).

The last test runs benchmarks/gpu_bench.py --tiny on the CPU, so the benchmark script itself stays
working on machines without a GPU.

On a GPU machine:  python -m pytest tests/test_gpu.py -m gpu -v -rs
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pgolf.trainers import attention, qat
from pgolf.trainers.config import ModelConfig
from pgolf.trainers.evaluate import autocast_for
from pgolf.trainers.model import GPT, prepare_for_device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA = torch.cuda.is_available()
CUDA = torch.device("cuda") if HAS_CUDA else None


def gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")(test))


FLASH = ["fa3", "fa2"]
HEAD_DIM = 64  # early FA3 builds compile only head dims 64, 128 and 256


def backend_or_skip(name: str) -> attention.AttentionBackend:
    try:
        return attention.resolve(name, CUDA, torch.bfloat16, HEAD_DIM)
    except attention.AttentionBackendError as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = attention.active()
    yield
    attention.set_active(previous)
    if HAS_CUDA:
        torch._dynamo.reset()


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(num_layers=2, model_dim=4 * HEAD_DIM, num_heads=4, num_kv_heads=2, vocab_size=128, mlp_mult=2.0, rope_dims=16,
                xsa_last_n=2, ve_dim=16, ve_layers=[1], bigram_hash="v2", bigram_buckets=32, bigram_dim=16,
                smear_gate="v2", ln_scale=True, rope_ntk_ref_len=16)
    base.update(kw)
    return ModelConfig(**base)


def random_model(std: float = 0.05, **kw) -> GPT:
    """fp32 on the CPU, every weight random (zero-initialised projections would hide attention)."""
    torch.manual_seed(0)
    model = GPT(tiny_cfg(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std if p.ndim >= 2 else 0.5)
    return model


def batch(b=4, t=64, vocab=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (b, t), generator=g)
    y = torch.randint(0, vocab, (b, t), generator=g)
    return x, y


def assert_bf16_close(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = 0.04):
    """bf16 keeps ~3 significant digits: relative L2 error within `rel`, no element far off. Measured
    on the CPU for this model, bf16 autocast vs fp32 gives 0.014 on logits and up to 0.07 on the grads
    of scalar parameters (long bf16 reductions)."""
    got, want = got.float().cpu(), want.float().cpu()
    err = (got - want).norm() / want.norm().clamp_min(1e-12)
    worst = (got - want).abs().max() / want.abs().max().clamp_min(1e-12)
    assert err <= rel, f"{what}: relative L2 error {err:.4g} > {rel}"
    assert worst <= max(3 * rel, 0.1), f"{what}: max error {worst:.4g} of max |ref|"


def forward_backward(model, x, y, device):
    model.zero_grad(set_to_none=True)
    with autocast_for(device):
        loss = model(x.to(device), y.to(device))
    loss.backward()
    grads = {n: p.grad.detach().float().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach().float().cpu(), grads


# ---- CUDA vs CPU ---------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("name", ["auto", "sdpa"])
def test_cuda_logits_match_cpu(name):
    cpu_model = random_model()
    x, _ = batch()
    want = cpu_model.logits(x)
    backend = attention.configure(name, CUDA, torch.bfloat16, HEAD_DIM)
    cuda_model = prepare_for_device(copy.deepcopy(cpu_model), CUDA)
    with torch.no_grad(), autocast_for(CUDA):
        got = cuda_model.logits(x.to(CUDA))
    assert want.abs().mean() > 0.1
    assert_bf16_close(got, want, f"logits on CUDA ({backend.describe()}) vs CPU fp32")


# ---- compile -------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("name", ["auto", "sdpa"])
def test_compiled_matches_eager(name):
    attention.configure(name, CUDA, torch.bfloat16, HEAD_DIM)
    model = prepare_for_device(random_model(), CUDA)
    x, y = batch()
    loss_e, grads_e = forward_backward(model, x, y, CUDA)
    compiled = torch.compile(model, dynamic=False)
    loss_c, grads_c = forward_backward(compiled, x, y, CUDA)
    assert abs(loss_c.item() - loss_e.item()) <= 1e-2 * abs(loss_e.item())
    for n, g in grads_e.items():
        key = n if n in grads_c else f"_orig_mod.{n}"
        assert_bf16_close(grads_c[key], g, f"grad {n}", rel=0.1)


@gpu
@pytest.mark.parametrize("name", ["auto", "sdpa"])
def test_compiled_training_step_has_no_graph_breaks(name):
    """A graph break per layer (e.g. a flash build whose autograd.Function dynamo cannot trace)
    costs milliseconds per step; the trainer compiles without fullgraph, so catch it here. The
    scoring forward under inference mode too (tests/test_compile_graphs.py checks dynamo alone on
    the CPU; this adds the flash kernels)."""
    backend = attention.configure(name, CUDA, torch.bfloat16, HEAD_DIM)
    model = prepare_for_device(random_model(), CUDA)
    qat.arm(model)
    x, y = (t.to(CUDA) for t in batch())

    def step(x, y):
        with autocast_for(CUDA):
            return model(x, y)

    explained = torch._dynamo.explain(step)(x, y)
    reasons = [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_break_count == 0, f"{backend.describe()}: {reasons}"
    model.eval()  # the scoring forward of sliding eval and TTT
    with torch.inference_mode():
        explained = torch._dynamo.explain(lambda x, y: model(x, y, reduction="none"))(x, y)
    reasons = [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_break_count == 0, f"inference mode, {backend.describe()}: {reasons}"


# ---- attention backends --------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("name", FLASH)
def test_flash_kernel_matches_sdpa(name):
    backend = backend_or_skip(name)
    g = torch.Generator(device=CUDA).manual_seed(0)
    b, t, h, hkv, d = 2, 256, 8, 4, 64
    q = torch.randn(b, t, h, d, device=CUDA, dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, t, hkv, d, device=CUDA, dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, t, hkv, d, device=CUDA, dtype=torch.bfloat16, generator=g)
    got = backend.fn(q, k, v)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                          enable_gqa=True).transpose(1, 2)
    assert got.shape == (b, t, h, d)
    assert_bf16_close(got, want, f"{name} kernel vs SDPA")
    # causal: the first query sees only the first key, i.e. its output is v[0] of its KV head
    torch.testing.assert_close(got[:, 0].float(), v[:, 0].repeat_interleave(h // hkv, dim=1).float(), atol=1e-2, rtol=0)


@gpu
@pytest.mark.parametrize("name", FLASH)
def test_flash_model_matches_sdpa(name):
    backend = backend_or_skip(name)
    x, y = batch()
    ref_model = prepare_for_device(random_model(), CUDA)
    fa_model = copy.deepcopy(ref_model)
    with attention.using(attention.SDPA):
        loss_s, grads_s = forward_backward(ref_model, x, y, CUDA)
        with torch.no_grad(), autocast_for(CUDA):
            logits_s = ref_model.logits(x.to(CUDA))
    with attention.using(backend):
        loss_f, grads_f = forward_backward(fa_model, x, y, CUDA)
        with torch.no_grad(), autocast_for(CUDA):
            logits_f = fa_model.logits(x.to(CUDA))
    assert_bf16_close(logits_f, logits_s, f"{name} logits vs SDPA")
    assert abs(loss_f.item() - loss_s.item()) <= 1e-2 * abs(loss_s.item())
    for n, g in grads_s.items():
        assert_bf16_close(grads_f[n], g, f"{name} grad {n}", rel=0.1)


# ---- late QAT under compile ---------------------------------------------------------------------------


@gpu
def test_late_qat_switches_the_compiled_forward():
    attention.configure("auto", CUDA, torch.bfloat16, HEAD_DIM)
    base = prepare_for_device(random_model(std=0.05), CUDA)
    qat.arm(base)
    base.train()
    eager = copy.deepcopy(base)
    compiled = torch.compile(base, dynamic=False)
    x, y = (t.to(CUDA) for t in batch())

    def losses(m):
        with torch.no_grad(), autocast_for(CUDA):
            return m(x, y, reduction="none").float()

    off_c, off_e = losses(compiled), losses(eager)
    assert_bf16_close(off_c, off_e, "QAT off: compiled vs eager")
    qat.set_enabled(base, True)
    qat.set_enabled(eager, True)
    assert qat.is_enabled(base)
    on_c, on_e = losses(compiled), losses(eager)
    assert_bf16_close(on_c, on_e, "QAT on: compiled vs eager")
    # int6 fake quant moves these weights a lot (scale floor 1/31): far beyond bf16 noise
    noise = (off_c - off_e).abs().mean()
    moved = (on_c - off_c).abs().mean()
    assert moved > 10 * noise and moved > 1e-2, (moved, noise)
    qat.set_enabled(base, False)
    assert_bf16_close(losses(compiled), off_e, "QAT off again: compiled vs eager")


# ---- Muon in bf16 --------------------------------------------------------------------------------------


@gpu
def test_batched_muon_on_cuda_matches_per_matrix_reference():
    from test_muon_batched import CASES, SHAPES, make_grads, make_params, reference_step

    from pgolf.trainers.muon import Muon

    opts = CASES[1]
    kw = dict(lr=opts["lr"], momentum=opts["momentum"], nesterov=opts["nesterov"], weight_decay=opts["wd"],
              row_norm=opts["row_norm"], ns_coeffs=opts["ns"])
    batched = [torch.nn.Parameter(t.to(CUDA)) for t in make_params()]
    single = [torch.nn.Parameter(t.to(CUDA)) for t in make_params()]
    opt = Muon(batched, **kw)
    singles = [Muon([p], **kw) for p in single]  # one matrix at a time, the same bf16 NS code
    ref = make_params()
    bufs = [torch.zeros_like(p) for p in ref]
    for s in range(3):
        grads = make_grads(s)
        for p, q, g in zip(batched, single, grads):
            p.grad = None if g is None else g.to(CUDA)
            q.grad = None if g is None else g.to(CUDA)
        opt.step()
        for o in singles:
            o.step()
        reference_step(ref, grads, bufs, **opts)  # fp32 on the CPU
    start = make_params()
    for i, (a, b, r) in enumerate(zip(batched, single, ref)):
        # compare the total change: the weights themselves would hide update errors
        da, db, dr = a.detach().cpu() - start[i], b.detach().cpu() - start[i], r - start[i]
        # bmm and mm may round differently in bf16; a mixed-up share or offset is off by O(1)
        assert_bf16_close(da, db, f"param {i} {SHAPES[i]}: batched vs one at a time", rel=0.1)
        # bf16 NS itself is ~3-9% off the fp32 iteration (Polar Express on thin matrices the most)
        assert_bf16_close(da, dr, f"param {i} {SHAPES[i]}: bf16 vs fp32 reference", rel=0.25)


# ---- DDP over NCCL ---------------------------------------------------------------------------------------


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 GPUs (one process per GPU)")
def test_two_process_nccl_ddp_matches_single_process(demo_data, tmp_path):
    from test_train import tiny_config

    results = {}
    for nproc in (1, 2):
        cfg = tiny_config(demo_data, tmp_path / f"run{nproc}", iterations=6)
        cfg.run.device, cfg.run.compile = "cuda", True
        cfg.data.grad_accum_steps = 0  # 8 // world_size micro-steps: same global batch
        cfg.data.train_batch_tokens = 8 * 2 * 64
        cfg.schedule.warmup_steps = 0
        cfg.eval.val_loss_every = 0
        path = tmp_path / f"cfg{nproc}.json"
        cfg.write_json(str(path))
        cmd = [sys.executable, "-m", "pgolf.trainers.gpt", "--config", str(path)]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "pgolf.trainers.gpt", "--config", str(path)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert out.returncode == 0, out.stderr[-3000:]
        results[nproc] = json.loads((tmp_path / f"run{nproc}" / "result.json").read_text())
    one, two = results[1], results[2]
    assert two["env"]["world_size"] == 2 and one["steps"] == two["steps"] == 6
    for key in ("prequant/val_loss", "final/val_loss"):
        # bf16 autocast and a different reduction order: agreement to bf16 precision, not bitwise
        assert two[key] == pytest.approx(one[key], rel=5e-3), key


# ---- the benchmark script (CPU) -------------------------------------------------------------------------


def _gpu_bench(args: list[str], out) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu_bench
    finally:
        sys.path.pop(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert gpu_bench.main(["--tiny", "--device", "cpu", "--json", str(out)] + args) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_gpu_bench_tiny_runs_on_cpu(tmp_path):
    data = _gpu_bench([], tmp_path / "bench.json")
    fast, ref = data["results"]["fast"], data["results"]["ref"]
    for side in (fast, ref):
        assert side["train"]["ms_per_step"] > 0 and side["train"]["tokens_per_s"] > 0
        assert side["sliding"]["tokens_per_s"] > 0 and side["sliding"]["projected_8gpu_s"] > 0
        assert side["ttt"]["chunks"] == 3 and side["ttt"]["score_s_per_chunk"] > 0
        assert side["ttt"]["train_s_per_chunk"] > 0
    assert data["meta"]["fast_path"].startswith("sdpa") and data["meta"]["ref_path"].startswith("sdpa")
    assert data["results"]["muon"]["matrices"] > data["results"]["muon"]["shapes"]
    for line in ("train ms/step", "MFU vs 989 TFLOP/s", "sliding s64 projected 8 GPUs", "TTT projected 8 GPUs"):
        assert line in data["report"]
    assert attention.active() is attention.SDPA


def test_gpu_bench_compiled_path_never_recompiles_while_timed(tmp_path):
    """The fast path compiled (dynamo alone, `eager` backend): each measurement's warm-up must meet
    every shape its timed part meets, or a GPU run would time inductor compiling."""
    data = _gpu_bench(["--compile", "on", "--compile-backend", "eager", "--only", "train,sliding,ttt"],
                      tmp_path / "bench.json")
    assert "torch.compile (backend eager)" in data["meta"]["fast_path"]
    fast = data["results"]["fast"]
    for section in ("train", "sliding", "ttt"):
        assert fast[section]["recompiles_timed"] == 0, (section, fast[section])
    assert "WARNING" not in data["report"]
