"""Counted code bytes of every stack file: readable trainer sources, what the packer ships (reached code,
minified), and the real size of the self-extracting train_gpt.py, next to the record's own counted
train_gpt.py where the stack reproduces a record in the challenge repository.

    python benchmarks/code_bytes.py [--stacks pr691,baseline] [--json out.json]
    python benchmarks/code_bytes.py --by-module pr691     # where a stack's shipped bytes come from
    python benchmarks/code_bytes.py --script rec/train_gpt.py   # a readable script packed the same way

--by-module ships the stack one minified file per module (as the packer does when it cannot merge) and
compresses each alone: the per-module sizes add up to more than the merged file, but rank where a
rewrite for size would pay. --script minifies a standalone script with the packer's options (globals
renamed) and wraps it with the same codecs and literal: what pgolf's packing of, say, a record's own
readable script would count, for comparing like with like.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The record's counted train_gpt.py (bytes): `git cat-file -s` in the challenge repository, records/ on
# main, or the PR head (refs/pull/N/head) for the seed PRs not merged into records/.
RECORD_CODE_BYTES = {
    "baseline": (47_642, "2026-03-17_NaiveBaseline"),
    "pr162": (52_243, "2026-03-20_Int6_MLP3x_SmearGate_BigramHash_MuonWD_SWA"),
    "pr180": (52_930, "2026-03-20_10L_Int5MLP_MuonWD04_SWA50"),
    "pr198": (64_415, "PR #198 head: 2026-03-20_11L_Int6_MLP3x_WD04_SmearBigram2k_1.1318"),
    "pr264": (56_124, "PR #264 head: 2026-03-21_11L_Int5MLP_TTT_SmearGate"),
    "pr317": (70_875, "PR #317 head: 2026-03-21_11L_XSA4_EMA_TTT_Int6_MLP3x_WD04"),
    "pr366": (59_331, "PR #366 head: 2026-03-21_TTT_BackoutConn_Int5MLP (non-record)"),
    "pr287": (66_133, "2026-03-20_11L_XSA4_EMA_Int6_MLP3x_WD04_1.1271"),
    "pr315": (67_617, "2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248"),
    "pr414": (67_603, "2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233"),
    "pr549": (89_458, "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"),
    "pr691": (74_001, "PR #691 head 787610b: 2026-03-25_PR414_CosineTTT30ep_1.0988"),
    "pr1394": (15_516, "2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2"),
    "pr1493": (16_594, "2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"),
    # its seed-42 log's "Code size (compressed)" (a brotli wrapper; the folder holds the 158,429 B readable script)
    "pr1855": (31_999, "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"),
}


def _stack_config(name: str):
    """The stack file's resolved config for seed 1, or exit with the one-line reason."""
    from pgolf.experiment import ExperimentError, load_experiment

    try:
        return load_experiment(os.path.join(ROOT, "experiments", "stacks", f"{name}.toml")).resolved(None, 1)
    except ExperimentError as exc:
        raise SystemExit(f"code_bytes.py: {exc}") from None


def measure(name: str) -> dict:
    from pgolf.commands.inspect import code_bytes

    cfg = _stack_config(name)
    rec = RECORD_CODE_BYTES.get(name)
    return {"stack": name, **code_bytes(cfg), "record_bytes": rec[0] if rec else None,
            "record": rec[1] if rec else None}


def by_module(name: str) -> list[tuple[str, int, int]]:
    from pgolf.trainers.codebundle import _CODECS, trainer_sources
    from pgolf.trainers.packer import ship_sources
    from pgolf.trainers.posttrain import embedded_config

    cfg = embedded_config(_stack_config(name))
    files = ship_sources(trainer_sources(), cfg, merge=False)
    comp = _CODECS["brotli"][2]
    return sorted(((rel, len(text.encode()), len(comp(text.encode()))) for rel, text in files.items()),
                  key=lambda r: -r[2])


def pack_script(path: str, out: str | None = None) -> dict:
    """A standalone script minified and wrapped like the trainer's payload; written to `out` if given."""
    import python_minifier

    from pgolf.trainers.codebundle import _CODECS, _literal

    with open(path, encoding="utf-8") as fh:
        src = fh.read()
    try:
        small = python_minifier.minify(src, remove_literal_statements=True, rename_locals=True, rename_globals=True,
                                       hoist_literals=False, remove_asserts=False, remove_debug=False).encode()
    except SyntaxError as exc:  # e.g. a script written for a newer Python than this one
        raise SystemExit(f"{path}:{exc.lineno}: not valid Python {sys.version.split()[0]} ({exc.msg}); "
                         "run this benchmark under the Python the script was written for") from None
    best = None  # codebundle.build_wrapper's choice, over a plain script instead of a config's payload
    for codec, (imp, expr, comp) in _CODECS.items():
        try:
            text = f"#coding:latin-1\nimport {imp}\nexec({expr.replace('X', _literal(comp(small)))})\n".encode("latin-1")
        except ImportError:
            continue
        if best is None or len(text) < len(best[1]):
            best = (codec, text)
    if out:
        with open(out, "wb") as fh:
            fh.write(best[1])
    return {"script": path, "raw_bytes": len(src.encode()), "minified_bytes": len(small), "codec": best[0],
            "packed_bytes": len(best[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--stacks", default="", help="comma-separated stack names (default: every file)")
    mode.add_argument("--by-module", default=None, metavar="STACK", help="per-module shipped bytes of one stack")
    mode.add_argument("--script", nargs="+", default=None, help="readable scripts to pack like the trainer")
    ap.add_argument("--json", default=None, help="write the per-stack table as JSON (table mode only)")
    args = ap.parse_args()
    if args.json and (args.by_module or args.script):
        ap.error("--json writes the per-stack table; it does not go with --by-module or --script")
    if args.by_module:
        rows = by_module(args.by_module)
        print(f"{'module':18s} {'minified_B':>10s} {'brotli_B':>9s}")
        for rel, n, b in rows:
            print(f"{rel:18s} {n:10,} {b:9,}")
        print(f"{'sum':18s} {sum(r[1] for r in rows):10,} {sum(r[2] for r in rows):9,}")
        return
    if args.script:
        for path in args.script:
            r = pack_script(path)
            print(f"{path}: raw {r['raw_bytes']:,} B, minified {r['minified_bytes']:,} B, packed {r['packed_bytes']:,} B "
                  f"({r['codec']})")
        return
    names = [s for s in args.stacks.split(",") if s] or sorted(
        os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "experiments", "stacks", "*.toml")))
    rows = []
    print(f"{'stack':9s} {'raw_B':>8s} {'minified_B':>10s} {'packed_B':>9s} {'codec':6s} {'record_B':>9s} {'vs record':>9s}")
    for name in names:
        r = measure(name)
        rows.append(r)
        vs = f"{r['packed_bytes'] / r['record_bytes']:.2f}x" if r["record_bytes"] else "-"
        rec = f"{r['record_bytes']:,}" if r["record_bytes"] else "-"
        print(f"{name:9s} {r['raw_bytes']:8,} {r['minified_bytes']:10,} {r['packed_bytes']:9,} {r['codec']:6s} "
              f"{rec:>9s} {vs:>9s}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
