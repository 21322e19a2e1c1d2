"""The counted code: a self-extracting `train_gpt.py` holding the compressed trainer sources and the
resolved config. It runs standalone (`python train_gpt.py` or `torchrun ... train_gpt.py`) from any
folder, and its exact byte size is the `artifact/code_bytes` of the run."""
from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
from dataclasses import dataclass

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_WRAPPER = '''"""pgolf self-extracting trainer. Runs the packed pgolf.trainers with the embedded config.
Usage: torchrun --standalone --nproc_per_node=8 train_gpt.py [--set section.key=value ...]
Env overrides: DATA_PATH, TOKENIZER_PATH, RUN_DIR, SEED."""
import atexit,base64,json,lzma,os,shutil,sys,tempfile
B=%r
d=json.loads(lzma.decompress(base64.b85decode(B)))
r=tempfile.mkdtemp(prefix="pgolf_code_");atexit.register(shutil.rmtree,r,True)
for n,s in d["files"].items():
    f=os.path.join(r,"pgolf","trainers",n);os.makedirs(os.path.dirname(f),exist_ok=True)
    open(f,"w",encoding="utf-8").write(s)
open(os.path.join(r,"pgolf","__init__.py"),"w").close()
sys.path.insert(0,r)
for m in [k for k in sys.modules if k=="pgolf" or k.startswith("pgolf.")]:del sys.modules[m]
from pgolf.trainers.gpt import main
sys.exit(main(["--config-json",json.dumps(d["config"])]+sys.argv[1:]))
'''


_SOURCES: dict[str, str] | None = None


def trainer_sources() -> dict[str, str]:
    """Every .py file of the trainer package, keyed by path relative to it (sorted, stable).

    Read once per process: the code that is hashed into config_hash at start-up must be the code that
    is packed into train_gpt.py at the end, even if someone edits the checkout in between."""
    global _SOURCES
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
    """Hash of the trainer sources: part of the config hash, so changed code is a new variant."""
    h = hashlib.sha256()
    for rel, text in trainer_sources().items():
        h.update(rel.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:12]


@dataclass
class CodeArtifact:
    path: str
    packed_bytes: int  # size of the self-extracting train_gpt.py: what the cap counts
    raw_source_bytes: int  # size of the readable sources, reported for comparison


def build_wrapper(config: dict) -> str:
    payload = json.dumps({"files": trainer_sources(), "config": config}, sort_keys=True, separators=(",", ":"))
    packed = base64.b85encode(lzma.compress(payload.encode(), preset=9 | lzma.PRESET_EXTREME)).decode("ascii")
    return _WRAPPER % packed


def write_code_artifact(out_dir: str, config: dict) -> CodeArtifact:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "train_gpt.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(build_wrapper(config))
    raw = sum(len(t.encode()) for t in trainer_sources().values())
    return CodeArtifact(path=path, packed_bytes=os.path.getsize(path), raw_source_bytes=raw)
