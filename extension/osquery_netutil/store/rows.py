"""Stored rows as queries see them: the conditions osquery's constraints become, the SQL
that selects them, and StoredRows, an answer counted first and then read row by row from
one read snapshot, so that 100,000 rows never sit in memory whole."""

from __future__ import annotations

import operator
import sqlite3
from typing import Any, Iterator, Sequence

from osquery_netutil.schema import EXECS, SOCKETS, Table

OPS = ("=", "<", "<=", ">", ">=")
PY_OPS = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

Row = dict[str, Any]
Condition = tuple[str, str, Any]   # (column, one of OPS, value)

# The store's SQLite table of each schema table.
SQL_NAMES = {EXECS.name: "events", SOCKETS.name: "sockets"}


def data_columns(table: Table) -> tuple[str, ...]:
    """The columns a row brings (eid is the store's)."""
    return tuple(c for c in table.names if c != "eid")


def _as_text(table: Table, name: str) -> str:
    column = table.column(name)
    return name if column.type == "TEXT" else f"CAST({name} AS TEXT) AS {name}"


def dicts(cursor: sqlite3.Cursor) -> Iterator[Row]:
    """A cursor's rows as dicts keyed by column name."""
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, values)) for values in cursor)


def where_sql(table: Table, conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    """The WHERE clause ('' for none) of the table's rows matching all conditions, and its parameters."""
    where, params = [], []
    for column, op, value in conditions:
        if column not in table.names or op not in OPS:
            raise ValueError(f"cannot filter on {column!r} {op!r}: columns are {', '.join(table.names)}; ops {OPS}")
        where.append(f"{column} {op} ?")
        params.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def select_sql(table: Table, where: str, text: bool, columns: Sequence[str] | None = None) -> str:
    """SELECT of the table's rows a where_sql clause matches, in eid order: of the given
    columns (all by default), with text=True each as text."""
    named = list(columns) if columns is not None else list(table.names)
    unknown = [c for c in named if c not in table.names]
    if unknown:
        raise ValueError(f"no column {unknown[0]!r}: columns are {', '.join(table.names)}")
    selected = ", ".join(_as_text(table, c) if text else c for c in named) if columns is not None or text else "*"
    # "+eid": order the matches, but let SQLite pick the index for the WHERE clause
    # (a plain ORDER BY eid makes it scan the whole table in eid order instead).
    return f"SELECT {selected} FROM {SQL_NAMES[table.name]}{where} ORDER BY {'+eid' if where else 'eid'}"


class StoredRows:
    """The answer of Store.stream(): len() before the first row is read, then the rows
    one by one from an open read snapshot, which is released when they are all read,
    on close(), or when the object is dropped."""

    def __init__(self, conn: sqlite3.Connection, sql: str, params: list[Any], count: int, held: list[Row],
                 where: str = "", table: Table = EXECS) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._sql, self._params, self._where = sql, params, where
        self.table = table
        self._count = count
        self.held = held   # rows not yet written to the file (they follow the stored ones)

    def __len__(self) -> int:
        return self._count + len(self.held)

    def measure(self, expression: str) -> int:
        """The sum of an SQL expression over the stored rows of the answer, in its snapshot
        (before they are read)."""
        if self._conn is None:
            raise RuntimeError("these stored rows were read already")
        return self._conn.execute(f"SELECT coalesce(sum({expression}), 0) FROM {SQL_NAMES[self.table.name]}{self._where}",
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
