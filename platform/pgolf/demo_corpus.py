"""The offline demo corpus: real English text that ships with every CPython install (demo_text.py),
tokenized by a SentencePiece BPE trained with the challenge tokenizer's settings at 1024, 4096 or
8192 pieces, written in the challenge layout with a manifest that vouches for every file. It exists so
that a fresh machine with no network can run the whole platform end to end; its scores are not
comparable with FineWeb scores."""
from __future__ import annotations

import io
import json
import os
import platform as _platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgolf.datacommon import (DEMO_KIND, MANIFEST_NAME, DataError, PathLike, Progress, _read_manifest, _say,
                              _sha256, default_data_dir)
from pgolf.demo_text import collect_demo_documents

# Bump when the recipe (module list, tokenizer settings, split rule) changes: older builds then
# fail verification and get rebuilt instead of silently mixing with new expectations.
DEMO_FORMAT = 1
DEMO_DATASET = "fineweb10B_sp1024"
DEMO_TOKENIZER_STEM = "fineweb_1024_bpe"
DEMO_TOKENIZER_FILE = f"tokenizers/{DEMO_TOKENIZER_STEM}.model"
DEMO_VOCAB_SIZE = 1024
# The challenge's tokenizer sizes; the demo trains a real BPE of each on the same text (8192 takes ~4 s).
DEMO_VOCAB_SIZES = (1024, 4096, 8192)


def demo_variant(vocab: int = DEMO_VOCAB_SIZE, variant: str | None = None) -> str:
    """The data.variant of a demo build: `variant` when given, else the plain BPE of `vocab` pieces."""
    from pgolf.trainers.config.data import VARIANTS

    if variant is None:
        if vocab not in DEMO_VOCAB_SIZES:
            raise DataError(f"demo vocab {vocab} is not one of {', '.join(map(str, DEMO_VOCAB_SIZES))}")
        return f"sp{vocab}"
    if variant not in VARIANTS:
        raise DataError(f"demo variant {variant!r} is not one of {', '.join(VARIANTS)}")
    return variant


def demo_layout(vocab: int = DEMO_VOCAB_SIZE, variant: str | None = None) -> tuple[str, str]:
    """(dataset folder, tokenizer file) of a demo build, named like the challenge exports."""
    from pgolf.trainers.config.data import variant_layout

    dataset, tok = variant_layout(demo_variant(vocab, variant))
    return dataset, f"tokenizers/{tok}"


def demo_dir_name(vocab: int = DEMO_VOCAB_SIZE, variant: str | None = None) -> str:
    """Folder of the demo build under the data root: `demo` (sp1024) or `demo_<variant>`."""
    v = demo_variant(vocab, variant)
    return "demo" if v == f"sp{DEMO_VOCAB_SIZE}" else f"demo_{v}"
DEMO_BOS_ID = 1
DEMO_VAL_FRACTION = 0.10
# 10% of the documents is ~130k characters on CPython 3.11; the floor keeps ~30k+ val tokens even
# on an install whose docstrings are shorter.
DEMO_MIN_VAL_CHARS = 100_000
DEMO_MIN_VAL_TOKENS = 30_000
# Real exports use 10**8-token shards; a small fixed size makes the demo train split span two
# shards so the multi-shard stream (and its wrap-around) is exercised by every smoke run.
DEMO_TRAIN_SHARD_TOKENS = 2**18

# The challenge tokenizer's trainer settings (docs/techniques.md 2.2) plus what makes training
# deterministic and lets it see every document whole.
DEMO_TOKENIZER_SETTINGS: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": DEMO_VOCAB_SIZE,
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": DEMO_BOS_ID,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "max_sentence_length": 1 << 20,
}


@dataclass(frozen=True)
class DemoManifest:
    """A verified demo build (paths absolute)."""

    root: Path
    data_path: Path
    tokenizer_path: Path
    vocab_size: int
    docs: dict[str, int]
    tokens: dict[str, int]
    files: dict[str, dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)
    built: bool = False  # True when this call (re)built the files

    @property
    def kind(self) -> str:
        return str(self.raw.get("kind"))

    @property
    def variant(self) -> str:
        return str(self.raw.get("variant") or f"sp{self.vocab_size}")

    @classmethod
    def from_dict(cls, root: Path, raw: dict[str, Any], built: bool = False) -> "DemoManifest":
        return cls(
            root=root,
            data_path=root / raw["data_path"],
            tokenizer_path=root / raw["tokenizer_path"],
            vocab_size=int(raw["vocab_size"]),
            docs=dict(raw["docs"]),
            tokens=dict(raw["tokens"]),
            files=dict(raw["files"]),
            raw=raw,
            built=built,
        )


