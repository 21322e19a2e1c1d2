"""Data preparation: the offline demo corpus and the official FineWeb download.

Both produce the challenge layout, so trainers and configs never care which one they read:

    <out>/datasets/fineweb10B_sp1024/fineweb_{train,val}_NNNNNN.bin
    <out>/tokenizers/fineweb_1024_bpe.model (+ .vocab)
    <out>/manifest.json

The demo corpus is real English text that ships with every CPython install (the `help()` topics in
`pydoc_data` and docstrings of pure-Python standard-library modules), tokenized by a SentencePiece
BPE model trained with the challenge tokenizer's settings. It exists so that a fresh machine with no
network can run the whole platform end to end; its scores are not comparable with FineWeb scores.

Torch and SentencePiece are imported inside the functions that need them (platform rule: importing
`pgolf.*` stays cheap).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import os
import platform as _platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[str], Any]]

__all__ = [
    "DataError",
    "DemoManifest",
    "FinewebDownload",
    "DEMO_DATASET",
    "DEMO_TOKENIZER_FILE",
    "DEMO_MODULES",
    "default_data_dir",
    "collect_demo_documents",
    "build_demo",
    "ensure_demo",
    "verify_manifest",
    "download_fineweb",
]

MANIFEST_NAME = "manifest.json"
DEMO_KIND = "demo"
# Bump when the recipe (module list, tokenizer settings, split rule) changes: older builds then
# fail verification and get rebuilt instead of silently mixing with new expectations.
DEMO_FORMAT = 1
DEMO_DATASET = "fineweb10B_sp1024"
DEMO_TOKENIZER_STEM = "fineweb_1024_bpe"
DEMO_TOKENIZER_FILE = f"tokenizers/{DEMO_TOKENIZER_STEM}.model"
DEMO_VOCAB_SIZE = 1024
DEMO_BOS_ID = 1
DEMO_VAL_FRACTION = 0.10
# 10% of the documents is ~130k characters on CPython 3.11; the floor keeps ~30k+ val tokens even
# on an install whose docstrings are shorter.
DEMO_MIN_VAL_CHARS = 100_000
DEMO_MIN_VAL_TOKENS = 30_000
# Real exports use 10**8-token shards; a small fixed size makes the demo train split span two
# shards so the multi-shard stream (and its wrap-around) is exercised by every smoke run.
DEMO_TRAIN_SHARD_TOKENS = 2**18
DEMO_MIN_DOC_CHARS = 40

# Pure-Python modules present (and importable without optional C extensions or side effects) on
# CPython 3.10 through 3.13. Fixed and sorted so the corpus is reproducible for a given Python.
DEMO_MODULES: tuple[str, ...] = tuple(sorted("""
argparse ast asyncio.events asyncio.streams asyncio.tasks base64 bdb bisect calendar cmd code codecs
codeop collections colorsys compileall concurrent.futures configparser contextlib copy copyreg csv
dataclasses datetime difflib dis doctest email.headerregistry email.message email.parser email.utils
enum filecmp fileinput fnmatch fractions ftplib functools getopt getpass gettext glob graphlib gzip
hashlib heapq hmac html html.parser http.client http.cookiejar http.cookies http.server imaplib
importlib importlib.metadata inspect io ipaddress json json.decoder json.encoder keyword linecache
locale logging logging.handlers mailbox mimetypes modulefinder multiprocessing.pool netrc numbers
opcode operator optparse pathlib pdb pickle pickletools pkgutil platform plistlib poplib pprint
profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter runpy sched secrets
selectors shelve shlex shutil smtplib socket socketserver statistics string stringprep subprocess
symtable sysconfig tabnanny tarfile tempfile textwrap threading timeit token tokenize trace traceback
types typing unittest unittest.mock urllib.parse urllib.request uuid warnings wave weakref webbrowser
xml.dom.minidom xml.etree.ElementTree xml.sax xml.sax.saxutils xmlrpc.client xmlrpc.server zipapp
zipfile zoneinfo
""".split()))

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

FINEWEB_REPO_ID = "willdepueoai/parameter-golf"
FINEWEB_REMOTE_ROOT = "datasets"


class DataError(RuntimeError):
    """Data that is missing, corrupt, or cannot be fetched; the message says what to do."""


def _say(progress: Progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def default_data_dir() -> Path:
    """$PGOLF_DATA_DIR if set, else `data/` under the current working directory (absolute)."""
    env = os.environ.get("PGOLF_DATA_DIR")
    return Path(env).expanduser().resolve() if env else (Path.cwd() / "data").resolve()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# demo corpus
# --------------------------------------------------------------------------------------------


def _clean_doc(doc: Any) -> str | None:
    if not isinstance(doc, str):
        return None
    text = inspect.cleandoc(doc).replace("\x00", " ").strip()
    return text if len(text) >= DEMO_MIN_DOC_CHARS else None


def _module_docstrings(mod: Any) -> list[str]:
    """Docstrings of the module and of the classes/functions/methods it defines itself.

    Objects re-exported from another module are skipped (their docstring belongs to that module),
    and `__doc__` is read directly rather than through inspect.getdoc, which would copy a parent
    class's docstring into every subclass.
    """
    out = [mod.__doc__]
    for _, obj in sorted(vars(mod).items(), key=lambda kv: kv[0]):
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj):
            out.append(obj.__doc__)
            for _, member in sorted(vars(obj).items(), key=lambda kv: kv[0]):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    out.append(member.__doc__)
        elif inspect.isfunction(obj):
            out.append(obj.__doc__)
    return out


def collect_demo_documents() -> tuple[list[str], dict[str, Any]]:
    """The demo documents, collected in a fresh interpreter.

    Libraries imported into this process (torch, Ray, ...) replace some standard-library functions
    with their own (their `__module__` changes, so their docstrings drop out); collecting in a clean
    `python -I` child makes the corpus depend on the Python version only, not on what ran before.
    """
    import subprocess
    import sys

    code = "import json; from pgolf.datasets import _collect_in_process as c; print(json.dumps(c()))"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise DataError(f"collecting the demo documents failed: {out.stderr.strip()[-2000:]}")
    docs, source = json.loads(out.stdout)
    return docs, source


def _collect_in_process() -> tuple[list[str], dict[str, Any]]:
    """The demo documents in their fixed order, plus a description of where they came from.

    Order is by sha256 of the text: stable for a given Python, and it interleaves help topics and
    docstrings so the validation prefix looks like the training data (as FineWeb's shuffled
    document selection does).
    """
    from pydoc_data.topics import topics

    docs: set[str] = set()
    for key in sorted(topics):
        text = _clean_doc(topics[key])
        if text:
            docs.add(text)
    n_topics = len(docs)
    used: list[str] = []
    missing: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DEMO_MODULES:
            try:
                mod = importlib.import_module(name)
            except Exception:  # an optional module absent from this build only shrinks the corpus
                missing.append(name)
                continue
            used.append(name)
            for doc in _module_docstrings(mod):
                text = _clean_doc(doc)
                if text:
                    docs.add(text)
    ordered = sorted(docs, key=lambda d: hashlib.sha256(d.encode("utf-8")).hexdigest())
    source = {
        "pydoc_topics": n_topics,
        "docstrings": len(ordered) - n_topics,
        "modules": used,
        "modules_missing": missing,
        "python": _platform.python_version(),
    }
    return ordered, source


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


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc}); rebuild with `pgolf data demo --force`") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: manifest is not a JSON object; rebuild with `pgolf data demo --force`")
    return raw


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


def _train_tokenizer(train_docs: list[str]) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train_docs), model_writer=model, minloglevel=2, **DEMO_TOKENIZER_SETTINGS
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


def _encode_split(sp: Any, docs: list[str]):
    import numpy as np

    encoded = sp.encode(docs)
    total = sum(len(e) + 1 for e in encoded)
    out = np.empty(total, dtype=np.uint16)
    pos = 0
    for ids in encoded:
        out[pos] = DEMO_BOS_ID  # BOS before every document, no EOS (the challenge export rule)
        out[pos + 1 : pos + 1 + len(ids)] = ids
        pos += len(ids) + 1
    return out


def _demo_targets(root: Path) -> list[Path]:
    data_dir = root / "datasets" / DEMO_DATASET
    targets = [root / MANIFEST_NAME, root / DEMO_TOKENIZER_FILE, (root / DEMO_TOKENIZER_FILE).with_suffix(".vocab")]
    if data_dir.is_dir():
        targets.extend(sorted(data_dir.glob("fineweb_*.bin")))
    return targets


def build_demo(out_dir: PathLike | None = None, *, force: bool = False, progress: Progress = print) -> DemoManifest:
    """Build the offline demo corpus (tokenizer + shards + manifest) under `out_dir`.

    A valid existing build is left alone ("up to date"). A damaged one is reported, not silently
    replaced, unless `force=True`. A directory holding other data (a non-demo manifest.json) is
    never overwritten.
    """
    root = Path(out_dir).resolve() if out_dir is not None else default_data_dir()
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
        _say(progress, f"demo data up to date in {root} ({manifest.tokens['train']:,} train / "
                       f"{manifest.tokens['val']:,} val tokens)")
        return manifest
    if raw is None and not force:
        existing = [p for p in _demo_targets(root) if p.exists()]
        if existing:
            raise DataError(
                f"{existing[0]} already exists but {root} has no demo manifest.json; refusing to overwrite "
                "data pgolf did not create. Pass force=True (`pgolf data demo --force`) or use another --out"
            )
    return _build_demo(root, progress)


def _build_demo(root: Path, progress: Progress) -> DemoManifest:
    import numpy as np
    import sentencepiece as spm

    from pgolf.trainers.bpb import build_byte_luts, check_tokenizer, token_bytes
    from pgolf.trainers.shards import write_shard

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

    model_bytes = _train_tokenizer(train_docs)
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    tok_path = root / DEMO_TOKENIZER_FILE
    check_tokenizer(sp, model_path=tok_path)
    _say(progress, f"  trained tokenizer: {sp.get_piece_size()} pieces ({time.perf_counter() - t0:.1f}s)")

    val_tokens = _encode_split(sp, val_docs)
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

    luts = build_byte_luts(sp, DEMO_VOCAB_SIZE)

    def count_bytes(tokens) -> int:
        t = np.asarray(tokens, dtype=np.int64)
        return int(token_bytes(t[:-1], t[1:], luts).sum())

    # Stage everything in a sibling folder and move it in at the end, manifest last, so an
    # interrupted build never leaves a manifest that vouches for half-written files.
    staging = root / f".demo-build-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    data_rel = f"datasets/{DEMO_DATASET}"
    written: dict[str, Path] = {}
    try:
        (staging / "tokenizers").mkdir(parents=True)
        (staging / data_rel).mkdir(parents=True)
        written[DEMO_TOKENIZER_FILE] = staging / DEMO_TOKENIZER_FILE
        written[DEMO_TOKENIZER_FILE].write_bytes(model_bytes)
        vocab_rel = str(Path(DEMO_TOKENIZER_FILE).with_suffix(".vocab"))
        written[vocab_rel] = staging / vocab_rel
        written[vocab_rel].write_text(_vocab_text(sp), encoding="utf-8")
        shards = {"train": [], "val": []}
        for split, parts in (("val", [val_tokens]), ("train", train_parts)):
            for i, part in enumerate(parts):
                rel = f"{data_rel}/fineweb_{split}_{i:06d}.bin"
                write_shard(staging / rel, part)
                written[rel] = staging / rel
                shards[split].append(rel)
        files = {rel: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for rel, p in sorted(written.items())}
        from pgolf import __version__ as pgolf_version

        manifest = {
            "kind": DEMO_KIND,
            "format": DEMO_FORMAT,
            "description": "pgolf offline demo corpus: Python help topics + stdlib docstrings; not FineWeb",
            "created_by": f"pgolf {pgolf_version}",
            "python": _platform.python_version(),
            "sentencepiece": getattr(spm, "__version__", "unknown"),
            "dataset": DEMO_DATASET,
            "data_path": data_rel,
            "tokenizer_path": DEMO_TOKENIZER_FILE,
            "vocab_size": DEMO_VOCAB_SIZE,
            "bos_id": DEMO_BOS_ID,
            "append_eos": False,
            "docs": {"total": len(docs), "train": len(train_docs), "val": len(val_docs)},
            "tokens": {"train": int(train_tokens.size), "val": int(val_tokens.size)},
            "bytes": {"train": count_bytes(train_tokens), "val": count_bytes(val_tokens)},
            "train_shard_tokens": int(shard_size),
            "shards": shards,
            "source": source,
            "tokenizer_settings": DEMO_TOKENIZER_SETTINGS,
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


def ensure_demo(out_dir: PathLike | None = None, *, progress: Progress = print) -> DemoManifest:
    """The demo build in `out_dir`, (re)building it when missing or damaged.

    Unlike `build_demo`, a damaged demo build is replaced (it is derived data). Data that is not a
    demo build is still never overwritten.
    """
    root = Path(out_dir).resolve() if out_dir is not None else default_data_dir()
    raw = _read_manifest(root)
    if raw is not None and raw.get("kind") == DEMO_KIND:
        try:
            return verify_manifest(root)
        except DataError as exc:
            _say(progress, f"rebuilding demo data: {exc}")
            return build_demo(root, force=True, progress=progress)
    return build_demo(root, force=False, progress=progress)


# --------------------------------------------------------------------------------------------
# official FineWeb shards
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinewebDownload:
    root: Path
    data_path: Path
    tokenizer_path: Path
    val_files: list[Path]
    train_files: list[Path]
    manifest: dict[str, Any] = field(repr=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else "(no message)"


def _looks_like_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    # httpx / requests transport errors do not all derive from OSError
    names = {c.__name__ for c in type(exc).__mro__}
    return any(k in n for n in names for k in ("Connect", "Timeout", "Network", "Transport", "Proxy"))


def _unreachable_message(repo_id: str, endpoint: str | None, exc: BaseException) -> str:
    where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"} else ""
    return (
        f"could not reach the Hugging Face hub at {where}{offline} to download dataset {repo_id}: "
        f"{type(exc).__name__}: {_first_line(exc)}. Check the network / proxy "
        "settings and HF_ENDPOINT, or use `pgolf data demo` for the offline demo corpus"
    )


def _classify_fetch_error(exc: BaseException, repo_path: str, repo_id: str, endpoint: str | None) -> DataError:
    try:
        from huggingface_hub import errors as hf_errors
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        hf_errors = None
    if hf_errors is not None:
        if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
            return DataError(_unreachable_message(repo_id, endpoint, exc))
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return DataError(
                f"dataset repo {repo_id} was not found on the hub (or needs a token); check repo_id / HF_TOKEN"
            )
        if isinstance(exc, hf_errors.EntryNotFoundError):
            return DataError(f"{repo_path} is not in dataset {repo_id}; its manifest.json lists a file the repo lacks")
        if isinstance(exc, hf_errors.HfHubHTTPError):
            return DataError(f"the hub refused {repo_path} from {repo_id}: {_first_line(exc)}")
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{repo_path} is not in the data source for {repo_id}: {exc}")
    if _looks_like_network_error(exc):
        return DataError(_unreachable_message(repo_id, endpoint, exc))
    return DataError(f"fetching {repo_path} from {repo_id} failed: {type(exc).__name__}: {_first_line(exc)}")


def _probe_hub(repo_id: str, endpoint: str, timeout: float) -> None:
    # hf_hub_download retries a refused connection five times with backoff (~25 s) before failing;
    # one quick request first turns "no network" into an immediate, clear error.
    url = f"{endpoint.rstrip('/')}/api/datasets/{repo_id}"
    try:
        from huggingface_hub.utils import get_session

        get_session().head(url, timeout=timeout)
    except ImportError:  # pragma: no cover - older huggingface_hub
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        except urllib.error.HTTPError:
            pass  # any HTTP answer means the hub is reachable
        except Exception as exc:
            raise DataError(_unreachable_message(repo_id, endpoint, exc)) from exc
    except Exception as exc:
        raise DataError(_unreachable_message(repo_id, endpoint, exc)) from exc


def _is_valid_shard(path: Path) -> bool:
    from pgolf.trainers.shards import HEADER_BYTES, ShardError, read_header

    try:
        n = int(read_header(path)[2])
    except ShardError:
        return False
    return path.stat().st_size == HEADER_BYTES + 2 * n


def download_fineweb(
    variant: str = "sp1024",
    train_shards: int = 80,
    out_dir: PathLike | None = None,
    repo_id: str = FINEWEB_REPO_ID,
    hub: str | None = None,
    *,
    fetch: Callable[[str], PathLike] | None = None,
    remote_root: str = FINEWEB_REMOTE_ROOT,
    progress: Progress = print,
) -> FinewebDownload:
    """Download the official shards + tokenizer for `variant`, driven by the export's manifest.json.

    Hub layout (dataset repo `repo_id`, under `remote_root`, as the challenge's
    data/cached_challenge_fineweb.py reads it): `manifest.json`, `datasets/fineweb10B_<variant>/
    fineweb_{val,train}_NNNNNN.bin`, `tokenizers/<files>`. The manifest's `datasets` entry gives the
    shard counts (`stats.files_val`, `stats.files_train`) and the tokenizer name; its `tokenizers`
    entry gives the tokenizer files (`model_path`, `vocab_path`, `path`, relative to the root).
    All val shards and the first `train_shards` train shards are fetched; files already present and
    intact are kept, so an interrupted download resumes.

    `hub` is the hub endpoint URL (default: $HF_ENDPOINT, else huggingface.co). `fetch`, when given,
    replaces the hub: it maps a repo path such as "datasets/manifest.json" to a local file (tests
    use a local directory with the hub layout).
    """
    root = Path(out_dir).resolve() if out_dir is not None else default_data_dir()
    if train_shards < 0:
        raise DataError(f"train_shards must be >= 0, got {train_shards}")
    dataset_name = f"fineweb10B_{variant}"
    prefix = remote_root.strip("/")

    def remote(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    staging = root / ".hf-download"
    endpoint = hub or os.environ.get("HF_ENDPOINT") or None
    if fetch is None:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:
            raise DataError("huggingface_hub is not installed; `pip install huggingface_hub` to download FineWeb") from exc
        # Read at call time: huggingface_hub reads these variables once, at its import.
        etag_timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        if not offline:
            _probe_hub(repo_id, endpoint or "https://huggingface.co", etag_timeout)

        def fetch(repo_path: str) -> PathLike:  # noqa: F811 - the default implementation
            parent, _, name = repo_path.rpartition("/")
            return hf_hub_download(
                repo_id,
                name,
                subfolder=parent or None,
                repo_type="dataset",
                local_dir=staging,
                endpoint=endpoint,
                etag_timeout=etag_timeout,
            )

    def get(repo_path: str, dest: Path) -> Path:
        _say(progress, f"  fetching {repo_path}")
        try:
            src = Path(fetch(repo_path))
        except DataError:
            raise
        except Exception as exc:
            raise _classify_fetch_error(exc, repo_path, repo_id, endpoint) from exc
        if not src.is_file():
            raise DataError(f"fetching {repo_path} from {repo_id} produced no file (got {src})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
        try:
            if staging in src.resolve().parents:
                os.replace(src, tmp)  # our own staging copy: move, no second copy of a 200 MB shard
            else:
                shutil.copyfile(src, tmp)  # someone else's file (hub cache, a test stand-in): copy
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        return dest

    _say(progress, f"downloading {dataset_name} from {repo_id} into {root}")
    try:
        existing = _read_manifest(root)
    except DataError:
        existing = None  # replaced by the download below
    if existing is not None and existing.get("kind") == DEMO_KIND:
        # The demo uses the same file names; leaving any of them would mix demo shards into FineWeb.
        _say(progress, f"  replacing the demo corpus in {root}")
        for rel in existing.get("files", {}):
            (root / rel).unlink(missing_ok=True)
        (root / MANIFEST_NAME).unlink()

    try:
        manifest_path = get(remote("manifest.json"), root / MANIFEST_NAME)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"{manifest_path}: the downloaded manifest is not valid JSON ({exc})") from exc
        entry = next((d for d in manifest.get("datasets", []) if d.get("name") == dataset_name), None)
        if entry is None:
            names = sorted(str(d.get("name")) for d in manifest.get("datasets", []))
            raise DataError(f"{manifest_path}: no dataset {dataset_name!r} (variant {variant!r}); available: {names}")
        stats = entry.get("stats") or {}
        try:
            n_train, n_val = int(stats["files_train"]), int(stats["files_val"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{manifest_path}: dataset {dataset_name} lacks stats.files_train / stats.files_val") from exc
        if train_shards > n_train:
            raise DataError(f"{dataset_name} has {n_train} train shards on {repo_id}; requested {train_shards}")
        tok_name = entry.get("tokenizer_name")
        tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
        if tok is None:
            raise DataError(f"{manifest_path}: tokenizer {tok_name!r} of dataset {dataset_name} is not listed")
        tok_files = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok.get(k)]
        if not tok_files:
            raise DataError(f"{manifest_path}: tokenizer {tok_name!r} lists no files (model_path/vocab_path/path)")

        # always re-fetched (small): a kept file could be another export's tokenizer of the same name
        local_tok = [get(remote(rel), root / rel) for rel in tok_files]
        data_dir = root / "datasets" / dataset_name
        names = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)] + [
            f"fineweb_train_{i:06d}.bin" for i in range(train_shards)
        ]
        for name in names:
            dest = data_dir / name
            if dest.is_file() and _is_valid_shard(dest):
                continue
            get(remote(f"datasets/{dataset_name}/{name}"), dest)
            if not _is_valid_shard(dest):
                raise DataError(f"{dest}: downloaded shard is malformed (bad header or size); delete it and retry")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    model = next((p for p in local_tok if p.suffix == ".model"), local_tok[0])
    if model.suffix == ".model":
        from pgolf.trainers.bpb import check_tokenizer, load_tokenizer

        check_tokenizer(load_tokenizer(model), model_path=model)
    _say(progress, f"  done: {n_val} val + {train_shards} train shards in {data_dir}")
    return FinewebDownload(
        root=root,
        data_path=data_dir,
        tokenizer_path=model,
        val_files=[data_dir / n for n in names if "_val_" in n],
        train_files=[data_dir / n for n in names if "_train_" in n],
        manifest=manifest,
    )
