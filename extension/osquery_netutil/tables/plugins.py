"""The tables as osquery table plugins, served to osquery over thrift and to the
embedded host alike.

osquery-python's TablePlugin is not used: it is a process-wide singleton (one instance
per class, no constructor arguments), turns None into "None" and raises on an unknown
action. TablePlugin below speaks the same protocol (osquery's `call` with action
`columns` or `generate`, and the column routes) without those traps.

`generate(context)` receives osquery's context (a dict: every column with its list of
{op, expr} constraints) and turns the usable ones into indexed store queries: ranges and
equality on the BIGINT columns that have an index, equality on the indexed TEXT ones.
Everything else is left to SQLite, which re-checks the whole WHERE clause anyway, so
pushing a constraint down only ever saves work, it never changes an answer. Only the
columns the query uses (osquery's `colsUsed`) are sent: osqueryd reads an absent column
as '' or NULL (DynamicTableRow::get_column), and never reads the ones a query does not use.

osqueryd holds an extension's whole answer in memory, twice at its peak: the thrift reply
decoded into std::map<string, string> rows, then copied into the PluginResponse
(osquery/extensions/impl_thrift.cpp, ExtensionClient::call), in the worker its watchdog
stops at 200 MB of growth (then the query is denylisted for a day). So the osquery
extension refuses an answer whose peak there would pass --max-answer-mb, with an error
that says how to constrain the query: osqueryi prints it, a scheduled query logs it, and
the worker lives (bench/answer_size.py gives the figures).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import json

from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus

from osquery_netutil.schema import EXECS, SOCKETS, STATUS, Table
from osquery_netutil.store.rows import Condition, StoredRows
from osquery_netutil.store.store import Store

# osquery's constraint operators (osquery/core/tables.h; SQLite's own values).
OP_EQUALS, OP_GT, OP_LE, OP_LT, OP_GE = 2, 4, 8, 16, 32
_SQL_OPS = {OP_EQUALS: "=", OP_GT: ">", OP_LE: "<=", OP_LT: "<", OP_GE: ">="}
_RANGE_OPS = set(_SQL_OPS)
# A table's answer: a list, or stored rows read while they are sent (len() known first).
Rows = list[dict[str, Any]] | StoredRows

# The bytes osqueryd's worker holds for one answer row, in libc++'s std::map<string,
# string> in a std::vector (osquery's QueryData) with glibc's malloc: the map object, a
# tree node per column (three pointers and a colour, then two 24-byte strings: 80, a
# 96-byte chunk), and for a string longer than libc++'s 22 inline characters, its heap
# copy (its size rounded up, plus the chunk's header: length + 32). Twice that at the
# peak (decoded reply and PluginResponse).
ROW_BYTES, ENTRY_BYTES, INLINE_CHARS, HEAP_BYTES, COPIES = 24, 96, 22, 32, 2
DEFAULT_MAX_ANSWER_MB = 64


def osqueryd_bytes(rows: Iterable[dict[str, Any]]) -> int:
    """osqueryd's peak for these rows, as osquery's text rows (as_text), by the model above."""
    return COPIES * sum(ROW_BYTES + sum(ENTRY_BYTES + _heap(len(k.encode())) + _heap(len(v.encode()))
                                        for k, v in as_text(row).items()) for row in rows)


def _heap(length: int) -> int:
    return length + HEAP_BYTES if length > INLINE_CHARS else 0


def _osqueryd_bytes_sql(table: Table, columns: list[str]) -> str:
    """The same model in SQL, over the stored rows of a query: one pass before sending."""
    terms = [f"{COPIES * (ROW_BYTES + len(columns) * ENTRY_BYTES)}"]
    for name in columns:
        if len(name) > INLINE_CHARS:
            terms.append(str(COPIES * (len(name) + HEAP_BYTES)))
        if table.column(name).type == "TEXT":   # integers print in 20 characters at most: inline
            size = f"length(CAST({name} AS BLOB))"
            terms.append(f"CASE WHEN {size} > {INLINE_CHARS} THEN {COPIES} * ({size} + {HEAP_BYTES}) ELSE 0 END")
    return " + ".join(terms)


def stored_peak(rows: StoredRows, columns: list[str]) -> int:
    """osqueryd's peak for an answer of stored rows of these columns, before it is sent."""
    return rows.measure(_osqueryd_bytes_sql(rows.table, columns)) + osqueryd_bytes(rows.held)


class TableError(Exception):
    """A query a table refuses: the message goes to osquery as it is (osqueryi prints it,
    a scheduled query logs it)."""


class AnswerTooLarge(TableError):
    pass


def as_text(row: dict[str, Any]) -> dict[str, str]:
    """osquery rows are maps of strings; a missing value is '' (never 'None')."""
    return {k: v if type(v) is str else ("" if v is None else str(v)) for k, v in row.items()}


def conditions_from(context: dict[str, Any], table: Table = EXECS) -> list[Condition]:
    """The store conditions osquery's context allows, for the table's indexed columns only.

    A value that does not fit the column's type (pid = 'abc') is not pushed down: SQLite
    compares it with the column itself and, as osquery would, returns no row for `=`.
    """
    conditions: list[Condition] = []
    for constraint in context.get("constraints", []) or []:
        name = constraint.get("name")
        if name not in table.names:
            continue
        column = table.column(name)
        if not column.indexed:
            continue
        for item in constraint.get("list", []) or []:
            try:
                op = int(item.get("op"))
            except (TypeError, ValueError):
                continue
            expr = item.get("expr")
            if column.python_type is int:
                if op not in _RANGE_OPS:
                    continue
                try:
                    value: Any = int(str(expr))
                except ValueError:
                    continue
            else:
                if op != OP_EQUALS or not isinstance(expr, str):
                    continue
                value = expr
            conditions.append((name, _SQL_OPS[op], value))
    return conditions


