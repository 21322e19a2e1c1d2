"""What every config section shares: the error type and the small checks their validate() methods use."""
from __future__ import annotations

import difflib
import math
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and what was expected."""


def is_finite_number(x: Any) -> bool:
    """An int or float (not bool) that is neither NaN nor infinite: the one such test in pgolf."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def closest(name: str, options: Iterable[str]) -> str:
    """'; did you mean X?' for the closest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
