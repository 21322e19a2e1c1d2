"""Two guards at the platform's edges (torch-free, no Ray): names that become folder names, and
secrets that must not travel into Ray's runtime env or the trainer's environment."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from pgolf.trainers.config import ConfigError

# Experiment and variant names become folder names (runs dir, Tune storage, artifact root) and MLflow
# names: a letter or digit first, then letters, digits, `_`, `-`, `.`; no `..`, no `/`, no spaces.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


class UnsafeName(ConfigError):
    """A name that would not stay one folder below its root."""


def check_name(kind: str, name: object, where: str = "") -> str:
    """`name` unchanged when it is a safe folder name; otherwise an error naming the key and the fix."""
    text = name if isinstance(name, str) else repr(name)
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name) and ".." not in name:
        return name
    prefix = f"{where}: " if where else ""
    raise UnsafeName(f"{prefix}{kind} {text!r} is not a safe name: it becomes a folder name, so use 1-100 "
                     "letters, digits, '_', '-' or '.' starting with a letter or digit (no '/', '..' or spaces)")


def slug(text: str) -> str:
    """A generated label (sweep point, axis value) made safe as one path component."""
    out = re.sub(r"[^A-Za-z0-9_.,=+\-]+", "_", text).replace("..", "_").strip("._")
    return out[:120] or "x"


def path_under(root: str, *parts: str) -> str:
    """os.path.join(root, *parts), refusing a result that leaves `root` (after resolving `..`/links)."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, *parts))
    if path != base and not path.startswith(base + os.sep):
        raise UnsafeName(f"path {os.path.join(root, *parts)!r} leaves {root}; names must not contain '/' or '..'")
    return path


# Credentials a trainer never needs. Ray Tune copies AWS_* from the driver's environment into every
# trial actor's runtime env, and Ray writes runtime envs to world-readable logs under /tmp/ray.
_SECRET_NAME = re.compile(
    r"(^AWS_)|(^AZURE_)|(^GOOGLE_APPLICATION_CREDENTIALS$)|(^GCP_)|(TOKEN)|(SECRET)|(PASSWORD)|(PASSWD)"
    r"|(_API_KEY$)|(^API_KEY$)|(_ACCESS_KEY)|(_PRIVATE_KEY)|(CREDENTIAL)|(^DATABRICKS_)", re.IGNORECASE)
# Not credentials despite the pattern (they hold settings, not secrets).
_NOT_SECRET = frozenset({"TOKENIZERS_PARALLELISM", "TOKENIZER_PATH", "RAY_AUTH_MODE"})


def is_secret(name: str) -> bool:
    return name not in _NOT_SECRET and bool(_SECRET_NAME.search(name))


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` without credential-looking variables (what a trainer process gets)."""
    return {k: v for k, v in environ.items() if not is_secret(k)}


@contextmanager
def secrets_hidden(environ: MutableMapping[str, str] | None = None,
                   names: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                                             "AWS_SESSION_TOKEN")) -> Iterator[list[str]]:
    """Take the variables Ray Tune would copy into runtime envs out of `environ` for the block and put
    them back after. Workers of a cluster this process started inherited them already (without a log);
    on a remote cluster, credentials reach trials through the nodes' own environment (see cluster/README)."""
    env = os.environ if environ is None else environ
    saved = {k: env.pop(k) for k in names if k in env}
    try:
        yield sorted(saved)
    finally:
        env.update(saved)
