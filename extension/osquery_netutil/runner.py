"""Scheduled pack queries on the embedded host, logged the way osqueryd logs them.

Two ways. With a Cursor (plain `watch`), the detections judge each stored row exactly
once, in eid order, whatever the rate: every round takes the rows after the last judged
eid, in batches, for as long as its time budget lasts, and a round that falls behind
goes on where it stopped; the cursor is kept beside the store, so a restart resumes. The
other queries (the status one, or all of them with --pack-intervals) are differential,
like osquery's scheduler: each run's rows are compared with the previous run's, and only
rows that were not there before are logged (`"action": "added"`; queries whose logging is
`differential` also log `"removed"` rows). The first run logs what is already there.

Each result is an osquery result-log line (name, hostIdentifier, calendarTime, unixTime,
epoch, counter, numerics, columns, action), so what `watch` prints can be fed to the same
pipeline as osqueryd's results.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .host import Host, QueryError
from .packs import PACK_NAME, RECENT_BY_CURSOR, Query
from .schema import EXECS


@dataclass
class _State:
    query: Query
    last_run: float = float("-inf")
    counter: int = 0
    previous: set[str] = field(default_factory=set)
    failed: str = ""


def _columns(names: list[str], row: tuple[Any, ...]) -> dict[str, str]:
    """A result row as osquery logs it: every value a string, NULL as ''."""
    return {c: "" if v is None else str(v) for c, v in zip(names, row)}


BATCH_ROWS = 2000      # rows per batch of a cursor round
ROUND_BUDGET_S = 1.0   # a round stops taking batches after this long; the next goes on


class Cursor:
    """The last eid the detections have judged, kept in a file beside the store: a restart
    resumes there, so that no row is judged twice or never. Without a file, judging starts
    with the rows of the last `first_s` seconds."""

    def __init__(self, path: Path, newest: Callable[[], int], eid_before: Callable[[int], int],
                 time_after: Callable[[int], int | None], first_s: int = 60) -> None:
        self.path = path
        self.newest = newest
        self._time_after = time_after
        try:
            saved = int(path.read_text().strip())
        except (OSError, ValueError):
            saved = None
        self.value = saved if saved is not None and 0 <= saved <= newest() else eid_before(int(time.time()) - first_s)

    def progress(self) -> dict[str, int]:
        """The status row's judge_backlog and judge_delay_s: rows waiting, and how long the
        oldest of them has."""
        waiting = max(self.newest() - self.value, 0)
        oldest = self._time_after(self.value) if waiting else None
        return {"judge_backlog": waiting, "judge_delay_s": max(int(time.time()) - oldest, 0) if oldest else 0}

    def advance(self, eid: int) -> None:
        self.value = eid
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{eid}\n")
        os.replace(tmp, self.path)


class PackRunner:
    """Runs each query when due: every `every_s` seconds, or at its own interval; with a
    cursor, the queries that judge rows do so by eid, every round."""

    def __init__(self, host: Host, queries: list[Query], every_s: float | None = 2.0,
                 host_identifier: str | None = None, cursor: Cursor | None = None) -> None:
        self.host = host
        self.every_s = every_s           # None: honour each query's interval
        self.host_identifier = host_identifier or socket.gethostname()
        self.cursor = cursor
        self._states = [_State(q) for q in queries]
        self._unreadable = ""   # the last batch that could not be read, reported once

    def _interval(self, query: Query) -> float:
        return self.every_s if self.every_s is not None else float(query.interval)

    def run_due(self, now: float | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """(result-log lines, errors) of the queries due now. A query whose SQL fails is
        reported once (file:line) and not run again; the others go on."""
        now = time.time() if now is None else now
        lines: list[dict[str, Any]] = []
        errors: list[str] = []
        for state in self._states:
            if state.failed or state.query.by_cursor or now - state.last_run < self._interval(state.query):
                continue
            state.last_run = now
            rows_of = self._run(state, errors)
            if rows_of is None:
                continue
            columns, rows = rows_of
            current = {json.dumps(_columns(columns, row), sort_keys=True) for row in rows}
            added = current - state.previous
            removed = state.previous - current if state.query.logging == "differential" else set()
            for action, found in (("removed", removed), ("added", added)):
                for item in sorted(found):
                    lines.append(self._line(state, now, action, json.loads(item)))
            state.previous = current
            state.counter += 1
        if self.cursor is not None:
            lines += self._judge_new_rows(now, errors)
        return lines, errors

    def _run(self, state: _State, errors: list[str], bindings: dict[str, int] | None = None,
             ) -> tuple[list[str], list[tuple[Any, ...]]] | None:
        """The query's (columns, rows); None when it failed (reported once, then stopped)."""
        try:
            return self.host.query(state.query.sql, bindings or {})
        except QueryError as exc:
            state.failed = f"{state.query.where}: {state.query.name}: {exc}"
            errors.append(f"{state.failed}; this query is stopped, the others go on")
            return None

    def _judge_new_rows(self, now: float, errors: list[str]) -> list[dict[str, Any]]:
        """Every row after the cursor, by every query that judges rows, batch by batch: at
        least one batch, then more while ROUND_BUDGET_S lasts; each row's detections are
        logged once ("added")."""
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + ROUND_BUDGET_S
        while True:
            after = self.cursor.value
            upto = min(self.cursor.newest(), after + BATCH_ROWS)
            if upto <= after:
                break
            bounds = {"after": after, "upto": upto}
            # Each detection reads the batch: stored rows up to upto do not change, so the
            # host reads them once for all.
            try:
                with self.host.snapshot(EXECS.name, RECENT_BY_CURSOR, bounds):
                    for state in self._states:
                        if state.query.by_cursor and not state.failed:
                            found = self._run(state, errors, bounds)
                            if found is not None:
                                columns, rows = found
                                lines += [self._line(state, now, "added", _columns(columns, row)) for row in rows]
                                state.counter += 1
            except QueryError as exc:   # the batch could not be read: nothing judged, retried next round
                message = f"cannot read the rows after eid {after} to judge them ({exc}); retrying every round"
                if message != self._unreadable:
                    errors.append(message)
                self._unreadable = message
                break
            self._unreadable = ""
            self.cursor.advance(upto)
            if time.monotonic() >= deadline:
                break
        return lines

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
