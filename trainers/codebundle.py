"""The counted code: a self-extracting `train_gpt.py` holding the compressed trainer sources and the
resolved config. It runs standalone (`python train_gpt.py` or `torchrun ... train_gpt.py`) from any
folder, and its exact byte size is the `artifact/code_bytes` of the run.

The sources it carries are what packer.py keeps for the run's config (reached code only, minified);
the payload goes through the smallest of lzma / brotli / zlib and is stored as a latin-1 string
triple-quoted literal (every byte but NUL, CR, backslash and some quotes as itself). A run of the
packed script copies itself into its run dir: the counted file is the file that ran (the config it
ran with, --set / SEED overrides included, heads the run's train.log)."""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import sys
import zlib
from dataclasses import dataclass

from .config._base import ConfigError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PACKED: dict | None = None  # set by the wrapper: {"files", "config", "code_version"} of the running script

# Wrapper: line 1 declares latin-1 so the literal can hold raw bytes; %s = import, %s = decompress call.
# It only decompresses: the bootstrap that unpacks the sources travels compressed, as the payload's first part.
_HEAD = "#coding:latin-1\n"  # the shortest PEP 263 declaration
_BODY = '''# pgolf: [torchrun --nproc_per_node=8] train_gpt.py [--set s.k=v]; env DATA_PATH TOKENIZER_PATH RUN_DIR SEED
import %s
p=%s.decode().split("\\0");exec(p[0])
'''
_BOOT = '''import atexit,json,os,shutil,sys,tempfile
d=json.loads(p[1]);d["files"]=dict(zip(d["files"],p[2:]))
r=tempfile.mkdtemp(prefix="pgolf");atexit.register(shutil.rmtree,r,True)
for n,s in d["files"].items():
 f=os.path.join(r,"pgolf","trainers",n);os.makedirs(os.path.dirname(f),exist_ok=True);open(f,"w",encoding="utf-8").write(s)
open(os.path.join(r,"pgolf","__init__.py"),"w").close();sys.path.insert(0,r)
for m in [k for k in sys.modules if k=="pgolf" or k.startswith("pgolf.")]:del sys.modules[m]
from pgolf.trainers.codebundle import run_packed
sys.exit(run_packed(d,sys.argv[1:]))
'''


def _brotli(b: bytes) -> bytes:
    import brotli  # optional where the script runs: ImportError skips the codec
    return brotli.compress(b, quality=11, lgwin=24)


_CODECS = {  # name -> (module to import, decompress expression around X, compress)
    "lzma": ("lzma", "lzma.decompress(X,lzma.FORMAT_ALONE)",
             lambda b: lzma.compress(b, lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1,
                                                                      "preset": 9 | lzma.PRESET_EXTREME}])),
    "brotli": ("brotli", "brotli.decompress(X)", _brotli),
    "zlib": ("zlib", "zlib.decompress(X)", lambda b: zlib.compress(b, 9)),
}
_LATIN1 = '""".encode("latin-1")'
# In a triple-quoted literal only NUL (not allowed in source), CR (read as a newline) and backslash need
# escapes, and a quote that would close the literal: two fewer escaped bytes in 256 than "...".
_ESC = {0: "\\0", 13: "\\r", 92: "\\\\"}


class PackedPathError(ConfigError):
    """A config that differs from the packed one in a field a packer decision read: the shipped file
    holds only the code the packed value reaches."""


_DECIDED = 0  # the packer writes here which fields its decisions read: bit i = config_fields()[i]


def config_fields() -> list[str]:
    """Every config field as "section.key", sorted by section, then key."""
    from .config import TrainConfig
    d = TrainConfig().to_dict()
    return [f"{s}.{k}" for s in sorted(d) for k in sorted(d[s])]


def check_packed(cfg) -> None:
    """Stop a shipped script, before any work, when its config (after --set and env overrides) would
    reach code the packer left out."""
    from .config import TrainConfig
    packed, now = TrainConfig.from_dict(PACKED["config"], source="packed config").to_dict(), cfg.to_dict()
    for i, key in enumerate(config_fields()):
        s, k = key.split(".")
        if _DECIDED >> i & 1 and now[s][k] != packed[s][k]:
            raise PackedPathError(f"{key} = {now[s][k]!r}, but this train_gpt.py was packed for {packed[s][k]!r} "
                                  f"and holds only the code that value reaches; re-pack: pgolf train <stack.toml> "
                                  f"--set {key}={json.dumps(now[s][k])}")


