"""The figures of docs/stacks.md "Fidelity to the records" (issue #18), on fixed seeds, CPU only:

    python benchmarks/fidelity.py

1. int5/int6 round-to-nearest error with the 1/Q scale floor vs the records' 1e-12 floor (then fp16
   tiny, i.e. a 2^-14 floor), weights
   N(0, 1/fan_in) in the shapes of the MLP and attention matrices;
2. codes moved by rounding int8 with the fp16 scale instead of the fp32 one;
3. control tensors per stack that the records store fp16 and the baseline order stores fp32;
4. sliding windows of the full validation stream: the records' tail windows vs pgolf's.
"""
from __future__ import annotations

import os

import torch

from pgolf.experiment import load_experiment
from pgolf.trainers.config import QuantConfig
from pgolf.trainers.model import GPT
from pgolf.trainers.quant import INT_FORMATS, plan_state_dict, quantize_rows_rtn
from pgolf.trainers.sliding import plan_windows

STACKS = os.path.join(os.path.dirname(__file__), "..", "experiments", "stacks")


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def floors() -> None:
    g = torch.Generator().manual_seed(0)
    print("1. scale floor, weights N(0, 1/fan_in): RMS error 1/Q floor vs 1e-12 floor")
    for fmt, shape in (("int5", (1536, 512)), ("int5", (512, 1536)), ("int6", (512, 512)), ("int6", (256, 512))):
        w = torch.randn(*shape, generator=g) / shape[1] ** 0.5
        err = {}
        for label, cfg in (("1/Q", QuantConfig()), ("1e-12", QuantConfig(**{f"scale_floor_{fmt}": 2.0**-14}))):
            q, s = quantize_rows_rtn(w, INT_FORMATS[fmt], "mlp", cfg)
            err[label] = rms(q.float() * s.float()[:, None] - w)
        r = err["1/Q"] / err["1e-12"]
        print(f"   {fmt} {shape[0]}x{shape[1]}: {err['1/Q']:.3e} vs {err['1e-12']:.3e}  RMS x{r:.1f}  MSE x{r * r:.0f}")


def int8_rounding() -> None:
    g = torch.Generator().manual_seed(1)
    print("2. int8 codes that differ between fp16-scale and fp32-scale rounding")
    for std in (0.005, 0.02, 1.0):
        w = torch.randn(1024, 512, generator=g) * std
        q32, _ = quantize_rows_rtn(w, INT_FORMATS["int8"], "embed", QuantConfig())
        q16, _ = quantize_rows_rtn(w, INT_FORMATS["int8"], "embed", QuantConfig(int8_round_scale="fp16"))
        d = (q32.int() - q16.int()).abs()
        print(f"   1024x512 N(0, {std}^2): {100 * float(d.ne(0).float().mean()):.3f}% of codes, max |diff| {int(d.max())}")


def controls() -> None:
    print("3. control tensors stored fp16 by the records (fp32 in pgolf before issue #18)")
    for name in ("pr162", "pr180", "pr264", "pr366", "pr414", "pr691"):
        cfg = load_experiment(os.path.join(STACKS, f"{name}.toml")).config
        with torch.device("meta"):
            sd = GPT(cfg.model).state_dict()
        old = plan_state_dict(sd, QuantConfig(**{**vars(cfg.quant), "control_size_first": False}))
        new = plan_state_dict(sd, cfg.quant)
        moved = [n for n in sd if old[n].kind == "fp32" and new[n].kind == "fp16"]
        n = sum(sd[k].numel() for k in moved)
        print(f"   {name}: {len(moved)} tensors, {n:,} params, {2 * n:,} payload bytes saved")


def tail() -> None:
    n_pos, seq_len, stride = 62_021_632, 2048, 64  # #691 logs windows=969088 for this stream length
    starts = [ws for ws in range(0, n_pos, stride) if min(ws + seq_len, n_pos) - ws >= stride or ws == 0]
    short = [ws for ws in starts if ws + seq_len > n_pos]
    ranges = {(ws + max(n_pos - ws - stride, 0), n_pos) for ws in short}
    scored = sum(min(seq_len, n_pos - ws) - (0 if ws == 0 else max(min(seq_len, n_pos - ws) - stride, 0))
                 for ws in starts)
    extra = scored - n_pos
    print("4. sliding eval, stride 64, seq 2048, n_pos", f"{n_pos:,}")
    print(f"   records: {len(starts):,} windows, {len(short)} short tail windows all scoring {sorted(ranges)}")
    print(f"   pgolf:   {len(plan_windows(n_pos, seq_len, stride)):,} windows, every position once")
    print(f"   extra scored tokens in the records: {extra:,} = {extra / n_pos:.2e} of the stream")


if __name__ == "__main__":
    floors()
    int8_rounding()
    controls()
    tail()
