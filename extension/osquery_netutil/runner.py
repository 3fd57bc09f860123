"""Scheduled pack queries on the embedded host, logged the way osqueryd logs them.

Differential, like osquery's scheduler: each run's rows are compared with the previous
run's, and only rows that were not there before are logged (`"action": "added"`; queries
whose logging is `differential` also log `"removed"` rows). The first run logs what is
already there. Each result is an osquery result-log line (name, hostIdentifier,
calendarTime, unixTime, epoch, counter, numerics, columns, action), so what `watch`
prints can be fed to the same pipeline as osqueryd's results.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .host import Host, QueryError
from .packs import PACK_NAME, Query


@dataclass
class _State:
    query: Query
    last_run: float = float("-inf")
    counter: int = 0
    previous: set[str] = field(default_factory=set)
    failed: str = ""


class PackRunner:
    """Runs each query when due: every `every_s` seconds, or at its own interval."""

    def __init__(self, host: Host, queries: list[Query], every_s: float | None = 2.0,
                 host_identifier: str | None = None) -> None:
        self.host = host
        self.every_s = every_s           # None: honour each query's interval
        self.host_identifier = host_identifier or socket.gethostname()
        self._states = [_State(q) for q in queries]

    def _interval(self, query: Query) -> float:
        return self.every_s if self.every_s is not None else float(query.interval)

    def run_due(self, now: float | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """(result-log lines, errors) of the queries due now. A query whose SQL fails is
        reported once (file:line) and not run again; the others go on."""
        now = time.time() if now is None else now
        lines: list[dict[str, Any]] = []
        errors: list[str] = []
        for state in self._states:
            if state.failed or now - state.last_run < self._interval(state.query):
                continue
            state.last_run = now
            try:
                columns, rows = self.host.query(state.query.sql)
            except QueryError as exc:
                state.failed = f"{state.query.where}: {state.query.name}: {exc}"
                errors.append(f"{state.failed}; this query is stopped, the others go on")
                continue
            current = {json.dumps({c: "" if v is None else str(v) for c, v in zip(columns, row)}, sort_keys=True)
                       for row in rows}
            added = current - state.previous
            removed = state.previous - current if state.query.logging == "differential" else set()
            for action, found in (("removed", removed), ("added", added)):
                for item in sorted(found):
                    lines.append(self._line(state, now, action, json.loads(item)))
            state.previous = current
            state.counter += 1
        return lines, errors

    def _line(self, state: _State, now: float, action: str, columns: dict[str, str]) -> dict[str, Any]:
        return {
            "name": f"pack_{PACK_NAME}_{state.query.name}",
            "hostIdentifier": self.host_identifier,
            "calendarTime": time.strftime("%a %b %d %H:%M:%S %Y UTC", time.gmtime(now)),
            "unixTime": int(now),
            "epoch": 0,
            "counter": state.counter,
            "numerics": False,
            "columns": columns,
            "action": action,
        }


_COLOURS = {"critical": "\033[1;31m", "high": "\033[31m", "medium": "\033[33m", "low": "\033[36m", "info": "\033[2m"}
_RESET = "\033[0m"


def readable(line: dict[str, Any], query: Query, colour: bool) -> str:
    """One result for a person at a terminal: time, severity, detection, message."""
    when = time.strftime("%H:%M:%S", time.localtime(line["unixTime"]))
    message = line["columns"].get("message") or json.dumps(line["columns"])
    mark = "-" if line["action"] == "removed" else "!"
    head = f"{query.severity.upper():<8} {query.name}"
    if colour:
        head = f"{_COLOURS.get(query.severity, '')}{head}{_RESET}"
    return f"{when} {mark} {head}  {message}"