def verify_manifest(out_dir: PathLike | None = None) -> DemoManifest:
    """Check a demo build against its manifest (every file's size and sha256, no stray shards).

    Raises DataError naming the first file that is missing, altered or unexpected.
    """
    root = Path(out_dir).resolve() if out_dir is not None else default_data_dir()
    mpath = root / MANIFEST_NAME
    raw = _read_manifest(root)
    if raw is None:
        raise DataError(f"{mpath} not found: no demo data in {root}; build it with `pgolf data demo --out {root}`")
    if raw.get("kind") != DEMO_KIND:
        raise DataError(
            f"{mpath} is not a demo manifest (kind={raw.get('kind')!r}); {root} holds other data "
            "(e.g. downloaded FineWeb)"
        )
    if raw.get("format") != DEMO_FORMAT:
        raise DataError(
            f"{mpath} was written by demo recipe format {raw.get('format')!r}, this pgolf expects "
            f"{DEMO_FORMAT}; rebuild with `pgolf data demo --force`"
        )
    try:
        files = raw["files"]
        data_rel = raw["data_path"]
        for key in ("tokenizer_path", "vocab_size", "docs", "tokens"):
            raw[key]
    except KeyError as exc:
        raise DataError(f"{mpath}: manifest lacks the {exc} entry; rebuild with `pgolf data demo --force`") from exc
    fix = f"rebuild with `pgolf data demo --force --out {root}`"
    for rel, meta in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            raise DataError(f"{path} is missing (listed in {mpath}); {fix}")
        size = path.stat().st_size
        if size != int(meta["bytes"]):
            raise DataError(f"{path} has {size} bytes, the manifest says {meta['bytes']}: the file was altered; {fix}")
        digest = _sha256(path)
        if digest != meta["sha256"]:
            raise DataError(f"{path} sha256 {digest[:12]}... differs from the manifest's {meta['sha256'][:12]}...: the file was altered; {fix}")
    data_dir = root / data_rel
    listed = {Path(rel).name for rel in files if Path(rel).parent == Path(data_rel)}
    for extra in sorted(data_dir.glob("fineweb_*.bin")):
        if extra.name not in listed:
            raise DataError(
                f"{extra} is not part of the demo build in {mpath}; the loaders would read it as data. "
                f"Remove it or {fix}"
            )
    return DemoManifest.from_dict(root, raw)


def _tokenizer_settings(vocab: int, caseops: bool = False) -> dict[str, Any]:
    from pgolf.demo_caseops import tokenizer_extras

    return dict(DEMO_TOKENIZER_SETTINGS, vocab_size=vocab, **(tokenizer_extras() if caseops else {}))


def _train_tokenizer(train_docs: list[str], vocab: int = DEMO_VOCAB_SIZE, caseops: bool = False) -> bytes:
    import sentencepiece as spm

    from pgolf.demo_caseops import transformed

    docs = transformed(train_docs) if caseops else train_docs
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs), model_writer=model, minloglevel=2, **_tokenizer_settings(vocab, caseops)
    )
    return model.getvalue()


def _vocab_text(sp: Any) -> str:
    # Same two-column layout SentencePiece writes next to a .model (piece TAB score); written here
    # because training into memory keeps temporary paths out of the model file (determinism).
    lines = []
    for i in range(sp.get_piece_size()):
        score = sp.get_score(i)
        lines.append(f"{sp.id_to_piece(i)}\t{int(score) if float(score).is_integer() else score}")
    return "\n".join(lines) + "\n"


def _encode_split(sp: Any, docs: list[str], caseops: bool = False):
    import numpy as np

    from pgolf.demo_caseops import transformed

    encoded = sp.encode(transformed(docs) if caseops else docs)
    total = sum(len(e) + 1 for e in encoded)
    out = np.empty(total, dtype=np.uint16)
    pos = 0
    for ids in encoded:
        out[pos] = DEMO_BOS_ID  # BOS before every document, no EOS (the challenge export rule)
        out[pos + 1 : pos + 1 + len(ids)] = ids
        pos += len(ids) + 1
    return out


def _demo_targets(root: Path, variant: str) -> list[Path]:
    dataset, tok_file = demo_layout(variant=variant)
    data_dir = root / "datasets" / dataset
    targets = [root / MANIFEST_NAME, root / tok_file, (root / tok_file).with_suffix(".vocab")]
    if data_dir.is_dir():
        targets.extend(sorted(data_dir.glob("fineweb_*.bin")))
    return targets


