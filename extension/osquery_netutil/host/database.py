"""The embedded host: osquery's SQL without osquery.

SQLite (through APSW) with the same TablePlugins as virtual tables, so `watch`, `query`
and the pack tests run the packs' SQL exactly as osqueryd would:

* the tables are virtual tables answered by their plugins (vtables.py), with osquery's
  constraints and value conversions, their values typed all the way;
* osquery's extra SQL functions are there, with osquery's semantics (functions.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import apsw

from osquery_netutil.host.errors import QueryError
from osquery_netutil.host.functions import FUNCTIONS
from osquery_netutil.host.vtables import Module
from osquery_netutil.schema import Table
from osquery_netutil.tables.plugins import TablePlugin


class Host:
    """An in-memory SQLite with the given tables and osquery's functions."""

    def __init__(self, plugins: Iterable[TablePlugin]) -> None:
        # APSW's original method names: Debian bookworm's python3-apsw (3.40, what the
        # package runs on) has only those; later APSW keeps them beside the new ones.
        self.db = apsw.Connection(":memory:")
        for name, (function, nargs) in FUNCTIONS.items():
            self.db.createscalarfunction(name, function, nargs, deterministic=True)
        self.tables: dict[str, Table] = {}
        for plugin in plugins:
            name = plugin.table.name
            # PyPI's newer apsw types a module with ShadowName; Debian's 3.40 (the package's) has none.
            self.db.createmodule(name, Module(plugin))  # type: ignore[arg-type]
            self.db.execute(f'CREATE VIRTUAL TABLE main."{name}" USING "{name}"')
            self.tables[name] = plugin.table

    def query(self, sql: str, bindings: Sequence[Any] | dict[str, Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, rows) of sql (one statement, as in osquery; ? or :name bound to bindings).
        Raises QueryError."""
        try:
            cursor = self.db.cursor().execute(sql, bindings)
            try:
                columns = [d[0] for d in cursor.getdescription()]
            except apsw.ExecutionCompleteError:   # a statement that returns nothing
                columns = []
            rows = list(cursor)
        except (apsw.Error, ValueError, QueryError) as exc:
            raise QueryError(str(exc).removeprefix("SQLError: ")) from None
        return columns, rows

    @contextmanager
    def snapshot(self, table: str, where: str, bindings: dict[str, Any]) -> Iterator[None]:
        """Queries run in this block read the table's rows matching `where` from a copy in
        SQLite, made once through the plugin, as if the table held only those rows.
        For rows that cannot change meanwhile (the eids of one batch of `watch`, which
        every detection reads): the plugin generates them and SQLite reads them from
        Python once, not once per query. The copy has the table's columns and types, and
        shadows the table by name (SQLite looks in temp before main); it is dropped when
        the block ends."""
        columns = ", ".join(f'"{c.name}" {c.type}' for c in self.tables[table].columns)
        try:
            self.db.execute(f'CREATE TEMP TABLE "{table}" ({columns})')
            self.db.execute(f'INSERT INTO temp."{table}" SELECT * FROM main."{table}" WHERE {where}', bindings)
        except (apsw.Error, ValueError, QueryError) as exc:
            self.db.execute(f'DROP TABLE IF EXISTS temp."{table}"')
            raise QueryError(str(exc).removeprefix("SQLError: ")) from None
        try:
            yield
        finally:
            self.db.execute(f'DROP TABLE temp."{table}"')

    def close(self) -> None:
        self.db.close()
