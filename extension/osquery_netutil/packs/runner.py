"""Scheduled pack queries on the embedded host, their results handed on as osqueryd's
scheduler hands them to its logger.

Three kinds of query. With a Cursor (plain `watch`), the detections judge each stored row
exactly once, in eid order, whatever the rate: every round takes the rows after the last
judged eid, in batches, for as long as its time budget lasts, and a round that falls
behind goes on where it stopped; the cursor is kept beside the store, so a restart
resumes. Differential queries (all of them with --pack-intervals) run as osquery's
scheduler runs them (osquery/core/query.cpp, Query::addNewResults): the first run hands on
every row ("added", counter 0); later runs hand on only what changed ("removed" first,
when the query's logging is `differential`, then "added"), and the counter moves by one at
each run whose results changed, never otherwise. Snapshot queries (the health query) are
either logged as osqueryd logs them, every row of each run at the query's own interval
(counter 0, even when there is no row), or, for a person at a terminal, handed on when
their condition starts, changes or ends (`snapshots="changes"`): a condition is what a
row says in words, its numbers left out, so a probe that keeps losing events, or a
restart, is one line, not one a round.

The detections judged by cursor are differential queries whose every run finds only new
rows: each of their lines is "added", and their counter starts at 0 again when watch
starts (it is not kept beside the store, the cursor is).

What a run found is a Result (typed values, the query it came from); resultlog.py turns
it into osqueryd's result-log lines, readable() into a line for a person.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from osquery_netutil.packs.formats import PACK_NAME
from osquery_netutil.host.database import Host
from osquery_netutil.host.errors import QueryError
from osquery_netutil.packs.source import BOUNDS, BY_CURSOR, Query
from osquery_netutil.schema import EXECS, SOCKETS
from osquery_netutil.store.cursor import Cursor

Row = dict[str, Any]
Snapshots = Literal["log", "changes"]


@dataclass(frozen=True)
class Result:
    """What one run of a scheduled query hands on: one row "added" or "removed", or
    every row of a run ("snapshot", maybe none)."""

    query: Query
    action: str
    rows: tuple[Row, ...]
    unix_time: int
    counter: int

    @property
    def name(self) -> str:
        """The scheduled query's name as osquery logs it: pack_<pack>_<query>."""
        return f"pack_{PACK_NAME}_{self.query.name}"


@dataclass
class _State:
    query: Query
    last_run: float = float("-inf")
    started: bool = False                                  # a first run happened (counter 0)
    counter: int = 0
    previous: Counter[str] = field(default_factory=Counter)   # the last run's rows (differential)
    conditions: dict[tuple, Row] = field(default_factory=dict)  # the conditions shown (changes)
    failed: str = ""

    def advance(self, changed: bool) -> int:
        """osquery's counter for this run: 0 for the first, then one more for each run
        whose results changed."""
        if not self.started:
            self.started = True
        elif changed:
            self.counter += 1
        return self.counter


_DIGITS = re.compile(r"\d+")


def _key(row: Row) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _condition(row: Row) -> tuple:
    """What a row says in words, its numbers left out: counts and times move every run (a
    message saying "12 events lost" then "30 events lost" is one condition); a new state,
    error or kind of restart is a new one."""
    return tuple(sorted((k, _DIGITS.sub("#", v) if isinstance(v, str) else v)
                        for k, v in row.items() if not isinstance(v, (int, float))))


BATCH_ROWS = 2000      # rows per batch of a cursor round
ROUND_BUDGET_S = 1.0   # a round stops taking batches after this long; the next goes on