def build_demo(out_dir: PathLike | None = None, *, force: bool = False, progress: Progress = print,
               vocab: int = DEMO_VOCAB_SIZE, variant: str | None = None) -> DemoManifest:
    """Build the offline demo corpus (tokenizer of `vocab` pieces + shards + manifest) under `out_dir`;
    `variant` (a data.variant, e.g. sp1024_caseops) overrides `vocab`.

    A valid existing build is left alone ("up to date"). A damaged one is reported, not silently
    replaced, unless `force=True`. A directory holding other data (a non-demo manifest.json) is
    never overwritten.
    """
    root = Path(out_dir).resolve() if out_dir is not None else default_data_dir()
    variant = demo_variant(vocab, variant)
    try:
        raw = _read_manifest(root)
    except DataError:
        if not force:
            raise
        raw = {"kind": DEMO_KIND}  # an unreadable manifest is rebuilt on request
    if raw is not None and raw.get("kind") != DEMO_KIND:
        raise DataError(
            f"{root / MANIFEST_NAME} describes non-demo data (kind={raw.get('kind')!r}, e.g. a FineWeb "
            f"download); refusing to overwrite {root}. Build the demo elsewhere with --out DIR or set PGOLF_DATA_DIR"
        )
    if raw is not None and not force:
        try:
            manifest = verify_manifest(root)
        except DataError as exc:
            raise DataError(f"demo data in {root} is damaged: {exc}") from exc
        if manifest.variant != variant:
            raise DataError(f"{root} holds the {manifest.variant} demo, not {variant}; use --out "
                            f"{root.parent / demo_dir_name(variant=variant)} or --force to rebuild it as {variant}")
        _say(progress, f"demo data up to date in {root} ({manifest.tokens['train']:,} train / "
                       f"{manifest.tokens['val']:,} val tokens)")
        return manifest
    if raw is None and not force:
        existing = [p for p in _demo_targets(root, variant) if p.exists()]
        if existing:
            raise DataError(
                f"{existing[0]} already exists but {root} has no demo manifest.json; refusing to overwrite "
                "data pgolf did not create. Pass force=True (`pgolf data demo --force`) or use another --out"
            )
    return _build_demo(root, progress, variant)


