"""pgolf data demo | fineweb"""
from __future__ import annotations

import os
import sys


def add_arguments(p) -> None:
    from pgolf.fineweb import FINEWEB_VARIANTS
    from pgolf.trainers.config.data import VARIANTS

    sub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    demo = sub.add_parser("demo", help="build the embedded demo corpus (stdlib text) -> tokenizer + shards")
    demo.add_argument("--out", default=None, help="output folder (default: $PGOLF_DATA_DIR/demo or ./data/demo)")
    demo.add_argument("--force", action="store_true", help="rebuild even if the manifest verifies")
    demo.add_argument("--variant", default=None, choices=tuple(VARIANTS),
                      help="data.variant to build (default sp1024; others build into demo_<variant>/)")
    demo.add_argument("--vocab", type=int, default=None, choices=(1024, 4096, 8192),
                      help="alias: --vocab V is --variant spV (with --variant: must agree with it)")
    fw = sub.add_parser("fineweb", help="download the official FineWeb shards + tokenizer (needs network)")
    fw.add_argument("--variant", default="sp1024", choices=FINEWEB_VARIANTS)
    fw.add_argument("--repo-id", default=None,
                    help="HF dataset repo (default: the challenge's for sp1024, kevclark/parameter-golf for sp4096/sp8192)")
    fw.add_argument("--train-shards", type=int, default=80)
    fw.add_argument("--out", default=None, help="output folder (default: $PGOLF_DATA_DIR or ./data)")


def run(args) -> int:
    from pgolf.datasets import DataError, build_demo, default_data_dir, demo_dir_name, download_fineweb, variant_repo

    try:
        if args.source == "demo":
            variant = _demo_variant(args.variant, args.vocab)
            out = args.out or os.path.join(default_data_dir(), demo_dir_name(variant=variant))
            _check_writable(out)  # before the corpus and tokenizer are built, not after
            manifest = build_demo(out, force=args.force, variant=variant)
            print(f"demo corpus ready in {os.path.abspath(out)}")
            print(_describe(manifest))
        else:
            out = args.out or default_data_dir()
            download_fineweb(variant=args.variant, train_shards=args.train_shards, out_dir=out,
                             repo_id=args.repo_id or variant_repo(args.variant))
    except DataError as exc:
        print(f"pgolf data: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:  # read-only or full storage, a file where a folder should be
        print(f"pgolf data: cannot write {exc.filename or args.out}: {exc.strerror or exc}; pass --out a writable "
              "folder with free space (or set PGOLF_DATA_DIR)", file=sys.stderr)
        return 2
    return 0


def _demo_variant(variant: str | None, vocab: int | None) -> str:
    from pgolf.datasets import DataError
    from pgolf.trainers.config.data import VARIANTS

    if variant is None:
        return f"sp{vocab or 1024}"
    if vocab is not None and VARIANTS[variant][0] != vocab:
        raise DataError(f"--vocab {vocab} conflicts with --variant {variant} ({VARIANTS[variant][0]} pieces); pass one of them")
    return variant


def _check_writable(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    probe = os.path.join(out, f".pgolf-write-test-{os.getpid()}")
    with open(probe, "w"):
        pass
    os.unlink(probe)


def _describe(manifest) -> str:
    return (f"  documents: {manifest.docs['train']:,} train / {manifest.docs['val']:,} val   "
            f"tokens: {manifest.tokens['train']:,} train / {manifest.tokens['val']:,} val\n"
            f"  shards:    {manifest.data_path}\n  tokenizer: {manifest.tokenizer_path}")
