"""Rows as JSON Lines: `record` writes them, `replay` loads them into a store.

One JSON object per line, keyed by column name (schema.EXECS). `eid` is not kept: the
store that replays the lines numbers them. So that detection fixtures stay short, a line
may leave columns out: text defaults to '', numbers to 0, `time` to the replay time,
`json_cmdline` to the cmdline split on spaces and `ancestors` to []. A broken line is
skipped and reported with its line number; the rest is loaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO

from .schema import EXECS

Row = dict[str, Any]
_DATA_COLUMNS = tuple(c for c in EXECS.columns if c.name != "eid")
_ERRORS_KEPT = 20


def dumps(row: Row) -> str:
    """One line for a row (eid dropped)."""
    return json.dumps({c.name: row[c.name] for c in _DATA_COLUMNS}, ensure_ascii=False)


def parse_line(line: str, now: int | None = None) -> Row:
    """A complete row from one line. Raises ValueError saying what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object keyed by column name")
    obj.pop("eid", None)
    unknown = sorted(set(obj) - {c.name for c in _DATA_COLUMNS})
    if unknown:
        raise ValueError(f"unknown column {unknown[0]!r}")
    row: Row = {}
    for c in _DATA_COLUMNS:
        value = obj.get(c.name)
        if value is None:
            value = _default(c.name, obj, now)
        elif c.python_type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"column {c.name!r} must be an integer, not {value!r}")
        elif c.python_type is str and not isinstance(value, str):
            raise ValueError(f"column {c.name!r} must be a string, not {value!r}")
        row[c.name] = value
    return row


def _default(name: str, obj: dict[str, Any], now: int | None) -> Any:
    if name == "time":
        return int(time.time()) if now is None else now
    if name == "json_cmdline":
        return json.dumps(str(obj.get("cmdline", "")).split())
    if name == "ancestors":
        return "[]"
    return "" if EXECS.column(name).python_type is str else 0


@dataclass
class ReplayResult:
    rows: list[Row] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)   # the first few, as "line N: why"


def read(lines: Iterable[str], source: str = "<stdin>") -> ReplayResult:
    """Parse lines; blank lines and lines starting with '#' are ignored."""
    result = ReplayResult()
    now = int(time.time())
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            result.rows.append(parse_line(line, now))
        except ValueError as exc:
            result.skipped += 1
            if len(result.errors) < _ERRORS_KEPT:
                result.errors.append(f"{source}:{number}: {exc}")
    return result


def write(rows: Iterable[Row], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(dumps(row) + "\n")
        count += 1
    out.flush()
    return count
