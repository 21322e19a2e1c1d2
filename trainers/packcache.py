"""Disk caches of the packer (PGOLF_CACHE, default ~/.cache/pgolf): packing costs seconds a run, and
every trial of a sweep packs again in its own process.

- minified/: python-minifier output by the sha256 of its input and options.
- shipped/: ship_sources' result by the sha256 of the trainer sources, with the config fields the
  pruner read while deciding branches and their values. The shipped files depend on the config only
  through those reads, so one entry serves every config that agrees on them (e.g. all seeds).

Runs where the package is installed; never shipped itself. Unwritable storage only costs time.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import version


def _root() -> str:
    return os.environ.get("PGOLF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pgolf")


def _put(path: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)  # atomic: parallel trials never read half a file
    except OSError:
        pass


def cached_minify(code: str, options: str, minify) -> str:
    key = hashlib.sha256(f"{version('python-minifier')}\0{options}\0{code}".encode()).hexdigest()
    path = os.path.join(_root(), "minified", key[:2], key + ".py")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        pass
    small = minify(code)
    _put(path, small)
    return small


ABSENT = "<absent>"


def field_value(config: dict, dotted: str) -> str:
    """A config field as the cache compares it: JSON, so True, 1 and 1.0 stay different."""
    section, name = dotted.split(".", 1)
    sec = config.get(section, {})
    return json.dumps(sec[name], sort_keys=True) if isinstance(sec, dict) and name in sec else ABSENT


def sources_key(sources: dict[str, str], options: str) -> str:
    blob = json.dumps([version("python-minifier"), options, sorted(sources.items())])
    return hashlib.sha256(blob.encode()).hexdigest()


def lookup_shipped(key: str, config: dict) -> dict[str, str] | None:
    folder = os.path.join(_root(), "shipped", key)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                entry = json.load(fh)
            if all(field_value(config, k) == v for k, v in entry["reads"].items()):
                return entry["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a damaged entry is a miss
    return None


def store_shipped(key: str, reads: dict[str, str], files: dict[str, str]) -> None:
    text = json.dumps({"reads": reads, "files": files}, sort_keys=True)
    name = hashlib.sha256(json.dumps(reads, sort_keys=True).encode()).hexdigest()[:24]
    _put(os.path.join(_root(), "shipped", key, name + ".json"), text)