def decided_fields(d: dict) -> list[str] | None:
    """The fields a counted file's packer decisions read (its `_DECIDED`), from its payload `d`; None
    when the file was packed by other trainer code (its field list may differ from this one's)."""
    import re
    if d["code_version"] != code_version():
        return None
    found = [m for t in d["files"].values() for m in re.findall(r"\b_DECIDED=(0x[0-9a-f]+|\d+)", t)]
    if len(found) != 1:
        return None
    mask = int(found[0], 0)
    return [key for i, key in enumerate(config_fields()) if mask >> i & 1]


_SOURCES: dict[str, str] | None = None


def trainer_sources() -> dict[str, str]:
    """Every .py file of the trainer package, keyed by path relative to it (sorted, stable).

    Read once per process: the code that is hashed into config_hash at start-up must be the code that
    is packed into train_gpt.py at the end, even if someone edits the checkout in between."""
    global _SOURCES
    if PACKED is not None:
        return dict(PACKED["files"])
    if _SOURCES is None:
        _SOURCES = _read_sources()
    return dict(_SOURCES)


def _read_sources() -> dict[str, str]:
    files = {}
    for root, dirs, names in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, PACKAGE_DIR).replace(os.sep, "/")
                with open(path, encoding="utf-8") as fh:
                    files[rel] = fh.read()
    return dict(sorted(files.items()))


def code_version() -> str:
    """Hash of the trainer sources: part of the config hash, so changed code is a new variant. A packed
    script reports the version of the package that packed it."""
    if PACKED is not None:
        return PACKED["code_version"]
    h = hashlib.sha256()
    for rel, text in trainer_sources().items():
        h.update(rel.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:12]


@dataclass
class CodeArtifact:
    path: str
    packed_bytes: int  # size of the self-extracting train_gpt.py: what the cap counts
    raw_source_bytes: int  # size of the readable sources, reported for comparison
    shipped_source_bytes: int = 0  # the minified sources the file carries
    codec: str = ""


def _literal(data: bytes) -> str:
    out = []
    for i, b in enumerate(data):
        nxt = data[i + 1] if i + 1 < len(data) else 34  # the closing quotes follow the last byte
        if b == 0 and 48 <= nxt <= 55:
            out.append("\\x00")  # "\0" before an octal digit would read as a longer octal escape
        elif b == 34 and nxt == 34:
            out.append('\\"')  # no two quotes in a row: the literal cannot close early
        else:
            out.append(_ESC.get(b) or chr(b))
    return '"""' + "".join(out) + _LATIN1


_SHIPPED: dict[str, dict[str, str]] = {}


def _shipped(config: dict) -> tuple[dict[str, str], str]:
    if PACKED is not None:
        return PACKED["files"], PACKED["code_version"]
    key = json.dumps(config, sort_keys=True)
    if key not in _SHIPPED:
        from .packer import ship_sources  # packing needs python-minifier: only where the package is installed
        _SHIPPED[key] = ship_sources(trainer_sources(), config)
    return dict(_SHIPPED[key]), code_version()


def _non_default(config: dict) -> dict:
    """Only the values that differ from the trainer's defaults: the shipped trainer fills in the rest."""
    from .config import TrainConfig
    base = json.loads(json.dumps(TrainConfig().to_dict()))
    config = json.loads(json.dumps(config))
    return {s: d for s, d in ((s, {k: v for k, v in vals.items() if base.get(s, {}).get(k, base) != v})
                              for s, vals in config.items()) if d}


def full_config(config: dict) -> dict:
    """A payload's config with the defaults filled in (read where the package is installed)."""
    from .config import TrainConfig
    return json.loads(json.dumps(TrainConfig.from_dict(config, source="packed config").to_dict()))


def _payload(files: dict[str, str], config: dict, version: str) -> bytes:
    """The bootstrap, a JSON header (config, version, file names), then each source as it is,
    NUL-separated (no Python source holds a NUL): JSON-escaping the sources would cost ~7% of the
    compressed size."""
    head = json.dumps({"files": list(files), "config": _non_default(config), "code_version": version},
                      sort_keys=True, separators=(",", ":"))
    return "\0".join([_BOOT, head, *files.values()]).encode()


def _unpayload(raw: bytes) -> dict:
    p = raw.decode().split("\0")
    d = json.loads(p[1])
    d["files"] = dict(zip(d["files"], p[2:]))
    return d


