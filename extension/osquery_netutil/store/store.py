"""The event store: rows of network_utility_execs and network_utility_socket_events in a
local SQLite file.

One writer (the extension or `watch`) appends rows through a background thread that
commits a batch at least every `flush_s` seconds, so a `kill -9` loses at most that much.
WAL mode lets any number of readers (`query`, a second extension) read while it writes.
`eid` is an AUTOINCREMENT key: strictly increasing and never reused, across restarts and
pruning; an exec row's eid is given when it is added (the writer continues the sequence),
so that the socket events of its process can name it before it is written. Rows are
bounded by count and by age, each table on its own.

The file holds command lines of everything the host ran, so it is created 0600 in a
root-only directory, and a file or directory that others could write is refused
(safety.py).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from osquery_netutil import faults, safety
from osquery_netutil.schema import EXECS, SOCKETS, Table
from osquery_netutil.store.cursor import Cursor
from osquery_netutil.store.errors import StoreError, StoreMissing
from osquery_netutil.store.ownership import StatusFile, WriterLock
from osquery_netutil.store.layout import INSERTED, INSERTS, REQUIRED, connect, prepare
from osquery_netutil.store.rows import (
    PY_OPS, SQL_NAMES, Condition, Row, StoredRows, dicts, select_sql, where_sql,
)

DEFAULT_PATH = Path("/var/osquery/netutil_events.db")
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_AGE_S = 24 * 3600
FLUSH_S = 0.5
_PRUNE_EVERY_S = 5.0

class Store:
    """Appends rows (writer) or reads them (readonly=True). Use as a context manager."""

    def __init__(
        self,
        path: Path = DEFAULT_PATH,
        *,
        readonly: bool = False,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_age_s: int = DEFAULT_MAX_AGE_S,
        flush_s: float = FLUSH_S,
        judged_by_cursor: bool = False,
        settle_s: int = 0,
    ) -> None:
        """judged_by_cursor: watch judges each row once, by eid (the store's `cursor`, and
        `socket_cursor` for the socket events), the execs once they are settle_s old (their
        socket events have come); without it every row counts as judged, as under osquery's
        scheduler."""
        if max_rows < 1 or max_age_s < 1:
            raise StoreError(f"retention must be positive (max_rows={max_rows}, max_age_s={max_age_s})")
        self.path = Path(path)
        # Eviction spares what the detections still need: rows after the cursors, and, up to
        # their own cap, rows a detection reported (mark_detected).
        self.cursor: Cursor | None = None          # the execs judged
        self.socket_cursor: Cursor | None = None   # the socket events judged
        self.max_detected = max(max_rows // 10, 1)
        self.evicted = 0
        self._marks: list[int] = []
        self.readonly = readonly
        self.max_rows, self.max_age_s, self.flush_s = max_rows, max_age_s, flush_s
        self.error = ""            # last write error, '' when writes succeed
        self.recovered = ""        # why the file was replaced at open, if it was
        self._lock = WriterLock(self.path)
        self._status = StatusFile(self.path)
        self.previous_run: dict[str, Any] | None = None   # the writer before this one, this boot
        # Rows to write, swapped out whole by the writer: appending is all the probe's thread
        # pays per row (a queue.Queue costs it two lock round trips per row, and starves
        # under load).
        self._incoming: list[Row] = []
        self._incoming_sockets: list[Row] = []
        self._next_eid = 0                  # the eid add() gives next (writer)
        self._flushes: list[threading.Event] = []
        self._closing = False
        self._wake = threading.Condition()
        self._writer: threading.Thread | None = None
        self._read_lock = threading.Lock()
        self._held: list[Row] = []          # rows the file could not take (disk full)
        self._held_sockets: list[Row] = []
        self._held_lock = threading.Lock()
        try:
            safety.check(self.path, "store file", directory=True)
        except safety.UnsafeFile as exc:
            raise StoreError(str(exc)) from None
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreMissing(f"{self.path}: no store here yet: start 'osquery-netutil watch' or the extension first")
                self._reader = connect(self.path, readonly=True)
                self._reader.execute("SELECT eid FROM events LIMIT 1")
                return
            self._take_writer_lock()
            self._open_for_writing()
            self._reader = connect(self.path, readonly=True)
            if judged_by_cursor:
                self.cursor = self._judged(EXECS, ".judged", settle_s)
                self.socket_cursor = self._judged(SOCKETS, ".judged-sockets", 0)
        except (OSError, sqlite3.Error) as exc:
            self._lock.release()
            raise StoreError(f"{self.path}: cannot open the store ({faults.cause(exc)}): {faults.fix(exc)}") from exc
        self._writer = threading.Thread(target=self._write_loop, name="netutil-store", daemon=True)
        self._writer.start()

    def _judged(self, table: Table, suffix: str, settle_s: int) -> Cursor:
        """The cursor of watch's judge over table's rows, kept in a file beside the store."""
        return Cursor(self.path.with_name(self.path.name + suffix), lambda: self.stats(table)[2],
                      lambda when: self.eid_before(when, table), lambda eid: self.time_after(eid, table),
                      settle_s=settle_s)

    # -- writer side -------------------------------------------------------------------
    def _take_writer_lock(self) -> None:
        self._lock.take()
        # The status an earlier run left describes that run, never this one: kept only as
        # the previous run of this boot (how it ended tells a restart from a kill), then gone.
        self.previous_run = self._status.previous_run()
        self._status.remove()

    def _open_for_writing(self) -> None:
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        try:
            self._conn = self._prepare()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(str(aside) + suffix)
            self.recovered = f"{self.path} was unreadable ({exc}); moved aside to {aside}, a new store was created"
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            self._conn = self._prepare()

    def _prepare(self) -> sqlite3.Connection:
        conn = connect(self.path, readonly=False)
        try:
            prepare(conn)
            # AUTOINCREMENT's sequence: the highest eid ever given, kept across pruning.
            found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            self._next_eid = (found[0] if found else 0) + 1
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def add(self, row: Row) -> int:
        """Queue an exec row (every column but eid); it is committed within flush_s.
        Returns the eid it is given."""
        self._check(EXECS, row)
        with self._wake:
            eid = self._next_eid
            self._next_eid += 1
            self._incoming.append({**row, "eid": eid})
        return eid

    def add_socket(self, row: Row) -> None:
        """Queue a socket event row (every column but eid); it is committed within flush_s."""
        self._check(SOCKETS, row)
        with self._wake:
            self._incoming_sockets.append(row)

    def _check(self, table: Table, row: Row) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only: rows cannot be added")
        missing = REQUIRED[table.name] - row.keys()
        if missing:
            raise ValueError(f"{table.name} row lacks columns {sorted(missing)}")

    def add_many(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.add(row)

    def flush(self, timeout: float = 10.0) -> None:
        """Commit everything queued so far; return when it is on disk (or timeout)."""
        if self._writer is None:
            return
        done = threading.Event()
        with self._wake:
            self._flushes.append(done)
            self._wake.notify()
        done.wait(timeout)

    def close(self) -> None:
        """Flush, stop the writer and release the files. Safe to call twice."""
        self._reader.close()   # first, so the writer's close can checkpoint the WAL away
        if self._writer is not None:
            with self._wake:
                self._closing = True
                self._wake.notify()
            self._writer.join(timeout=30)
            self._writer = None
            self._conn.close()
        self._lock.release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_loop(self) -> None:
        pending: list[Row] = []   # rows the file could not take yet (held, see _commit)
        pending_sockets: list[Row] = []
        last_prune = 0.0
        stopping = False
        while not stopping:
            with self._wake:
                if not (self._flushes or self._closing):
                    self._wake.wait(self.flush_s)
                batch, self._incoming = self._incoming, []
                sockets, self._incoming_sockets = self._incoming_sockets, []
                marks, self._marks = self._marks, []
                waiters, self._flushes = self._flushes, []
                stopping = self._closing
            if pending or batch:
                pending = self._commit(EXECS, pending + batch)
            if pending_sockets or sockets:
                pending_sockets = self._commit(SOCKETS, pending_sockets + sockets)
            if marks:
                self._mark(marks)
            if time.monotonic() - last_prune > _PRUNE_EVERY_S or stopping:
                self._prune()
                last_prune = time.monotonic()
            for w in waiters:
                w.set()

    def _commit(self, table: Table, rows: list[Row]) -> list[Row]:
        """Insert a table's rows in one transaction. On failure (a full disk, say) keep
        them, the newest max_rows, in memory: select() still serves them and the next
        commit retries. Returns the rows still to write."""
        columns = INSERTED[table.name]
        try:
            with self._conn_tx():
                self._conn.executemany(INSERTS[table.name], [tuple(r[c] for c in columns) for r in rows])
        except sqlite3.Error as exc:
            held = rows[-self.max_rows:]
            self.error = f"cannot write {self.path} ({exc}): {len(held)} rows held in memory until it can"
            self._hold(table, held)
            return held
        self.error = ""
        self._hold(table, [])
        return []

    def _hold(self, table: Table, rows: list[Row]) -> None:
        with self._held_lock:
            if table is EXECS:
                self._held = rows
            else:
                self._held_sockets = rows

    def mark_detected(self, eids: Iterable[int]) -> None:
        """Rows a detection reported: they outlive plain rows (written with the next batch)."""
        with self._wake:
            self._marks.extend(eids)

    def _mark(self, eids: list[int]) -> None:
        try:
            with self._conn_tx():
                self._conn.executemany("INSERT OR IGNORE INTO detected (eid) VALUES (?)", [(e,) for e in eids])
        except sqlite3.Error as exc:
            self.error = f"cannot write {self.path} ({exc})"

    def _prune(self) -> None:
        """Evict beyond max_rows and max_age_s, oldest first: plain rows before reported ones
        (which have their own cap, max_detected), and never a row not judged yet, so that a
        storm of cheap execs cannot flush what came before it unseen."""
        judged = self.cursor.value if self.cursor is not None else 2**62
        try:
            with self._conn_tx():
                (count,) = self._conn.execute("SELECT count(*) FROM events").fetchone()
                gone = self._conn.execute(
                    "DELETE FROM events WHERE eid IN (SELECT eid FROM events WHERE eid <= ? AND eid NOT IN "
                    "(SELECT eid FROM detected) ORDER BY eid LIMIT ?)", (judged, max(count - self.max_rows, 0))).rowcount
                (kept,) = self._conn.execute("SELECT count(*) FROM detected").fetchone()
                gone += self._conn.execute(
                    "DELETE FROM events WHERE eid IN (SELECT eid FROM detected ORDER BY eid LIMIT ?)",
                    (max(kept - self.max_detected, 0),)).rowcount
                gone += self._conn.execute("DELETE FROM events WHERE time < ? AND eid <= ?",
                                           (int(time.time()) - self.max_age_s, judged)).rowcount
                self._conn.execute("DELETE FROM detected WHERE eid NOT IN (SELECT eid FROM events)")
                # Socket events: the same bounds, of their own, sparing those not judged yet.
                sockets_judged = self.socket_cursor.value if self.socket_cursor is not None else 2**62
                (sockets,) = self._conn.execute("SELECT count(*) FROM sockets").fetchone()
                gone += self._conn.execute(
                    "DELETE FROM sockets WHERE eid IN (SELECT eid FROM sockets WHERE eid <= ? ORDER BY eid LIMIT ?)",
                    (sockets_judged, max(sockets - self.max_rows, 0))).rowcount
                gone += self._conn.execute("DELETE FROM sockets WHERE time < ? AND eid <= ?",
                                           (int(time.time()) - self.max_age_s, sockets_judged)).rowcount
            self.evicted += gone
        except sqlite3.Error as exc:
            self.error = f"cannot prune {self.path} ({exc})"

    @contextmanager
    def _conn_tx(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the connection autocommits)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def publish_status(self, status: dict[str, Any]) -> None:
        """Leave the writer's status row beside the store, for readers in other processes
        (`query`, a second extension) to show in network_utility_probe_status."""
        self._status.publish(status)

    # -- reader side -------------------------------------------------------------------
    def writer_pid(self) -> int | None:
        """The pid of the process writing this store, or None when no writer runs."""
        return self._lock.holder()

    def published_status(self) -> dict[str, Any] | None:
        """The status the writer that holds the store now last published; None when no
        writer runs, it has published nothing yet, or the file is an earlier run's (a run
        that died is never shown as live)."""
        return self._status.by(self.writer_pid())

    def select(self, conditions: Sequence[Condition] = (), text: bool = False, table: Table = EXECS) -> list[Row]:
        """The table's rows matching all conditions (each on a schema column, op in OPS),
        eid order, including rows held in memory while the file cannot be written. With
        text=True every value is a string, as osquery's wire carries it (SQLite converts)."""
        where, params = where_sql(table, conditions)
        sql = select_sql(table, where, text)
        with self._read_lock:
            rows = list(dicts(self._reader.execute(sql, params)))
        return rows + self._held_matching(table, conditions, text)

    def stream(self, conditions: Sequence[Condition] = (), text: bool = False,
               columns: Sequence[str] | None = None, table: Table = EXECS) -> "StoredRows":
        """The rows select() returns (of the given columns; with text=True each value as
        osquery's wire carries it, a string, converted by SQLite), read one at a time while they
        are sent: how many there are is known first (counted in the same snapshot), so an
        answer of 100,000 rows never sits in memory whole. Iterate once (or close())."""
        where, params = where_sql(table, conditions)
        sql = select_sql(table, where, text, columns)
        conn = connect(self.path, readonly=True)
        try:
            conn.execute("BEGIN")   # one snapshot for the count, a measure and the rows
            (count,) = conn.execute(f"SELECT count(*) FROM {SQL_NAMES[table.name]}{where}", params).fetchone()
        except BaseException:
            conn.close()
            raise
        held = self._held_matching(table, conditions, text)
        if columns is not None:
            held = [{c: row[c] for c in columns} for row in held]
        return StoredRows(conn, sql, params, count, held, where, table)

    def _held_matching(self, table: Table, conditions: Sequence[Condition], text: bool) -> list[Row]:
        """Held rows (exec rows have their eids; socket rows the ones they will get:
        AUTOINCREMENT continues from the highest ever given), filtered in Python."""
        with self._held_lock:
            held = list(self._held if table is EXECS else self._held_sockets)
        if not held:
            return []
        next_eid = 0
        if table is SOCKETS:
            with self._read_lock:
                found = self._reader.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sockets'").fetchone()
            next_eid = (found[0] if found else 0) + 1
        result = []
        for i, row in enumerate(held):
            if table is SOCKETS:
                row = {"eid": next_eid + i, **row}
            row = {c: row[c] for c in table.names}
            try:
                if all(PY_OPS[op](row[column], value) for column, op, value in conditions):
                    result.append({k: str(v) for k, v in row.items()} if text else row)
            except TypeError:   # a value of another type never matches, as in SQLite
                continue
        return result

    def select_bounds(self) -> tuple[int, int]:
        """(oldest, newest) time of the rows held, 0 when empty."""
        with self._read_lock:
            oldest, newest = self._reader.execute(
                "SELECT coalesce(min(time), 0), coalesce(max(time), 0) FROM events").fetchone()
        return oldest, newest

    def eid_before(self, unix_time: int, table: Table = EXECS) -> int:
        """The highest eid of a row at or before unix_time (0 if none)."""
        with self._read_lock:
            return self._reader.execute(f"SELECT coalesce(max(eid), 0) FROM {SQL_NAMES[table.name]} WHERE time <= ?",
                                        (unix_time,)).fetchone()[0]

    def time_after(self, eid: int, table: Table = EXECS) -> int | None:
        """The time of the first row after eid, or None."""
        with self._read_lock:
            row = self._reader.execute(f"SELECT time FROM {SQL_NAMES[table.name]} WHERE eid > ? ORDER BY eid LIMIT 1",
                                       (eid,)).fetchone()
        return row[0] if row else None

    def stats(self, table: Table = EXECS) -> tuple[int, int, int]:
        """(rows retained, oldest time or 0, highest eid or 0)."""
        with self._read_lock:
            count, oldest, last = self._reader.execute(
                f"SELECT count(*), coalesce(min(time), 0), coalesce(max(eid), 0) FROM {SQL_NAMES[table.name]}"
            ).fetchone()
        return count, oldest, last

