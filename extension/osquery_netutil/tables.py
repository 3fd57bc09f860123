"""The two tables as osquery table plugins, served to osquery over thrift and to the
embedded host alike.

osquery-python's TablePlugin is not used: it is a process-wide singleton (one instance
per class, no constructor arguments), turns None into "None" and raises on an unknown
action. TablePlugin below speaks the same protocol (osquery's `call` with action
`columns` or `generate`, and the column routes) without those traps.

`generate(context)` receives osquery's context (a dict: every column with its list of
{op, expr} constraints) and turns the usable ones into indexed store queries: ranges and
equality on the BIGINT columns that have an index, equality on the indexed TEXT ones.
Everything else is left to SQLite, which re-checks the whole WHERE clause anyway, so
pushing a constraint down only ever saves work, it never changes an answer.
"""

from __future__ import annotations

from typing import Any, Callable

import json

from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus

from .schema import EXECS, STATUS, Table
from .store import Condition, Store, StoredRows

# osquery's constraint operators (osquery/core/tables.h; SQLite's own values).
OP_EQUALS, OP_GT, OP_LE, OP_LT, OP_GE = 2, 4, 8, 16, 32
_SQL_OPS = {OP_EQUALS: "=", OP_GT: ">", OP_LE: "<=", OP_LT: "<", OP_GE: ">="}
_RANGE_OPS = set(_SQL_OPS)
# A table's answer: a list, or stored rows read while they are sent (len() known first).
Rows = list[dict[str, str]] | StoredRows


def as_text(row: dict[str, Any]) -> dict[str, str]:
    """osquery rows are maps of strings; a missing value is '' (never 'None')."""
    return {k: v if type(v) is str else ("" if v is None else str(v)) for k, v in row.items()}


def conditions_from(context: dict[str, Any]) -> list[Condition]:
    """The store conditions osquery's context allows, for indexed columns only.

    A value that does not fit the column's type (pid = 'abc') is not pushed down: SQLite
    compares it with the column itself and, as osquery would, returns no row for `=`.
    """
    conditions: list[Condition] = []
    for constraint in context.get("constraints", []) or []:
        name = constraint.get("name")
        if name not in EXECS.names:
            continue
        column = EXECS.column(name)
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
    """One osquery table: its schema and a generate(context) that returns its rows."""

    table: Table

    def generate(self, context: dict[str, Any]) -> Rows:
        raise NotImplementedError

    def routes(self) -> list[dict[str, str]]:
        """The column list osquery registers (op 0: osquery's default for extensions)."""
        return [{"id": "column", "name": c.name, "type": c.type, "op": "0"} for c in self.table.columns]

    def call(self, request: dict[str, str]) -> ExtensionResponse:
        """osquery's Extension.call for registry 'table'. Never raises: errors are
        answered with status code 1 and the message, as osquery expects."""
        action = request.get("action")
        try:
            if action == "columns":
                rows = self.routes()
            elif action == "generate":
                context = json.loads(request.get("context") or "{}")
                rows = self.generate(context if isinstance(context, dict) else {})
            else:
                return _failure(f"table {self.table.name}: unknown action {action!r} (expected columns or generate)")
        except Exception as exc:   # a failing query must not take the extension down
            return _failure(f"table {self.table.name}: {type(exc).__name__}: {exc}")
        return ExtensionResponse(status=ExtensionStatus(code=0, message="OK"), response=rows)


def _failure(message: str) -> ExtensionResponse:
    return ExtensionResponse(status=ExtensionStatus(code=1, message=message), response=[])


class ExecsTable(TablePlugin):
    """network_utility_execs: rows from the event store."""

    table = EXECS

    def __init__(self, store: Callable[[], Store | None]) -> None:
        self._store = store

    def generate(self, context: dict[str, Any]) -> Rows:
        store = self._store()
        if store is None:
            return []
        return store.stream(conditions_from(context), text=True)


class StatusTable(TablePlugin):
    """network_utility_probe_status: one row saying whether detection works."""

    table = STATUS

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def generate(self, context: dict[str, Any]) -> list[dict[str, str]]:
        return [as_text(self._status())]
