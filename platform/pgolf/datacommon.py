"""What the demo corpus and the FineWeb download share: the error type, the data root, the manifest
file and its reader, file digests."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[str], Any]]

MANIFEST_NAME = "manifest.json"
DEMO_KIND = "demo"


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