def _build_demo(root: Path, progress: Progress, variant: str) -> DemoManifest:
    import numpy as np
    import sentencepiece as spm

    from pgolf.demo_caseops import caseops_texts, encode_caseops
    from pgolf.trainers.bpb import build_byte_luts, check_tokenizer, token_bytes
    from pgolf.trainers.config.data import VARIANTS
    from pgolf.trainers.shards import write_shard

    vocab, caseops = VARIANTS[variant]

    t0 = time.perf_counter()
    _say(progress, f"building demo corpus in {root}")
    docs, source = collect_demo_documents()
    n_chars = sum(len(d) for d in docs)
    n_val = max(1, round(len(docs) * DEMO_VAL_FRACTION))
    while n_val < len(docs) - 1 and sum(len(d) for d in docs[:n_val]) < DEMO_MIN_VAL_CHARS:
        n_val += 1
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    if len(train_docs) < 10:
        raise DataError(
            f"only {len(docs)} demo documents could be collected (is Python running with -OO, which strips "
            "docstrings?); run `pgolf data demo` with a normal python"
        )
    _say(progress, f"  {len(docs):,} documents ({n_chars / 1e6:.2f} M chars) from {len(source['modules'])} "
                   f"modules + pydoc topics; {len(val_docs):,} val / {len(train_docs):,} train")

    dataset, tok_file = demo_layout(variant=variant)
    if caseops:
        # CaseOps: the documents are the tokenizer-normalised text (the bytes the plain demo's LUT
        # counts), the tokenizer learns on their transform with the operators as its own symbols
        val_docs, train_docs = caseops_texts(val_docs), caseops_texts(train_docs)
    model_bytes = _train_tokenizer(train_docs, vocab, caseops)
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    tok_path = root / tok_file
    check_tokenizer(sp, model_path=tok_path)
    _say(progress, f"  trained tokenizer: {sp.get_piece_size()} pieces ({time.perf_counter() - t0:.1f}s)")

    if caseops:
        val_tokens, val_sidecar = encode_caseops(sp, val_docs, DEMO_BOS_ID)
        train_tokens = _encode_split(sp, train_docs, caseops=True)
    else:
        val_tokens, val_sidecar = _encode_split(sp, val_docs), None
        train_tokens = _encode_split(sp, train_docs)
    if val_tokens.size < DEMO_MIN_VAL_TOKENS:
        raise DataError(
            f"demo validation split has only {val_tokens.size} tokens (< {DEMO_MIN_VAL_TOKENS}); this Python's "
            "docstrings are too short for the demo corpus"
        )
    shard_size = DEMO_TRAIN_SHARD_TOKENS
    if train_tokens.size <= shard_size:
        shard_size = (train_tokens.size + 1) // 2  # still two shards on a small install
    train_parts = [train_tokens[i : i + shard_size] for i in range(0, train_tokens.size, shard_size)]

    luts = build_byte_luts(sp, vocab)

    def count_bytes(tokens) -> int:
        t = np.asarray(tokens, dtype=np.int64)
        return int(token_bytes(t[:-1], t[1:], luts).sum())

    # Stage everything in a sibling folder and move it in at the end, manifest last, so an
    # interrupted build never leaves a manifest that vouches for half-written files.
    staging = root / f".demo-build-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    data_rel = f"datasets/{dataset}"
    written: dict[str, Path] = {}
    try:
        (staging / "tokenizers").mkdir(parents=True)
        (staging / data_rel).mkdir(parents=True)
        written[tok_file] = staging / tok_file
        written[tok_file].write_bytes(model_bytes)
        vocab_rel = str(Path(tok_file).with_suffix(".vocab"))
        written[vocab_rel] = staging / vocab_rel
        written[vocab_rel].write_text(_vocab_text(sp), encoding="utf-8")
        shards = {"train": [], "val": []}
        for split, parts in (("val", [val_tokens]), ("train", train_parts)):
            for i, part in enumerate(parts):
                rel = f"{data_rel}/fineweb_{split}_{i:06d}.bin"
                write_shard(staging / rel, part)
                written[rel] = staging / rel
                shards[split].append(rel)
                if split == "val" and val_sidecar is not None:  # BPB counts these bytes (original text)
                    side = f"{data_rel}/fineweb_val_bytes_{i:06d}.bin"
                    write_shard(staging / side, val_sidecar)
                    written[side] = staging / side
        files = {rel: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for rel, p in sorted(written.items())}
        from pgolf import __version__ as pgolf_version

        manifest = {
            "kind": DEMO_KIND,
            "format": DEMO_FORMAT,
            "description": "pgolf offline demo corpus: Python help topics + stdlib docstrings; not FineWeb",
            "created_by": f"pgolf {pgolf_version}",
            "python": _platform.python_version(),
            "sentencepiece": getattr(spm, "__version__", "unknown"),
            "dataset": dataset,
            "data_path": data_rel,
            "tokenizer_path": tok_file,
            "vocab_size": vocab,
            "variant": variant,
            "text_transform": "lossless_caps_caseops_v1" if caseops else "identity",
            "bos_id": DEMO_BOS_ID,
            "append_eos": False,
            "docs": {"total": len(docs), "train": len(train_docs), "val": len(val_docs)},
            "tokens": {"train": int(train_tokens.size), "val": int(val_tokens.size)},
            "bytes": {"train": count_bytes(train_tokens) if not caseops else None,
                      "val": count_bytes(val_tokens) if not caseops else int(val_sidecar.sum())},
            "train_shard_tokens": int(shard_size),
            "shards": shards,
            "source": source,
            "tokenizer_settings": _tokenizer_settings(vocab, caseops),
            "build_seconds": None,
            "files": files,
        }
        root.mkdir(parents=True, exist_ok=True)
        old_manifest = root / MANIFEST_NAME
        if old_manifest.exists():
            old_manifest.unlink()
        stale_dir = root / data_rel
        if stale_dir.is_dir():
            for stale in stale_dir.glob("fineweb_*.bin"):
                if f"{data_rel}/{stale.name}" not in written:
                    stale.unlink()
        for rel, src in written.items():
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        manifest["build_seconds"] = round(time.perf_counter() - t0, 3)
        tmp = root / f".{MANIFEST_NAME}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, root / MANIFEST_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _say(progress, f"  wrote {len(train_parts)} train shards ({train_tokens.size:,} tokens) and 1 val shard "
                   f"({val_tokens.size:,} tokens) in {manifest['build_seconds']:.1f}s")
    return DemoManifest.from_dict(root, manifest, built=True)


def ensure_demo(out_dir: PathLike | None = None, *, progress: Progress = print,
                vocab: int = DEMO_VOCAB_SIZE, variant: str | None = None) -> DemoManifest:
    """The demo build in `out_dir`, (re)building it when missing or damaged.

    Unlike `build_demo`, a damaged demo build is replaced (it is derived data). Data that is not a
    demo build is still never overwritten.
    """
    root = Path(out_dir).resolve() if out_dir is not None else default_data_dir()
    variant = demo_variant(vocab, variant)
    raw = _read_manifest(root)
    if raw is not None and raw.get("kind") == DEMO_KIND:
        try:
            manifest = verify_manifest(root)
            if manifest.variant == variant:
                return manifest
            _say(progress, f"rebuilding demo data: {root} holds {manifest.variant}, {variant} wanted")
        except DataError as exc:
            _say(progress, f"rebuilding demo data: {exc}")
        return build_demo(root, force=True, progress=progress, variant=variant)
    return build_demo(root, force=False, progress=progress, variant=variant)


def ensure_variant_demo(data_root: PathLike, variant: str) -> DemoManifest:
    """`ensure_demo` of a data.variant's build in its folder under `data_root` (`demo`, `demo_<variant>`)."""
    return ensure_demo(Path(data_root) / demo_dir_name(variant=variant), progress=None, variant=variant)
