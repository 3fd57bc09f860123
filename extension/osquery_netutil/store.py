"""The event store: rows of network_utility_execs in a local SQLite file.

One writer (the extension or `watch`) appends rows through a background thread that
commits a batch at least every `flush_s` seconds, so a `kill -9` loses at most that much.
WAL mode lets any number of readers (`query`, a second extension) read while it writes.
`eid` is an AUTOINCREMENT key: strictly increasing and never reused, across restarts and
pruning. Rows are bounded by count and by age.

The file holds command lines of everything the host ran, so it is created 0600 in a
root-only directory, and a file or directory that others could write is refused
(safety.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import operator
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import faults, safety
from .schema import EXECS

DEFAULT_PATH = Path("/var/osquery/netutil_events.db")
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_AGE_S = 24 * 3600
FLUSH_S = 0.5
_PRUNE_EVERY_S = 5.0

OPS = ("=", "<", "<=", ">", ">=")
_PY_OPS = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
Row = dict[str, Any]
Condition = tuple[str, str, Any]   # (column, one of OPS, value)

_COLUMNS = EXECS.names
_DATA_COLUMNS = tuple(c for c in _COLUMNS if c != "eid")
_DATA_SET = frozenset(_DATA_COLUMNS)
_AS_TEXT = {c.name: c.name if c.type == "TEXT" else f"CAST({c.name} AS TEXT) AS {c.name}" for c in EXECS.columns}
_INSERT = f"INSERT INTO events ({', '.join(_DATA_COLUMNS)}) VALUES ({', '.join('?' * len(_DATA_COLUMNS))})"


def _dicts(cursor: sqlite3.Cursor) -> Iterator[Row]:
    """A cursor's rows as dicts keyed by column name."""
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, values)) for values in cursor)


