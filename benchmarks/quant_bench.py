"""Quantize + compress time and bytes of a full-size 11-layer model on CPU, and the zstd level/threads
trade-off.

    python benchmarks/quant_bench.py [--stack pr691] [--weight-std 0.14] [--levels 3,9,15,19,22]
                                     [--threads 0,2] [--no-gptq] [--json out.json]
    python benchmarks/quant_bench.py --stack pr691 --layouts gauss,t4,run:<dir> [--level 19] [--blocks 3]

The second form compares pgolf's blob layouts (state / sorted / grouped order, with and without byte
shuffle) with the records' layout (torch.save of the same codes), same compressor and level. Regime
run:<dir> takes the codes of a finished run's blob (trained weights, e.g. of `pgolf train <stack> --smoke`).

The weights are random (no CPU can train the 27M-parameter model in reasonable time): every matrix
above the passthrough threshold is N(0, std^2), everything else keeps its initialisation. Compressed
size depends on the code entropy, which depends on std because every record clamps the scale at
1/Q; the default std 0.14 puts the #414 GPTQ-lite recipe near its published ~15.5 MB model blob.
Times are wall-clock on whatever CPU runs this; rows of one run are comparable with each other.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stack_config(name: str):
    from pgolf.experiment import load_experiment
    return load_experiment(os.path.join(ROOT, "experiments", "stacks", f"{name}.toml")).resolved(None, 1)


def random_state(cfg, std: float, seed: int = 0) -> dict[str, torch.Tensor]:
    from pgolf.trainers.model import GPT
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point() and v.ndim == 2 and v.numel() > 8192:
            state[k] = torch.randn(v.shape, generator=g) * std
        else:
            state[k] = v.detach().clone()
    return state


def records_layout(tensors: dict[str, torch.Tensor], order: list[str]) -> bytes:
    """The records' blob layout of the same tensors: torch.save of one dict in state_dict order, each
    quantized matrix as its int8 codes then its fp16 row scales, everything else as stored."""
    import io
    out = {}
    for n in order:
        for key in ((n + ".q", n + ".scale") if n + ".q" in tensors else (n,)):
            if key in tensors:
                out[key] = tensors[key]
    out.update({k: tensors[k] for k in sorted(tensors) if k not in out})
    buf = io.BytesIO()
    torch.save(out, buf)
    return buf.getvalue()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def quantize_rows(state, qcfg, gptq_codes=None):
    from pgolf.trainers import serialize
    from pgolf.trainers.quant import quantize_state_dict
    (tensors, meta), tq = timed(lambda: quantize_state_dict(state, qcfg, gptq_codes))
    packed, tp = timed(lambda: serialize.pack(tensors, meta))
    return packed, tq, tp


def compress_row(packed: bytes, compressor: str, level: int, threads: int) -> dict:
    from pgolf.trainers import serialize
    blob, tc = timed(lambda: serialize.compress(packed, compressor, level, threads))
    back, td = timed(lambda: serialize.decompress(blob))
    assert back == packed
    return {"compressor": compressor, "level": level, "threads": threads, "bytes": len(blob),
            "compress_s": round(tc, 2), "decompress_s": round(td, 3), "ratio": round(len(packed) / len(blob), 3)}


def gptq_row(state, qcfg, n_rows: int = 2048, seed: int = 1) -> tuple[dict, dict]:
    """GPTQ solve time with synthetic Hessians (correlated random activations), SD-clip scales."""
    from pgolf.trainers.gptq import gptq_quantize
    from pgolf.trainers.quant import INT_FORMATS, plan_state_dict
    g = torch.Generator().manual_seed(seed)
    plans = plan_state_dict(state, qcfg)
    hess: dict[int, torch.Tensor] = {}
    codes = {}
    t0 = time.perf_counter()
    for name, plan in plans.items():
        if plan.kind != "int" or plan.category not in qcfg.gptq_categories:
            continue
        cols = state[name].size(1)
        if cols not in hess:
            mix = torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols**0.5
            x = torch.randn(n_rows, cols, generator=g) @ mix
            hess[cols] = x.t() @ x
        codes[name] = gptq_quantize(state[name], hess[cols], INT_FORMATS[plan.fmt], plan.category, qcfg)
    return {"matrices": len(codes), "solve_s": round(time.perf_counter() - t0, 1)}, codes


def regime_state(cfg, regime: str, seed: int = 0, blocks: int = 0) -> dict[str, torch.Tensor]:
    """Weights of one regime: "gauss" N(0, 1/fan_in), "t4" 0.35 * Student-t(df 4), "stdX" N(0, X^2).
    blocks > 0 keeps only the first `blocks` transformer blocks (and every non-block tensor)."""
    state = random_state(cfg, 0.14, seed)
    torch.manual_seed(seed)
    t4 = torch.distributions.StudentT(4.0)
    for k, v in state.items():
        if v.is_floating_point() and v.ndim == 2 and v.numel() > 8192:
            if regime == "gauss":
                state[k] = torch.randn(v.shape) / v.shape[1] ** 0.5
            elif regime == "t4":
                state[k] = t4.sample(v.shape) * 0.35
            elif regime.startswith("std"):
                state[k] = torch.randn(v.shape) * float(regime[3:])
            else:
                raise SystemExit(f"unknown regime {regime!r} (gauss, t4, std<X>)")
    if blocks:
        state = {k: v for k, v in state.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < blocks}
    return state


def trained_codes(run_dir: str) -> tuple[dict, dict, list[str]]:
    """The quantized tensors of a finished run (e.g. `pgolf train <stack> --smoke`) and its model's
    state_dict order: the trained-weights regime."""
    from pgolf.trainers import serialize
    from pgolf.trainers.config import TrainConfig
    from pgolf.trainers.model import GPT
    with open(os.path.join(run_dir, "result.json")) as fh:
        blob = os.path.join(run_dir, json.load(fh)["artifact/blob"])
    with open(blob, "rb") as fh:
        tensors, meta = serialize.unpack(serialize.decompress(fh.read()))
    with torch.device("meta"):
        order = list(GPT(TrainConfig.from_json(os.path.join(run_dir, "resolved_config.json")).model).state_dict())
    return tensors, meta, order


def layout_compare(cfg, regimes: list[str], level: int, blocks: int, variants: list[str] | None = None) -> list[dict]:
    """pgolf's blob layouts against the records' torch.save layout of the same codes, same codec/level."""
    from pgolf.trainers import serialize
    from pgolf.trainers.quant import quantize_state_dict
    comp = cfg.quant.compressor
    rows = []
    print(f"\nlayouts ({comp}-{level}, {'first %d blocks' % blocks if blocks else 'whole model'}); ratio = pgolf / records")
    combos = [(lay, sh) for lay in serialize.LAYOUTS for sh in (False, True)
              if variants is None or f"{lay}{'+shuffle' if sh else ''}" in variants]
    print(f"{'regime':8s} {'records_B':>11s} " + " ".join(f"{lay + ('+shuf' if sh else ''):>16s}" for lay, sh in combos))
    for regime in regimes:
        if regime.startswith("run:"):  # trained weights: the quantized codes of a finished run's blob
            tensors, meta, order = trained_codes(regime[4:])
        else:
            state = regime_state(cfg, regime, blocks=blocks)
            tensors, meta = quantize_state_dict(state, cfg.quant)
            order = list(state)
        theirs = len(serialize.compress(records_layout(tensors, order), comp, level))
        label = "trained" if regime.startswith("run:") else regime
        row = {"regime": regime, "records_bytes": theirs, "level": level, "blocks": blocks}
        cells = []
        for lay, sh in combos:
            packed = serialize.pack(tensors, meta, byte_shuffle=sh, order=serialize.layout_order(tensors, meta, lay))
            n = len(serialize.compress(packed, comp, level))
            row[f"{lay}{'+shuffle' if sh else ''}"] = n
            cells.append(f"{n:>10,} {n / theirs:.3f}")
        rows.append(row)
        print(f"{label:8s} {theirs:11,} " + " ".join(f"{c:>16s}" for c in cells), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", default="",
                    help="regimes for the layout comparison only (e.g. gauss,t4,std0.14,run:<run dir>)")
    ap.add_argument("--level", type=int, default=0, help="codec level of the layout comparison (0: the stack's)")
    ap.add_argument("--blocks", type=int, default=0, help="layout comparison on the first N blocks only (CPU time)")
    ap.add_argument("--variants", default="", help="layouts to try, e.g. state,sorted,state+shuffle (default all)")
    ap.add_argument("--stack", default="pr691", help="experiments/stacks/<name>.toml for shape + quant recipe")
    ap.add_argument("--weight-std", type=float, default=0.14)
    ap.add_argument("--levels", default="3,9,15,19,22")
    ap.add_argument("--threads", default="0,2", help="zstd workers to try (0 = single-threaded)")
    ap.add_argument("--no-gptq", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from pgolf.trainers.config import QuantConfig
    cfg = stack_config(args.stack)
    if args.layouts:
        rows = layout_compare(cfg, args.layouts.split(","), args.level or cfg.quant.compress_level, args.blocks,
                              [v for v in args.variants.split(",") if v] or None)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"stack": args.stack, "layouts": rows}, fh, indent=2)
        return
    state = random_state(cfg, args.weight_std)
    n_params = sum(v.numel() for v in state.values())
    out: dict = {"stack": args.stack, "params": n_params, "weight_std": args.weight_std,
                 "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "schemes": [], "compress": []}
    out["loadavg_start"] = os.getloadavg()[0]
    print(f"model: {args.stack} {cfg.model.num_layers}L d{cfg.model.model_dim} params {n_params:,} "
          f"weight std {args.weight_std}  torch threads {torch.get_num_threads()}  cpus {os.cpu_count()}  "
          f"load avg {out['loadavg_start']:.1f}", flush=True)

    schemes = {
        "baseline int8 (zlib-9)": QuantConfig(),
        "#180 int5 MLP / int6 attn+bigram": stack_config("pr180").quant,
        f"{args.stack} recipe": cfg.quant,
    }
    packed_main = None
    print(f"\n{'scheme':36s} {'quantize_s':>10s} {'pack_s':>7s} {'payload_B':>11s} {'zstd22x2_B':>11s} {'zstd22_s':>8s}")
    for label, qcfg in schemes.items():
        packed, tq, tp = quantize_rows(state, qcfg)
        z = compress_row(packed, "zstd", 22, 2)
        out["schemes"].append({"scheme": label, "quantize_s": round(tq, 2), "pack_s": round(tp, 2),
                               "payload_bytes": len(packed), "zstd22_bytes": z["bytes"], "zstd22_s": z["compress_s"]})
        print(f"{label:36s} {tq:10.2f} {tp:7.2f} {len(packed):11,} {z['bytes']:11,} {z['compress_s']:8.1f}", flush=True)
        if qcfg is cfg.quant:
            packed_main = packed

    if not args.no_gptq:
        gcfg = QuantConfig(**{**cfg.quant.__dict__, "gptq": True, "sd_clip_k": 12.85, "clip_search": "off",
                              "mlp_format": "int6", "attn_format": "int6"})
        info, codes = gptq_row(state, gcfg)
        packed, tq, tp = quantize_rows(state, gcfg, codes)
        z = compress_row(packed, "zstd", 22, 2)
        row = {"scheme": "full GPTQ int6 SD-clip k=12.85", **info, "quantize_s": round(tq, 2),
               "payload_bytes": len(packed), "zstd22_bytes": z["bytes"]}
        out["schemes"].append(row)
        print(f"{'full GPTQ int6, SD-clip 12.85':36s} {tq:10.2f} {tp:7.2f} {len(packed):11,} {z['bytes']:11,} "
              f"{z['compress_s']:8.1f}   (GPTQ solve of {info['matrices']} matrices: {info['solve_s']}s)", flush=True)

    print(f"\ncompressors on the {args.stack} payload ({len(packed_main):,} B):")
    print(f"{'compressor':10s} {'level':>5s} {'threads':>7s} {'bytes':>11s} {'ratio':>6s} {'compress_s':>10s} {'decompress_s':>12s}")
    rows = []
    for level in (int(v) for v in args.levels.split(",")):
        for threads in (int(v) for v in args.threads.split(",")):
            rows.append(compress_row(packed_main, "zstd", level, threads))
            r = rows[-1]
            print(f"{'zstd':10s} {level:5d} {threads:7d} {r['bytes']:11,} {r['ratio']:6.3f} {r['compress_s']:10.2f} "
                  f"{r['decompress_s']:12.3f}", flush=True)
    for comp, level in (("lzma", 6), ("lzma", 9), ("zlib", 9)):
        rows.append(compress_row(packed_main, comp, level, 0))
        r = rows[-1]
        print(f"{comp:10s} {level:5d} {0:7d} {r['bytes']:11,} {r['ratio']:6.3f} {r['compress_s']:10.2f} "
              f"{r['decompress_s']:12.3f}", flush=True)
    out["compress"] = rows
    out["loadavg_end"] = os.getloadavg()[0]
    print(f"\nload avg at the end: {out['loadavg_end']:.1f} (timings on a shared CPU scale with it)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