def build_wrapper(config: dict) -> tuple[bytes, str]:
    """The counted file's bytes and the codec that made them smallest."""
    files, version = _shipped(config)
    payload, template = _payload(files, config, version), _HEAD + _BODY
    best = None
    for name, (imp, expr, comp) in _CODECS.items():
        try:
            packed = comp(payload)
        except ImportError:
            continue
        text = (template % (imp, expr.replace("X", _literal(packed)))).encode("latin-1")
        if best is None or len(text) < len(best[0]):
            best = (text, name)
    return best


def payload_of(text: bytes) -> dict:
    """The payload of a counted file, read without running it."""
    import ast
    tree = ast.parse(text)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == "decompress")
    codec = call.func.value.id
    raw = ast.literal_eval(call.args[0].func.value).encode("latin-1")
    if codec == "lzma":
        d = _unpayload(lzma.decompress(raw, lzma.FORMAT_ALONE))
    elif codec == "brotli":
        import brotli
        d = _unpayload(brotli.decompress(raw))
    else:
        d = _unpayload(zlib.decompress(raw))
    d["config"] = full_config(d["config"])
    return d


def verify_wrapper(path: str) -> dict:
    """Raise ValueError unless the file is exactly the canonical wrapper of its own payload (nothing
    added outside it); returns the payload."""
    with open(path, "rb") as fh:
        text = fh.read()
    try:
        d = payload_of(text)
        global PACKED
        saved, PACKED = PACKED, d
        try:
            canon, _ = build_wrapper(d["config"])
        finally:
            PACKED = saved
    except Exception as exc:  # noqa: BLE001 - any failure to read it back means it is not our file
        raise ValueError(f"{path}: not a pgolf train_gpt.py ({type(exc).__name__}: {exc})") from None
    if canon != text:
        raise ValueError(f"{path}: differs from the canonical wrapper of its own payload ({len(text)} vs "
                         f"{len(canon)} bytes): something was added or changed outside the packed code")
    return d


def write_code_artifact(out_dir: str, config: dict) -> CodeArtifact:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "train_gpt.py")
    if PACKED is not None:  # a packed run counts the file that ran: it copies itself, byte for byte
        with open(path, "wb") as fh:
            fh.write(PACKED["text"])
        n = sum(len(t.encode()) for t in PACKED["files"].values())
        return CodeArtifact(path, len(PACKED["text"]), n, n)
    text, codec = build_wrapper(config)
    with open(path, "wb") as fh:
        fh.write(text)
    files, _ = _shipped(config)
    raw = sum(len(t.encode()) for t in trainer_sources().values())
    return CodeArtifact(path=path, packed_bytes=os.path.getsize(path), raw_source_bytes=raw,
                        shipped_source_bytes=sum(len(t.encode()) for t in files.values()), codec=codec)


def _fresh_run_dir(script_dir: str) -> str:
    """Where a packed run without RUN_DIR writes: a new folder beside the script, the same on every
    rank (torchrun gives all ranks one run id), never the script's own folder."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rid:
        return os.path.join(script_dir, f"run_{rid[:12]}")
    n = 1
    while os.path.exists(os.path.join(script_dir, f"run{n}")):
        n += 1
    return os.path.join(script_dir, f"run{n}")


def run_packed(d: dict, argv: list[str]) -> int:
    """Entry point of the wrapper: run the packed trainer with the embedded config."""
    global PACKED
    PACKED = d
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else os.path.abspath("train_gpt.py")
    with open(script, "rb") as fh:  # copied into the run dir at the end (write_code_artifact)
        d["text"] = fh.read()
    here = os.path.dirname(script)
    chosen = os.environ.get("RUN_DIR") or next((a.split("=", 1)[1] for a in argv if a.startswith("run.run_dir=")), None)
    if chosen is None:
        chosen = _fresh_run_dir(here)
        print(f"pgolf: outputs go to {chosen} (set RUN_DIR to choose)", file=sys.stderr)
        argv = argv + ["--set", f"run.run_dir={chosen}"]
    if os.path.realpath(os.path.abspath(chosen)) == os.path.realpath(here):
        print(f"pgolf trainer: RUN_DIR {chosen} is this script's folder: the run would replace {script}. "
              "Pick another folder (or unset RUN_DIR for a fresh one).", file=sys.stderr)
        return 2
    from .gpt import main
    return main(["--config-json", json.dumps(d["config"])] + argv)