def _where_sql(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    """The WHERE clause ('' for none) of the rows matching all conditions, and its parameters."""
    where, params = [], []
    for column, op, value in conditions:
        if column not in _COLUMNS or op not in OPS:
            raise ValueError(f"cannot filter on {column!r} {op!r}: columns are {', '.join(_COLUMNS)}; ops {OPS}")
        where.append(f"{column} {op} ?")
        params.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def _select_sql(where: str, text: bool, columns: Sequence[str] | None = None) -> str:
    """SELECT of the rows a _where_sql clause matches, in eid order: of the given columns
    (all by default), with text=True each as text."""
    named = list(columns) if columns is not None else list(_COLUMNS)
    unknown = [c for c in named if c not in _AS_TEXT]
    if unknown:
        raise ValueError(f"no column {unknown[0]!r}: columns are {', '.join(_COLUMNS)}")
    selected = ", ".join(_AS_TEXT[c] if text else c for c in named) if columns is not None or text else "*"
    # "+eid": order the matches, but let SQLite pick the index for the WHERE clause
    # (a plain ORDER BY eid makes it scan the whole table in eid order instead).
    return f"SELECT {selected} FROM events{where} ORDER BY {'+eid' if where else 'eid'}"


class StoredRows:
    """The answer of Store.stream(): len() before the first row is read, then the rows
    one by one from an open read snapshot, which is released when they are all read,
    on close(), or when the object is dropped."""

    def __init__(self, conn: sqlite3.Connection, sql: str, params: list[Any], count: int, held: list[Row],
                 where: str = "") -> None:
        self._conn: sqlite3.Connection | None = conn
        self._sql, self._params, self._where = sql, params, where
        self._count = count
        self.held = held   # rows not yet written to the file (they follow the stored ones)

    def __len__(self) -> int:
        return self._count + len(self.held)

    def measure(self, expression: str) -> int:
        """The sum of an SQL expression over the stored rows of the answer, in its snapshot
        (before they are read)."""
        if self._conn is None:
            raise RuntimeError("these stored rows were read already")
        return self._conn.execute(f"SELECT coalesce(sum({expression}), 0) FROM events{self._where}",
                                  self._params).fetchone()[0]

    def __iter__(self) -> Iterator[Row]:
        conn = self._conn
        if conn is None:
            raise RuntimeError("these stored rows were read already")
        self._conn = None
        try:
            yield from _dicts(conn.execute(self._sql, self._params))
        finally:
            conn.close()
        yield from self.held

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    __del__ = close


@functools.cache
def boot_id() -> str:
    """This boot's id (a random UUID the kernel draws at boot): read once, it cannot change."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class StoreError(RuntimeError):
    """The store cannot be used. The message names the file, the cause and the fix."""


class StoreMissing(StoreError):
    """No store at the path yet (nothing was collected there): not a fault for a reader."""


class StoreBusy(StoreError):
    """Another process is the writer of this store."""


def _ddl() -> list[str]:
    cols = ", ".join(
        "eid INTEGER PRIMARY KEY AUTOINCREMENT" if c.name == "eid" else f"{c.name} {c.type} NOT NULL"
        for c in EXECS.columns
    )
    statements = [f"CREATE TABLE IF NOT EXISTS events ({cols})",
                  # Rows a detection reported: they outlive the plain ones (Store._prune).
                  "CREATE TABLE IF NOT EXISTS detected (eid INTEGER PRIMARY KEY)"]
    for c in EXECS.columns:
        if c.indexed and c.name != "eid":
            statements.append(f"CREATE INDEX IF NOT EXISTS events_{c.name} ON events ({c.name})")
    return statements


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0, isolation_level=None)


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
    ) -> None:
        if max_rows < 1 or max_age_s < 1:
            raise StoreError(f"retention must be positive (max_rows={max_rows}, max_age_s={max_age_s})")
        self.path = Path(path)
        # Eviction spares what the detections still need: rows after the last judged eid
        # (set by watch's judge; None: every row has been judged, as under osquery), and,
        # up to their own cap, rows a detection reported (mark_detected).
        self.judged_upto: Callable[[], int] | None = None
        self.max_detected = max(max_rows // 10, 1)
        self.evicted = 0
        self._marks: list[int] = []
        self.readonly = readonly
        self.max_rows, self.max_age_s, self.flush_s = max_rows, max_age_s, flush_s
        self.error = ""            # last write error, '' when writes succeed
        self.recovered = ""        # why the file was replaced at open, if it was
        self._lock_fd: int | None = None
        self.previous_run: dict[str, Any] | None = None   # the writer before this one, this boot
        # Rows to write, swapped out whole by the writer: appending is all the probe's thread
        # pays per row (a queue.Queue costs it two lock round trips per row, and starves
        # under load).
        self._incoming: list[Row] = []
        self._flushes: list[threading.Event] = []
        self._closing = False
        self._wake = threading.Condition()
        self._writer: threading.Thread | None = None
        self._read_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._held: list[Row] = []          # rows the file could not take (disk full)
        self._held_lock = threading.Lock()
        try:
            safety.check(self.path, "store file", directory=True)
        except safety.UnsafeFile as exc:
            raise StoreError(str(exc)) from None
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreMissing(f"{self.path}: no store here yet: start 'osquery-netutil watch' or the extension first")
                self._reader = _connect(self.path, readonly=True)
                self._reader.execute("SELECT eid FROM events LIMIT 1")
                return
            self._take_writer_lock()
            self._open_for_writing()
            self._reader = _connect(self.path, readonly=True)
        except (OSError, sqlite3.Error) as exc:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            raise StoreError(f"{self.path}: cannot open the store ({faults.cause(exc)}): {faults.fix(exc)}") from exc
        self._writer = threading.Thread(target=self._write_loop, name="netutil-store", daemon=True)
        self._writer.start()

    # -- writer side -------------------------------------------------------------------
    def _take_writer_lock(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreBusy(
                f"{self.path}: another osquery-netutil (pid {holder}) is writing this store: "
                "read it with 'osquery-netutil query', or give this one another --store"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)   # a full disk: give the lock back, or this process would keep it
            raise
        self._lock_fd = fd
        # The status an earlier run left describes that run, never this one: kept only as
        # the previous run of this boot (how it ended tells a restart from a kill), then gone.
        self.previous_run = self._previous_run()
        with contextlib.suppress(FileNotFoundError):
            self._status_path.unlink()

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
        conn = _connect(self.path, readonly=False)
        try:
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")   # WAL: a committed batch survives a process kill
            for statement in _ddl():
                conn.execute(statement)
            present = {r[1] for r in conn.execute("PRAGMA table_info(events)")}   # (cid, name, ...)
            for c in EXECS.columns:   # a store written by an older version: add new columns
                if c.name not in present:
                    default = "''" if c.type == "TEXT" else "0"
                    conn.execute(f"ALTER TABLE events ADD COLUMN {c.name} {c.type} NOT NULL DEFAULT {default}")
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def add(self, row: Row) -> None:
        """Queue a row (every column but eid); it is committed within flush_s."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only: rows cannot be added")
        missing = _DATA_SET - row.keys()
        if missing:
            raise ValueError(f"row lacks columns {sorted(missing)}")
        with self._wake:
            self._incoming.append(row)

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
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_loop(self) -> None:
        pending: list[Row] = []   # rows the file could not take yet (held, see _commit)
        last_prune = 0.0
        stopping = False
        while not stopping:
            with self._wake:
                if not (self._flushes or self._closing):
                    self._wake.wait(self.flush_s)
                batch, self._incoming = self._incoming, []
                marks, self._marks = self._marks, []
                waiters, self._flushes = self._flushes, []
                stopping = self._closing
            if pending or batch:
                pending = self._commit(pending + batch)
            if marks:
                self._mark(marks)
            if time.monotonic() - last_prune > _PRUNE_EVERY_S or stopping:
                self._prune()
                last_prune = time.monotonic()
            for w in waiters:
                w.set()

    def _commit(self, rows: list[Row]) -> list[Row]:
        """Insert rows in one transaction. On failure (a full disk, say) keep them, the
        newest max_rows, in memory: select() still serves them and the next commit
        retries. Returns the rows still to write."""
        try:
            with self._conn_tx():
                self._conn.executemany(_INSERT, [tuple(r[c] for c in _DATA_COLUMNS) for r in rows])
        except sqlite3.Error as exc:
            held = rows[-self.max_rows:]
            self.error = f"cannot write {self.path} ({exc}): {len(held)} rows held in memory until it can"
            with self._held_lock:
                self._held = held
            return held
        self.error = ""
        with self._held_lock:
            self._held = []
        return []

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
        judged = self.judged_upto() if self.judged_upto is not None else 2**62
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

    def _signed_status(self) -> dict[str, Any] | None:
        """The status file as published ({writer_pid, boot_id, status}), or None."""
        try:
            signed = json.loads(self._status_path.read_text())
        except (OSError, ValueError):
            return None
        return signed if isinstance(signed, dict) and isinstance(signed.get("status"), dict) else None

    def _previous_run(self) -> dict[str, Any] | None:
        """The last status the previous writer of this store published, if it ran since
        this boot (a status from before a reboot is no restart)."""
        signed = self._signed_status()
        if signed is None or signed.get("boot_id") != boot_id():
            return None
        return {**signed["status"], "pid": signed.get("writer_pid")}

    def publish_status(self, status: dict[str, Any]) -> None:
        """Leave the writer's status row beside the store, for readers in other processes
        (`query`, a second extension) to show in network_utility_probe_status. It is
        signed with the writer's pid, which readers compare with the lock's holder."""
        tmp = self._status_path.with_name(self._status_path.name + ".tmp")
        with self._publish_lock:   # the extension publishes from its attach and its timer threads
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"writer_pid": os.getpid(), "boot_id": boot_id(), "status": status}, f)
            os.replace(tmp, self._status_path)

    # -- reader side -------------------------------------------------------------------
    @property
    def _status_path(self) -> Path:
        return self.path.with_name(self.path.name + ".status")

    def writer_pid(self) -> int | None:
        """The pid of the process writing this store, or None when no writer runs."""
        if self._lock_fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None   # nobody holds the writer's lock
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)

    def published_status(self) -> dict[str, Any] | None:
        """The status the writer that holds the store now last published; None when no
        writer runs, it has published nothing yet, or the file is an earlier run's (a run
        that died is never shown as live)."""
        writer = self.writer_pid()
        signed = self._signed_status() if writer is not None else None
        return signed["status"] if signed is not None and signed.get("writer_pid") == writer else None

    def select(self, conditions: Sequence[Condition] = (), text: bool = False) -> list[Row]:
        """Rows matching all conditions (each on a schema column, op in OPS), eid order,
        including rows held in memory while the file cannot be written. With text=True
        every value is a string, as osquery rows are (SQLite converts)."""
        where, params = _where_sql(conditions)
        sql = _select_sql(where, text)
        with self._read_lock:
            rows = list(_dicts(self._reader.execute(sql, params)))
        return rows + self._held_matching(conditions, text) if self._held else rows

    def stream(self, conditions: Sequence[Condition] = (), text: bool = False,
               columns: Sequence[str] | None = None) -> "StoredRows":
        """The rows select() returns (of the given columns), read one at a time while they
        are sent: how many there are is known first (counted in the same snapshot), so an
        answer of 100,000 rows never sits in memory whole. Iterate once (or close())."""
        where, params = _where_sql(conditions)
        sql = _select_sql(where, text, columns)
        conn = _connect(self.path, readonly=True)
        try:
            conn.execute("BEGIN")   # one snapshot for the count, a measure and the rows
            (count,) = conn.execute(f"SELECT count(*) FROM events{where}", params).fetchone()
        except BaseException:
            conn.close()
            raise
        held = self._held_matching(conditions, text) if self._held else []
        if columns is not None:
            held = [{c: row[c] for c in columns} for row in held]
        return StoredRows(conn, sql, params, count, held, where)

    def _held_matching(self, conditions: Sequence[Condition], text: bool) -> list[Row]:
        """Held rows with the eids they will get (AUTOINCREMENT continues from the highest
        ever given), filtered in Python."""
        with self._held_lock:
            held = list(self._held)
        with self._read_lock:
            found = self._reader.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        next_eid = (found[0] if found else 0) + 1
        result = []
        for i, row in enumerate(held):
            row = {"eid": next_eid + i, **row}
            try:
                if all(_PY_OPS[op](row[column], value) for column, op, value in conditions):
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

    def eid_before(self, unix_time: int) -> int:
        """The highest eid of a row at or before unix_time (0 if none)."""
        with self._read_lock:
            return self._reader.execute("SELECT coalesce(max(eid), 0) FROM events WHERE time <= ?", (unix_time,)).fetchone()[0]

    def time_after(self, eid: int) -> int | None:
        """The time of the first row after eid, or None."""
        with self._read_lock:
            row = self._reader.execute("SELECT time FROM events WHERE eid > ? ORDER BY eid LIMIT 1", (eid,)).fetchone()
        return row[0] if row else None

    def stats(self) -> tuple[int, int, int]:
        """(rows retained, oldest time or 0, highest eid or 0)."""
        with self._read_lock:
            count, oldest, last = self._reader.execute(
                "SELECT count(*), coalesce(min(time), 0), coalesce(max(eid), 0) FROM events"
            ).fetchone()
        return count, oldest, last

