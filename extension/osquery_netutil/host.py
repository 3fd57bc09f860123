"""The embedded host: osquery's SQL without osquery.

SQLite (through APSW) with the same TablePlugins as virtual tables, so `watch`, `query`
and the pack tests run the packs' SQL exactly as osqueryd would:

* SQLite's constraints become osquery's context JSON (every column listed, op codes,
  string expressions) and the plugin's generate() answers, the same code osquery calls
  over thrift; constraints are never "omitted", SQLite re-checks them, as in osquery;
  TEXT columns get no range constraints (osquery's `sensibleComparison`).
* Values come back as osquery returns them: BIGINT/INTEGER columns as integers when the
  text is one, else as text.
* osquery's extra SQL functions (osquery/sql/sqlite_string.cpp, sqlite_network.cpp) are
  provided with osquery's semantics: regex_match, regex_split, split, concat, concat_ws,
  inet_aton, in_cidr_block. Regular expressions are std::regex's (stdregex.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import apsw

from .schema import Table
from .stdregex import MAX_SIZE as REGEX_MAX_SIZE, RegexError, compile_ecmascript
from .tables import TablePlugin

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


class QueryError(Exception):
    """SQL the host cannot run; the message is SQLite's (or the function's)."""


# -- virtual tables ------------------------------------------------------------------
class _Module:
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

    def _generate(self, indexname: str, constraintargs: Sequence[Any]) -> Iterable[dict[str, str]]:
        """The plugin's answer to osquery's context JSON for these constraints."""
        table = self._vtable.table
        lists: dict[str, list[dict[str, Any]]] = {c.name: [] for c in table.columns}
        for (name, op), value in zip(json.loads(indexname or "[]"), constraintargs):
            if value is not None:
                lists[name].append({"op": op, "expr": _as_text(value)})
        context = {
            "constraints": [{"name": c.name, "list": lists[c.name], "affinity": c.type} for c in table.columns],
            "colsUsed": list(table.names),
            "colsUsedBitset": (1 << len(table.columns)) - 1,
        }
        response = self._vtable.plugin.call({"action": "generate", "context": json.dumps(context)})
        if response.status.code != 0:
            raise QueryError(response.status.message)
        return response.response

    def _convert(self, row: dict[str, str]) -> tuple[Any, ...]:
        """osquery's xColumn: integers for integer columns when the text is one, else text."""
        return tuple(_integer(row.get(name)) if integer else row.get(name)
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


def _as_text(value: Any) -> str:
    """What sqlite3_value_text gives osquery for a value (constraints, function arguments)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def _integer(value: str | None) -> Any:
    """An integer column's value: the integer when the text is one, else the text."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


# -- osquery's SQL functions -----------------------------------------------------------

def _regex(pattern: str, function: str) -> re.Pattern[str]:
    """The pattern as std::regex (ECMAScript) reads it, or osquery's own error text."""
    try:
        return compile_ecmascript(pattern)
    except RegexError:
        if function == "regex_match" and len(pattern.encode()) > REGEX_MAX_SIZE:
            raise ValueError(f"Invalid regex: too big, max size is {REGEX_MAX_SIZE} bytes") from None
        raise ValueError("Invalid regex") from None


def _index(value: Any) -> int | None:
    """sqlite3_value_int cast to size_t: negative indexes select nothing."""
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = 0
    return index if index >= 0 else None


def regex_match(value: Any, pattern: Any, index: Any) -> str | None:
    """Group `index` (0: the whole match) of the first match of pattern in value, or NULL."""
    if value is None or pattern is None or index is None:
        return None
    match = _regex(_as_text(pattern), "regex_match").search(_as_text(value))
    i = _index(index)
    if match is None or i is None or i > (match.re.groups):
        return None
    group = match.group(i)
    return "" if group is None else group


def regex_split(value: Any, pattern: Any, index: Any) -> str | None:
    """Token `index` of value split by the regex (std::sregex_token_iterator, -1, as
    libc++ has it): with no match at all the whole value is the one token, even when it
    is empty (regex_split('', ',', 0) is ''); after the last match, a trailing empty
    token is not produced."""
    if value is None or pattern is None or index is None:
        return None
    if _as_text(pattern) == "":
        raise ValueError("Invalid input to split function")
    text, tokens, last = _as_text(value), [], 0
    matched = False
    for match in _regex(_as_text(pattern), "regex_split").finditer(text):
        matched = True
        tokens.append(text[last:match.start()])
        last = match.end()
    if not matched or last < len(text):
        tokens.append(text[last:])
    i = _index(index)
    return tokens[i] if i is not None and i < len(tokens) else None


def split(value: Any, tokens: Any, index: Any) -> str | None:
    """Token `index` of value split on any of the characters in tokens; empty pieces
    dropped, then each trimmed (osquery::split)."""
    if value is None or tokens is None or index is None:
        return None
    delimiters = _as_text(tokens)
    if delimiters == "":
        raise ValueError("Invalid input to split function")
    pieces = re.split("[" + re.escape(delimiters) + "]", _as_text(value))
    pieces = [p.strip(" \t\n\v\f\r") for p in pieces if p != ""]
    i = _index(index)
    return pieces[i] if i is not None and i < len(pieces) else None


def _concat(separator: str, values: Sequence[Any]) -> str | None:
    if not values:
        return None
    out = []
    for i, value in enumerate(values):
        if value is None:
            continue
        out.append(_as_text(value))
        if separator and i + 1 < len(values):
            out.append(separator)
    return "".join(out)


def concat(*values: Any) -> str | None:
    """Arguments joined, NULLs skipped."""
    return _concat("", values)


def concat_ws(*values: Any) -> str | None:
    """Arguments after the first joined by it, NULLs skipped (a separator still follows
    each non-NULL value that is not the last argument, as in osquery)."""
    if not values:
        raise ValueError("Missing separator to concat_ws")
    separator = "" if values[0] is None else _as_text(values[0])
    return _concat(separator, values[1:])


def inet_aton(value: Any) -> int | None:
    """A dotted-quad IPv4 address as an integer; NULL for IPv6 or anything else."""
    if value is None:
        return None
    text = _as_text(value)
    if ":" in text:
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        return None


def in_cidr_block(cidr: Any, address: Any) -> int:
    """1 if address is one of the hosts of the CIDR block (boost's network::hosts(): for
    IPv4 below /32 the network and broadcast addresses are not hosts), else 0."""
    if not isinstance(cidr, str):
        raise ValueError("CIDR must be a string")
    if not isinstance(address, str):
        raise ValueError("IP address must be a string")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError("IP address cannot be parsed") from None
    family = "v4" if ip.version == 4 else "v6"
    try:
        prefix = cidr.partition("/")[2]
        if not (prefix.isascii() and prefix.isdigit()):   # boost's make_network_v4/v6: a prefix length, not a netmask
            raise ValueError
        network = ipaddress.ip_network(cidr, strict=False)
        if network.version != ip.version:
            raise ValueError
    except ValueError:
        raise ValueError(f"CIDR for IP address {family} cannot be parsed") from None
    if ip.version == 6:
        return int(ip in network)
    if network.prefixlen == 32:
        return int(ip == network.network_address)
    return int(int(network.network_address) < int(ip) < int(network.broadcast_address))


FUNCTIONS: dict[str, tuple[Any, int]] = {
    "regex_match": (regex_match, 3),
    "regex_split": (regex_split, 3),
    "split": (split, 3),
    "concat": (concat, -1),
    "concat_ws": (concat_ws, -1),
    "inet_aton": (inet_aton, 1),
    "in_cidr_block": (in_cidr_block, 2),
}


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
            self.db.createmodule(name, _Module(plugin))  # type: ignore[arg-type]
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
