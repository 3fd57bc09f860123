"""Stored rows as queries see them: the conditions osquery's constraints become, the SQL
that selects them, and StoredRows, an answer counted first and then read row by row from
one read snapshot, so that 100,000 rows never sit in memory whole."""

from __future__ import annotations

import operator
import sqlite3
from typing import Any, Iterator, Sequence

from osquery_netutil.schema import EXECS

OPS = ("=", "<", "<=", ">", ">=")
PY_OPS = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

Row = dict[str, Any]
Condition = tuple[str, str, Any]   # (column, one of OPS, value)

COLUMNS = EXECS.names
DATA_COLUMNS = tuple(c for c in COLUMNS if c != "eid")
DATA_SET = frozenset(DATA_COLUMNS)
_AS_TEXT = {c.name: c.name if c.type == "TEXT" else f"CAST({c.name} AS TEXT) AS {c.name}" for c in EXECS.columns}


def dicts(cursor: sqlite3.Cursor) -> Iterator[Row]:
    """A cursor's rows as dicts keyed by column name."""
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, values)) for values in cursor)


def where_sql(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    """The WHERE clause ('' for none) of the rows matching all conditions, and its parameters."""
    where, params = [], []
    for column, op, value in conditions:
        if column not in COLUMNS or op not in OPS:
            raise ValueError(f"cannot filter on {column!r} {op!r}: columns are {', '.join(COLUMNS)}; ops {OPS}")
        where.append(f"{column} {op} ?")
        params.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def select_sql(where: str, text: bool, columns: Sequence[str] | None = None) -> str:
    """SELECT of the rows a where_sql clause matches, in eid order: of the given columns
    (all by default), with text=True each as text."""
    named = list(columns) if columns is not None else list(COLUMNS)
    unknown = [c for c in named if c not in _AS_TEXT]
    if unknown:
        raise ValueError(f"no column {unknown[0]!r}: columns are {', '.join(COLUMNS)}")
    selected = ", ".join(_AS_TEXT[c] if text else c for c in named) if columns is not None or text else "*"
    # "+eid": order the matches, but let SQLite pick the index for the WHERE clause
    # (a plain ORDER BY eid makes it scan the whole table in eid order instead).
    return f"SELECT {selected} FROM events{where} ORDER BY {'+eid' if where else 'eid'}"


class StoredRows:
    """The answer of Store.stream(): len() before the first row is read, then the rows
    one by one from an open read snapshot, which is released when they are all read,
    on close(), or when the object is dropped."""

    def __init__(self, conn: sqlite3.Connection, sql: str, params: list[Any], count: int, held: list[Row],
                 where: str = "") -> None:
        self._conn: sqlite3.Connection | None = conn
        self._sql, self._params, self._where = sql, params, where
        self._count = count
        self.held = held   # rows not yet written to the file (they follow the stored ones)

    def __len__(self) -> int:
        return self._count + len(self.held)

    def measure(self, expression: str) -> int:
        """The sum of an SQL expression over the stored rows of the answer, in its snapshot
        (before they are read)."""
        if self._conn is None:
            raise RuntimeError("these stored rows were read already")
        return self._conn.execute(f"SELECT coalesce(sum({expression}), 0) FROM events{self._where}",
                                  self._params).fetchone()[0]

    def __iter__(self) -> Iterator[Row]:
        conn = self._conn
        if conn is None:
            raise RuntimeError("these stored rows were read already")
        self._conn = None
        try:
            yield from dicts(conn.execute(self._sql, self._params))
        finally:
            conn.close()
        yield from self.held

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    __del__ = close
