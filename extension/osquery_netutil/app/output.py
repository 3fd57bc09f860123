"""Query results printed the way osqueryi prints them: pretty (boxed table, the default),
json (a list of objects whose values are strings), csv and line modes. osqueryi prints
SQLite's own text of each value (sqlite3_column_text, osquery/devtools/shell.cpp), so a
REAL is converted by SQLite itself (1.0e+20, not Python's 1e+20)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from typing import Any, Sequence

MODES = ("pretty", "json", "csv", "line")


_SQLITE = sqlite3.connect(":memory:", check_same_thread=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return _SQLITE.execute("SELECT CAST(? AS TEXT)", (value,)).fetchone()[0]
    return str(value)


def render(mode: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The text for rows in one of MODES (no trailing newline for pretty/line when empty)."""
    cells = [[_cell(v) for v in row] for row in rows]
    if mode == "json":
        return json.dumps([dict(zip(columns, row)) for row in cells], indent=2, ensure_ascii=False)
    if mode == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return out.getvalue().rstrip("\n")
    if mode == "line":
        width = max((len(c) for c in columns), default=0)
        return "\n\n".join("\n".join(f"{c:>{width}} = {v}" for c, v in zip(columns, row)) for row in cells)
    if mode != "pretty":
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if not columns:
        return ""
    cells = [[v.replace("\n", "\\n") for v in row] for row in cells]   # keep the box intact
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([rule, line(columns), rule, *(line(row) for row in cells), rule])
