"""The tables as SQLite virtual tables, as osquery's own virtual table module serves them
(osquery/sql/virtual_table.cpp):

* SQLite's constraints become osquery's context (every column listed, op codes, string
  expressions) and the plugin answers it, the code osquery calls over thrift, minus the
  wire: values stay typed. Constraints are never "omitted": SQLite re-checks them, as in
  osquery; TEXT columns get no range constraints (osquery's `sensibleComparison`).
* Values come back as osquery returns them: BIGINT/INTEGER columns as integers when the
  value is one, else as its text.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Sequence

import apsw

from osquery_netutil.host.errors import QueryError
from osquery_netutil.host.functions import value_text
from osquery_netutil.schema import Table
from osquery_netutil.tables.plugins import TableError, TablePlugin

# osquery's constraint ops (osquery/core/tables.h), which are SQLite's.
_OSQUERY_OPS = {
    apsw.SQLITE_INDEX_CONSTRAINT_EQ, apsw.SQLITE_INDEX_CONSTRAINT_GT, apsw.SQLITE_INDEX_CONSTRAINT_LE,
    apsw.SQLITE_INDEX_CONSTRAINT_LT, apsw.SQLITE_INDEX_CONSTRAINT_GE, apsw.SQLITE_INDEX_CONSTRAINT_MATCH,
    apsw.SQLITE_INDEX_CONSTRAINT_LIKE, apsw.SQLITE_INDEX_CONSTRAINT_GLOB, apsw.SQLITE_INDEX_CONSTRAINT_REGEXP,
}
_RANGE_OPS = {
    apsw.SQLITE_INDEX_CONSTRAINT_GT, apsw.SQLITE_INDEX_CONSTRAINT_LE,
    apsw.SQLITE_INDEX_CONSTRAINT_LT, apsw.SQLITE_INDEX_CONSTRAINT_GE,
}


class Module:
    def __init__(self, plugin: TablePlugin) -> None:
        self.plugin = plugin

    def Create(self, connection: apsw.Connection, modulename: str, databasename: str, tablename: str, *args: str):  # noqa: N802 (APSW's names)
        columns = ", ".join(f'"{c.name}" {c.type}' for c in self.plugin.table.columns)
        return f"CREATE TABLE x({columns})", _VirtualTable(self.plugin)

    Connect = Create


class _VirtualTable:
    def __init__(self, plugin: TablePlugin) -> None:
        self.plugin = plugin
        self.table: Table = plugin.table
        self.integer = tuple(c.type in ("BIGINT", "INTEGER") for c in plugin.table.columns)

    def BestIndex(self, constraints: Sequence[tuple[int, int]], orderbys: Sequence[tuple[int, bool]]):  # noqa: N802
        used: list[tuple[int, bool] | None] = []
        pushed: list[tuple[str, int]] = []
        for column, op in constraints:
            usable = 0 <= column < len(self.table.columns) and op in _OSQUERY_OPS
            if usable and self.table.columns[column].type == "TEXT" and op in _RANGE_OPS:
                usable = False
            if usable:
                used.append((len(pushed), False))   # Filter argument position (0-based in APSW), not omitted
                pushed.append((self.table.columns[column].name, op))
            else:
                used.append(None)
        cost = 1_000_000.0 / (1 + 10 * len(pushed))
        return used, 0, json.dumps(pushed), False, cost

    def Open(self) -> "_Cursor":  # noqa: N802
        return _Cursor(self)

    def Disconnect(self) -> None:  # noqa: N802
        pass

    Destroy = Disconnect


class _Cursor:
    """Rows are converted as SQLite steps through them: a stored answer (StoredRows) is
    read one row at a time, never held whole."""

    def __init__(self, vtable: _VirtualTable) -> None:
        self._vtable = vtable
        self._rows: Iterator[tuple[Any, ...]] = iter(())
        self._answer: Any = None
        self._row: tuple[Any, ...] | None = None
        self._index = 0

    def Filter(self, indexnum: int, indexname: str, constraintargs: Sequence[Any]) -> None:  # noqa: N802
        self.Close()
        self._answer = self._generate(indexname, constraintargs)
        self._rows = (self._convert(row) for row in self._answer)
        self._index = -1
        self.Next()

    def _generate(self, indexname: str, constraintargs: Sequence[Any]) -> Iterable[dict[str, Any]]:
        """The plugin's answer to osquery's context JSON for these constraints."""
        table = self._vtable.table
        lists: dict[str, list[dict[str, Any]]] = {c.name: [] for c in table.columns}
        for (name, op), value in zip(json.loads(indexname or "[]"), constraintargs):
            if value is not None:
                lists[name].append({"op": op, "expr": value_text(value)})
        context = {
            "constraints": [{"name": c.name, "list": lists[c.name], "affinity": c.type} for c in table.columns],
            "colsUsed": list(table.names),
            "colsUsedBitset": (1 << len(table.columns)) - 1,
        }
        try:
            return self._vtable.plugin.answer(context)
        except TableError as exc:
            raise QueryError(str(exc)) from None

    def _convert(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """osquery's xColumn for a typed row: what it would give SQLite for the row's text."""
        return tuple(_column(row.get(name, _MISSING), integer)
                     for name, integer in zip(self._vtable.table.names, self._vtable.integer))

    def Eof(self) -> bool:  # noqa: N802
        return self._row is None

    def Rowid(self) -> int:  # noqa: N802
        return self._index

    def Column(self, number: int) -> Any:  # noqa: N802
        assert self._row is not None   # SQLite reads columns only before Eof
        return self._index if number == -1 else self._row[number]

    def Next(self) -> None:  # noqa: N802
        self._row = next(self._rows, None)
        self._index += 1

    def Close(self) -> None:  # noqa: N802
        close = getattr(self._answer, "close", None)   # a generator over a store snapshot
        if close is not None:
            close()
        self._answer, self._rows, self._row = None, iter(()), None


_MISSING = object()   # a column the row does not have: NULL, as osquery gives it


def _column(value: Any, integer: bool) -> Any:
    """osquery sends a row as strings (a None as '', tables.plugins.as_text) and its xColumn
    reads an integer column's text back as an integer when it is one. A store's int or str
    is already what that gives; anything else goes through the same text."""
    if value is _MISSING:
        return None
    if integer:
        if type(value) is int:
            return value
        text = "" if value is None else str(value)
        try:
            return int(text)
        except ValueError:
            return text
    return value if type(value) is str else ("" if value is None else str(value))
