"""What every config section shares: the error type and the small checks their validate() methods use."""
from __future__ import annotations

import difflib
import math
import typing
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and what was expected."""


def finite(x: Any) -> float | None:
    """x as a float when it is a real number (not bool, numpy scalars included) and neither NaN nor
    infinite, else None: the one such test in pgolf (configs, results, tables, statistics)."""
    if isinstance(x, bool) or not hasattr(x, "__float__") or isinstance(x, str):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def closest(name: str, options: Iterable[str]) -> str:
    """'; did you mean X?' for the closest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def choices(sec: Any, section: str) -> None:
    """Literal fields (and lists of them) hold one of their choices, also when set in code, which
    the coercer never sees."""
    for key, tp in typing.get_type_hints(type(sec)).items():
        vals = getattr(sec, key)
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        else:
            vals = [vals]
        if typing.get_origin(tp) is typing.Literal:
            ok = typing.get_args(tp)
            for v in vals:
                need(v in ok, f"{section}.{key} = {v!r} must be one of {', '.join(map(str, ok))}"
                     f"{closest(str(v), map(str, ok))}")
