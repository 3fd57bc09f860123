"""The store's SQLite layout: a table per schema table (events, sockets) and their indexes,
made from schema.py, the columns a store written by an older version lacks added, and the
inserts the writer uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from osquery_netutil.schema import EXECS, SOCKETS
from osquery_netutil.store.rows import SQL_NAMES, data_columns

TABLES = (EXECS, SOCKETS)
# Exec rows come with the eid add() gave them; socket rows get theirs from SQLite.
EXEC_COLUMNS = EXECS.names
SOCKET_COLUMNS = data_columns(SOCKETS)
INSERTS = {EXECS.name: f"INSERT INTO events ({', '.join(EXEC_COLUMNS)}) VALUES ({', '.join('?' * len(EXEC_COLUMNS))})",
            SOCKETS.name: f"INSERT INTO sockets ({', '.join(SOCKET_COLUMNS)}) VALUES ({', '.join('?' * len(SOCKET_COLUMNS))})"}
INSERTED = {EXECS.name: EXEC_COLUMNS, SOCKETS.name: SOCKET_COLUMNS}
# The columns a row must bring (checked at every add: made once).
REQUIRED = {table.name: frozenset(data_columns(table)) for table in TABLES}


def ddl() -> list[str]:
    """The tables and indexes of a store. `detected`: the rows a detection reported, which
    outlive the plain ones (Store._prune)."""
    statements = ["CREATE TABLE IF NOT EXISTS detected (eid INTEGER PRIMARY KEY)"]
    for table in TABLES:
        name = SQL_NAMES[table.name]
        cols = ", ".join(
            "eid INTEGER PRIMARY KEY AUTOINCREMENT" if c.name == "eid" else f"{c.name} {c.type} NOT NULL"
            for c in table.columns
        )
        statements.append(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
        for c in table.columns:
            if c.indexed and c.name != "eid":
                statements.append(f"CREATE INDEX IF NOT EXISTS {name}_{c.name} ON {name} ({c.name})")
    return statements


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
    return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0, isolation_level=None)


def prepare(conn: sqlite3.Connection) -> None:
    """Check a writer's connection, set WAL, and create or complete the tables. Raises
    sqlite3.DatabaseError for a file that is not a sound store."""
    if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        raise sqlite3.DatabaseError("quick_check failed")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")   # WAL: a committed batch survives a process kill
    for statement in ddl():
        conn.execute(statement)
    for table in TABLES:
        name = SQL_NAMES[table.name]
        present = {r[1] for r in conn.execute(f"PRAGMA table_info({name})")}   # (cid, name, ...)
        for c in table.columns:   # a store written by an older version: add new columns
            if c.name not in present:
                default = "''" if c.type == "TEXT" else "0"
                conn.execute(f"ALTER TABLE {name} ADD COLUMN {c.name} {c.type} NOT NULL DEFAULT {default}")