class PackRunner:
    """Runs each query when due: every `every_s` seconds, or at its own interval; with a
    cursor, the queries that judge rows do so by eid, every round."""

    def __init__(self, host: Host, queries: list[Query], every_s: float | None = 2.0,
                 cursor: Cursor | None = None, snapshots: Snapshots = "log", socket_cursor: Cursor | None = None) -> None:
        """cursor: the execs judged (plain watch); socket_cursor: the socket events judged."""
        self.host = host
        self.every_s = every_s           # None: honour each query's interval
        self.cursor = cursor
        self._cursors = {table: c for table, c in ((EXECS.name, cursor), (SOCKETS.name, socket_cursor)) if c is not None}
        self.snapshots = snapshots
        self._states = [_State(q) for q in queries]
        self._unreadable = ""   # the last batch that could not be read, reported once

    def _interval(self, query: Query) -> float:
        if query.logging == "snapshot" and self.snapshots == "log":
            return float(query.interval)   # as osqueryd: one snapshot per interval
        return self.every_s if self.every_s is not None else float(query.interval)

    def run_due(self, now: float | None = None) -> tuple[list[Result], list[str]]:
        """(results, errors) of the queries due now. A query whose SQL fails is reported
        once (file:line) and not run again; the others go on."""
        now = time.time() if now is None else now
        results: list[Result] = []
        errors: list[str] = []
        for state in self._states:
            if state.failed or state.query.by_cursor or now - state.last_run < self._interval(state.query):
                continue
            state.last_run = now
            rows = self._run(state, errors)
            if rows is None:
                continue
            if state.query.logging != "snapshot":
                results += self._differential(state, rows, int(now))
            elif self.snapshots == "log":
                results.append(Result(state.query, "snapshot", tuple(rows), int(now), 0))
            else:
                results += self._changes(state, rows, int(now))
        for table, cursor in self._cursors.items():
            results += self._judge_new_rows(table, cursor, int(now), errors)
        return results, errors

    def _differential(self, state: _State, rows: list[Row], now: int) -> list[Result]:
        keys = [_key(row) for row in rows]
        current, by_key = Counter(keys), dict(zip(keys, rows))
        first = not state.started
        added = current if first else current - state.previous
        removed = Counter() if first else state.previous - current
        state.previous = current
        counter = state.advance(bool(added or removed))
        found = [] if state.query.logging != "differential" else [
            Result(state.query, "removed", (json.loads(key),), now, counter) for key in sorted(removed.elements())]
        return found + [Result(state.query, "added", (by_key[key],), now, counter) for key in sorted(added.elements())]

    def _changes(self, state: _State, rows: list[Row], now: int) -> list[Result]:
        current = {_condition(row): row for row in rows}
        gone = [row for key, row in state.conditions.items() if key not in current]
        new = [row for key, row in current.items() if key not in state.conditions]
        state.conditions = current
        counter = state.advance(bool(gone or new))
        return ([Result(state.query, "removed", (row,), now, counter) for row in gone]
                + [Result(state.query, "added", (row,), now, counter) for row in new])

    def _run(self, state: _State, errors: list[str], bindings: dict[str, int] | None = None) -> list[Row] | None:
        """The query's rows, typed; None when it failed (reported once, then stopped)."""
        try:
            columns, rows = self.host.query(state.query.sql, bindings or {})
        except QueryError as exc:
            state.failed = f"{state.query.where}: {state.query.name}: {exc}"
            errors.append(f"{state.failed}; this query is stopped, the others go on")
            return None
        return [dict(zip(columns, row)) for row in rows]

    def _judge_new_rows(self, table: str, cursor: Cursor, now: int, errors: list[str]) -> list[Result]:
        """Every row of table after its cursor, by every query that judges that table's
        rows, batch by batch: at least one batch, then more while ROUND_BUDGET_S lasts;
        each row's detections are handed on once ("added")."""
        results: list[Result] = []
        deadline = time.monotonic() + ROUND_BUDGET_S
        low, high = BOUNDS[table]
        while True:
            after = cursor.value
            upto = min(cursor.upto(), after + BATCH_ROWS)
            if upto <= after:
                break
            bounds = {low: after, high: upto}
            # Each detection reads the batch: stored rows up to upto do not change, so the
            # host reads them once for all.
            try:
                with self.host.snapshot(table, BY_CURSOR[table], bounds):
                    for state in self._states:
                        if state.query.by_cursor and state.query.judged == table and not state.failed:
                            found = self._run(state, errors, bounds)
                            if found is not None:
                                counter = state.advance(bool(found))
                                results += [Result(state.query, "added", (row,), now, counter) for row in found]
            except QueryError as exc:   # the batch could not be read: nothing judged, retried next round
                message = f"cannot read the rows of {table} after eid {after} to judge them ({exc}); retrying every round"
                if message != self._unreadable:
                    errors.append(message)
                self._unreadable = message
                break
            self._unreadable = ""
            cursor.advance(upto)
            if time.monotonic() >= deadline:
                break
        return results


_COLOURS = {"critical": "\033[1;31m", "high": "\033[31m", "medium": "\033[33m", "low": "\033[36m", "info": "\033[2m"}
_RESET = "\033[0m"


def readable(result: Result, colour: bool) -> list[str]:
    """A result for a person at a terminal, a line per row: time, severity, detection,
    message ("-" marks a condition that ended)."""
    when = time.strftime("%H:%M:%S", time.localtime(result.unix_time))
    mark = "-" if result.action == "removed" else "!"
    query = result.query
    head = f"{query.severity.upper():<8} {query.name}"
    if colour:
        head = f"{_COLOURS.get(query.severity, '')}{head}{_RESET}"
    return [f"{when} {mark} {head}  {row.get('message') or json.dumps(row, default=str)}" for row in result.rows]