class TablePlugin:
    """One osquery table: its schema and a generate(context) that returns its rows, typed
    (ints in BIGINT columns); osquery's wire carries them as strings (generate_text)."""

    table: Table

    def generate(self, context: dict[str, Any]) -> Rows:
        raise NotImplementedError

    def generate_text(self, context: dict[str, Any]) -> Rows:
        """The rows as osquery's wire carries them: every value a string."""
        return [as_text(row) for row in self.generate(context)]

    def answer(self, context: dict[str, Any]) -> Rows:
        """generate(context) for the embedded host; every failure is a TableError, with the
        message call() would send osquery."""
        try:
            return self.generate(context)
        except TableError:
            raise
        except Exception as exc:   # a failing query must not take the host down either
            raise TableError(f"table {self.table.name}: {type(exc).__name__}: {exc}") from exc

    def routes(self) -> list[dict[str, str]]:
        """The column list osquery registers (op 0: osquery's default for extensions)."""
        return [{"id": "column", "name": c.name, "type": c.type, "op": "0"} for c in self.table.columns]

    def call(self, request: dict[str, str]) -> ExtensionResponse:
        """osquery's Extension.call for registry 'table'. Never raises: errors are
        answered with status code 1 and the message, as osquery expects."""
        action = request.get("action")
        rows: Rows
        try:
            if action == "columns":
                rows = self.routes()
            elif action == "generate":
                context = json.loads(request.get("context") or "{}")
                rows = self.generate_text(context if isinstance(context, dict) else {})
            else:
                return _failure(f"table {self.table.name}: unknown action {action!r} (expected columns or generate)")
        except TableError as exc:
            return _failure(str(exc))
        except Exception as exc:   # a failing query must not take the extension down
            return _failure(f"table {self.table.name}: {type(exc).__name__}: {exc}")
        return ExtensionResponse(status=ExtensionStatus(code=0, message="OK"), response=rows)


def _failure(message: str) -> ExtensionResponse:
    return ExtensionResponse(status=ExtensionStatus(code=1, message=message), response=[])


def columns_used(context: dict[str, Any], table: Table = EXECS) -> list[str]:
    """The columns osquery says the query uses (colsUsed), in schema order: osquery sends
    the list for every query (xBestIndex, osquery/sql/virtual_table.cpp), empty for one that
    uses none (SELECT count(*): then eid alone, so rows are still rows). Without the key (an
    older osquery, the embedded host), all of them."""
    used = context.get("colsUsed")
    if not isinstance(used, list):
        return list(table.names)
    wanted = set(used)
    return [name for name in table.names if name in wanted] or ["eid"]


class StoredTable(TablePlugin):
    """A table of the event store. With max_answer_mb (the osquery extension), an answer
    whose peak in osqueryd would pass it is refused."""

    def __init__(self, store: Callable[[], Store | None], max_answer_mb: float | None = None) -> None:
        self._store = store
        self.max_answer_mb = max_answer_mb

    def generate(self, context: dict[str, Any]) -> Rows:
        return self._stream(context, text=False)

    def generate_text(self, context: dict[str, Any]) -> Rows:
        return self._stream(context, text=True)   # SQLite casts, faster than Python

    def _stream(self, context: dict[str, Any], text: bool) -> Rows:
        store = self._store()
        if store is None:
            return []
        columns = columns_used(context, self.table)
        rows = store.stream(conditions_from(context, self.table), text=text, columns=columns, table=self.table)
        if self.max_answer_mb is not None:
            try:
                self._refuse_if_too_large(rows, columns)
            except BaseException:
                rows.close()   # the read snapshot, at once
                raise
        return rows

    def _refuse_if_too_large(self, rows: StoredRows, columns: list[str]) -> None:
        """Raise AnswerTooLarge when osqueryd's peak would pass the cap.
        An answer too many rows long for the cap however short they are is refused at
        once; otherwise its size is summed in SQL (bench/answer_size.py gives what that costs)."""
        assert self.max_answer_mb is not None
        cap = self.max_answer_mb * 1e6
        floor = len(rows) * COPIES * (ROW_BYTES + len(columns) * ENTRY_BYTES)
        size = floor if floor > cap else stored_peak(rows, columns)
        if size > cap:
            raise AnswerTooLarge(
                f"{self.table.name}: this answer is {len(rows):,} rows, {'at least ' if size == floor else ''}about "
                f"{size / 1e6:,.0f} MB in osqueryd's memory, over the extension's --max-answer-mb="
                f"{self.max_answer_mb:g} (osqueryd's watchdog stops a worker that grows by 200 MB and denylists the "
                "query for a day): constrain it, e.g. WHERE time > strftime('%s', 'now') - 3600, or eid > N, or "
                "select fewer columns")


class ExecsTable(StoredTable):
    table = EXECS


class SocketsTable(StoredTable):
    table = SOCKETS


def stored_tables(store: Callable[[], Store | None], max_answer_mb: float | None = None) -> list[StoredTable]:
    """Every table of the event store: what each host serves."""
    return [ExecsTable(store, max_answer_mb), SocketsTable(store, max_answer_mb)]


class StatusTable(TablePlugin):
    """network_utility_probe_status: one row saying whether detection works."""

    table = STATUS

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def generate(self, context: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._status()]
