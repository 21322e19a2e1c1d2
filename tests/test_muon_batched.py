"""Batched and sharded Muon (trainers/muon.py) against a one-matrix-at-a-time reference of the same
math: momentum, Nesterov, MuonEq-R, quintic / Polar Express NS, the max(1, rows/cols)^0.5 scale and
decoupled WD. Also a 2-process gloo run, whose shares and all-gather must reproduce one process."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.trainers.muon import Muon, newton_schulz, ns_coefficients, shape_groups
from pgolf.trainers.train import leave_process_group

# Mixed shapes: a group of 5 (uneven shares over 2 ranks), a lone shape (one rank gets nothing),
# tall and wide matrices, and a pair.
SHAPES = [(32, 16), (16, 48), (32, 16), (24, 24), (32, 16), (16, 48), (32, 16), (40, 8), (32, 16)]
STEPS = 3


def reference_step(params, grads, bufs, *, lr, momentum, nesterov, row_norm, ns, wd, backend_steps=5):
    """The per-matrix algorithm, written out independently of the optimizer."""
    coeffs = ns_coefficients(ns)
    for p, g, buf in zip(params, grads, bufs):
        if g is None:
            u = torch.zeros_like(p)
        else:
            buf.mul_(momentum).add_(g)
            u = g + momentum * buf if nesterov else buf.clone()
            if row_norm:
                u = u / (u.norm(dim=1, keepdim=True) + 1e-7)
            x = u / (u.norm() + 1e-7)
            tall = x.size(0) > x.size(1)
            if tall:
                x = x.T
            for i in range(backend_steps):
                a, b, c = coeffs[min(i, len(coeffs) - 1)]
                m = x @ x.T
                x = a * x + (b * m + c * (m @ m)) @ x
            u = (x.T if tall else x) * max(1.0, p.size(0) / p.size(1)) ** 0.5
        if wd > 0:
            p.mul_(1.0 - lr * wd)
        p.add_(u, alpha=-lr)


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen) for s in SHAPES]


def make_grads(step, skip_none=True):
    gen = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(*s, generator=gen) for s in SHAPES]
    if skip_none and step == 1:
        grads[2] = None  # a param that got no gradient this step: only WD moves it
    return grads


def run_optimizer(opts: dict, steps=STEPS) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(t) for t in make_params()]
    opt = Muon(params, lr=opts["lr"], momentum=opts["momentum"], nesterov=opts["nesterov"],
               weight_decay=opts["wd"], row_norm=opts["row_norm"], ns_coeffs=opts["ns"])
    for s in range(steps):
        for p, g in zip(params, make_grads(s)):
            p.grad = None if g is None else g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def run_reference(opts: dict, steps=STEPS) -> list[torch.Tensor]:
    params = make_params()
    bufs = [torch.zeros_like(p) for p in params]
    for s in range(steps):
        reference_step(params, make_grads(s), bufs, **opts)
    return params


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CASES = [
    dict(lr=0.05, momentum=0.95, nesterov=True, row_norm=False, ns="quintic", wd=0.0),
    dict(lr=0.05, momentum=0.9, nesterov=True, row_norm=True, ns="polar_express", wd=0.04),
    dict(lr=0.02, momentum=0.8, nesterov=False, row_norm=True, ns="quintic", wd=0.1),
]


def test_shape_groups_keep_first_appearance_order():
    groups = shape_groups(make_params())
    assert groups == [[0, 2, 4, 6, 8], [1, 5], [3], [7]]


def test_batched_newton_schulz_equals_per_matrix():
    torch.manual_seed(0)
    for shape in ((5, 32, 16), (3, 16, 48), (2, 24, 24)):
        g = torch.randn(*shape)
        for name in ("quintic", "polar_express"):
            coeffs = ns_coefficients(name)
            batched = newton_schulz(g, 5, coeffs=coeffs)
            single = torch.stack([newton_schulz(m, 5, coeffs=coeffs) for m in g])
            assert batched.shape == g.shape
            torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", CASES, ids=["plain", "rownorm-polar-wd", "no-nesterov"])
def test_batched_muon_matches_per_matrix_reference(opts):
    got = run_optimizer(opts)
    want = run_reference(opts)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"param {i} {SHAPES[i]}: {m}")
    # the no-grad param moved by WD only at step 1, i.e. it was not simply skipped
    assert not torch.equal(got[2], make_params()[2])


def _worker(rank: int, world: int, init_file: str, out_dir: str, opts: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        params = [torch.nn.Parameter(t) for t in make_params()]
        opt = Muon(params, lr=opts["lr"], momentum=opts["momentum"], nesterov=opts["nesterov"],
                   weight_decay=opts["wd"], row_norm=opts["row_norm"], ns_coeffs=opts["ns"])
        for s in range(STEPS):
            # DDP has already averaged: every rank sees the same gradients.
            for p, g in zip(params, make_grads(s)):
                p.grad = None if g is None else g.clone()
            opt.step()
        owned = sorted(i for i, p in enumerate(params) if p in opt.state)
        torch.save({"params": [p.detach() for p in params], "owned": owned}, os.path.join(out_dir, f"rank{rank}.pt"))
        leave_process_group()  # barrier first: a rank tearing gloo down while its peer works can SIGABRT
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    opts = CASES[1]
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path), opts), nprocs=world, join=True)
    single = run_optimizer(opts)
    owned = []
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt")
        owned.append(set(got["owned"]))
        for i, (a, b) in enumerate(zip(got["params"], single)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=lambda m: f"rank {r} param {i}: {m}")
    # The work was really split: each rank kept momentum only for its share, together all of them.
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    assert owned[0] | owned[1] == set(range(len(SHAPES)))
