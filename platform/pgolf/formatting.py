"""Numbers and tables as pgolf prints them: one set of formatters for the CLI tables, the text and HTML
reports and the submission README. A missing value (None, NaN, infinity, pandas NA) prints as `dash`."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pgolf.trainers.config import finite

__all__ = ["finite", "integer", "json_safe", "markdown_table", "num", "pvalue", "text_table"]


def num(x: Any, spec: str = ".4f", dash: str = "-") -> str:
    v = finite(x)
    return dash if v is None else format(v, spec)


def integer(x: Any, dash: str = "-") -> str:
    v = finite(x)
    return dash if v is None else f"{int(v):,}"


def pvalue(x: Any, dash: str = "-") -> str:
    v = finite(x)
    if v is None:
        return dash
    return f"{v:.2g}" if v >= 1e-4 else f"{v:.1e}"


def text_table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = (),
               rule: bool = False) -> str:
    """A plain-text table (pandas does the layout): columns left-aligned unless listed in `right`,
    an optional dashed rule under the header."""
    import pandas as pd

    if not rows:
        rows = [["" for _ in head]]
    frame = pd.DataFrame([[str(c) for c in r] for r in rows], columns=list(range(len(head))))
    widths = [max(len(str(h)), int(frame[i].str.len().max())) for i, h in enumerate(head)]
    cells = frame.apply(lambda col: col.str.rjust(widths[col.name]) if col.name in right else col.str.ljust(widths[col.name]))
    header = [str(h).rjust(w) if i in right else str(h).ljust(w) for i, (h, w) in enumerate(zip(head, widths))]
    lines = ["  ".join(header).rstrip()]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(r).rstrip() for r in cells.itertuples(index=False)]
    return "\n".join(lines)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; `|` inside a cell is escaped."""
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def json_safe(x: Any) -> Any:
    """A JSON-safe copy: numpy scalars become Python ones, non-finite floats None (json.dumps with
    allow_nan=False and MLflow both refuse them), tuples lists and mapping keys strings."""
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
