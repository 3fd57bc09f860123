"""The SQLite event store: retention, eids across restarts, one writer, kill -9, safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from osquery_netutil.catalog import Catalog
from osquery_netutil.schema import EXECS, SOCKETS
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.store.errors import StoreBusy, StoreError
from osquery_netutil.store.store import Store

from tests.conftest import probe_unavailable
from testkit.rows import make_row, make_socket_row


def test_rows_are_bounded_by_count_and_age_and_eids_never_repeat(place: Path) -> None:
    path = place / "events.db"
    now = int(time.time())
    with Store(path, max_rows=5, max_age_s=3600) as store:
        store.add(make_row(pid=1, time=now - 7200))           # older than max_age
        store.add_many(make_row(pid=p) for p in range(2, 10))
        store.flush()
        store._prune()
        assert [r["pid"] for r in store.select()] == [5, 6, 7, 8, 9]
        first_eids = [r["eid"] for r in store.select()]
    with Store(path, max_rows=5) as store:               # restart
        store.add(make_row(pid=10))
        store.flush()
        rows = store.select()
        assert rows[-1]["eid"] > max(first_eids)
        assert [r["eid"] for r in rows] == sorted({r["eid"] for r in rows})
    assert (path.stat().st_mode & 0o777) == 0o600


def test_select_uses_the_indexes_for_pushed_down_constraints(place: Path) -> None:
    with Store(place / "events.db") as store:
        store.add_many(make_row(pid=p, utility="netcat" if p % 2 else "curl") for p in range(100))
        store.flush()
        rows = store.select([("pid", ">=", 10), ("pid", "<", 20), ("utility", "=", "netcat")])
        assert [r["pid"] for r in rows] == [11, 13, 15, 17, 19]
        for column in (c.name for c in EXECS.columns if c.indexed):
            plan = store._reader.execute(f"EXPLAIN QUERY PLAN SELECT * FROM events WHERE {column} = ?", (1,)).fetchall()
            assert "USING" in " ".join(str(tuple(p)) for p in plan), (column, plan)
        with pytest.raises(ValueError, match="cannot filter on 'pid; DROP TABLE events'"):
            store.select([("pid; DROP TABLE events", "=", 1)])
        assert store.select([("cmdline", "=", "x'; DROP TABLE events; --")]) == []
        assert store.stats()[0] == 100


def test_a_stream_counts_and_reads_one_snapshot_while_the_writer_goes_on(place: Path) -> None:
    with Store(place / "events.db") as store:
        store.add_many(make_row(pid=p) for p in range(1000))
        store.flush()
        rows = store.stream([("pid", ">=", 10)], text=True)
        assert len(rows) == 990
        store.add_many(make_row(pid=p) for p in range(1000, 1100))   # after the snapshot: not in it
        store.flush()
        read = list(rows)
        assert len(read) == 990 and read[0]["pid"] == "10" and read[-1]["pid"] == "999"
        assert read == store.select([("pid", ">=", 10), ("pid", "<", 1000)], text=True)
        with pytest.raises(RuntimeError, match="read already"):
            list(rows)
        unread = store.stream()
        assert len(unread) == 1100
        unread.close()   # an answer never sent releases its snapshot too
        with pytest.raises(RuntimeError, match="read already"):
            list(unread)


def test_one_writer_and_any_number_of_readers(place: Path) -> None:
    path = place / "events.db"
    with Store(path) as writer:
        with pytest.raises(StoreBusy, match=f"pid {os.getpid()}.*osquery-netutil query"):
            Store(path)
        writer.add(make_row(pid=42))
        writer.flush()
        with Store(path, readonly=True) as reader:
            assert [r["pid"] for r in reader.select()] == [42]
            writer.add(make_row(pid=43))
            writer.flush()
            assert [r["pid"] for r in reader.select()] == [42, 43]
    with pytest.raises(StoreError, match="no store here yet"):
        Store(place / "missing.db", readonly=True)


def test_unsafe_files_are_refused(place: Path) -> None:
    shared = place / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(StoreError, match="world-writable"):
        Store(shared / "events.db")
    path = place / "events.db"
    Store(path).close()
    path.chmod(0o666)
    with pytest.raises(StoreError, match="chmod go-w"):
        Store(path)
    path.chmod(0o600)
    link = place / "link.db"
    link.symlink_to(path)
    with pytest.raises(StoreError, match="symlink"):
        Store(link)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        with pytest.raises(StoreError, match="not root"):
            Store(path)


def test_a_corrupt_store_is_moved_aside_and_replaced(place: Path) -> None:
    path = place / "events.db"
    path.write_bytes(b"this is not a database" * 100)
    path.chmod(0o600)
    with Store(path) as store:
        assert "moved aside" in store.recovered
        store.add(make_row(pid=1))
        store.flush()
        assert store.stats()[0] == 1
    assert list(place.glob("events.db.corrupt-*"))


WRITER = textwrap.dedent(
    """
    import sys, time
    from osquery_netutil.store.store import Store
    from testkit.rows import make_row, make_socket_row
    store = Store(sys.argv[1])
    for i in range(1, 100000):
        store.add(make_row(pid=i))
        print(i, flush=True)
        time.sleep(0.005)
    """
)


def test_kill_9_loses_at_most_the_last_second(place: Path) -> None:
    path = place / "events.db"
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=root, text=True)
    times: dict[int, float] = {}
    deadline = time.monotonic() + 20
    while len(times) < 300 and time.monotonic() < deadline:   # about 1.5 s of rows
        times[int(writer.stdout.readline())] = time.monotonic()
    writer.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    writer.wait(timeout=10)
    assert len(times) >= 300, "the writer did not produce rows"
    with Store(path) as store:   # the next run takes over the store
        stored = [r["pid"] for r in store.select()]
        assert stored == list(range(1, len(stored) + 1)), "rows lost in the middle or duplicated"
        lost = [i for i in times if i > len(stored)]
        assert all(killed_at - times[i] <= 1.0 for i in lost), f"lost rows older than 1 s: {len(lost)}"
        last_eid = store.stats()[2]
        store.add(make_row(pid=-1))
        store.flush()
        assert store.select([("pid", "=", -1)])[0]["eid"] > last_eid


def test_range_queries_use_their_index_not_an_eid_scan(place: Path) -> None:
    with Store(place / "events.db") as store:
        executed: list[str] = []
        store._reader.set_trace_callback(executed.append)
        for column, op in (("time", ">"), ("pid", "<="), ("utility", "=")):
            store.select([(column, op, 1)])
            plan = " ".join(str(p) for p in store._reader.execute(f"EXPLAIN QUERY PLAN {executed[-1]}"))
            assert f"USING INDEX events_{column}" in plan, plan


def test_a_full_disk_keeps_rows_in_memory_and_recovers(place: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = place / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], check=True)
    mine = [("utility", "=", "")]   # the rows this test adds (a running sensor may add others)
    try:
        with Store(mount / "events.db", flush_s=0.1) as store:
            store.add(make_row(pid=1))
            store.flush()
            filler = mount / "filler"
            with open(filler, "wb") as f:   # fill the disk
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            store.add_many(make_row(pid=p, cmdline="x" * 2000) for p in range(2, 200))
            store.flush()
            assert "rows held in memory" in store.error and "full" in store.error
            rows = store.select([*mine, ("pid", ">=", 150)])
            assert [r["pid"] for r in rows] == list(range(150, 200))     # served from memory
            eids = [r["eid"] for r in store.select(mine)]
            assert eids == sorted(set(eids))
            if probe_unavailable() is None:   # the status row of a running sensor says so
                sensor = Sensor(Catalog.load(), store)
                sensor.start()
                try:
                    status = sensor.status()
                finally:
                    sensor.stop()
                assert status["state"] == "degraded" and "rows held in memory" in status["error"], status
            filler.unlink()                                                # space returns
            store.add(make_row(pid=200))
            store.flush()
            assert store.error == ""
            after = store.select(mine)
            assert [r["pid"] for r in after] == list(range(1, 201))
            assert [r["eid"] for r in after][:len(eids)] == eids           # the eids shown did not change
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_storm_cannot_evict_rows_not_judged_yet_and_reported_rows_outlive_plain_ones(place: Path) -> None:
    with Store(place / "events.db", max_rows=100, judged_by_cursor=True) as store:
        assert store.cursor is not None
        store.cursor.advance(150)                # the judge is behind: rows 151-300 wait
        store.mark_detected([3, 5, 7])           # three early rows a detection reported
        store.add_many(make_row(pid=p) for p in range(1, 301))
        store.flush()
        store._prune()
        eids = [r["eid"] for r in store.select()]
        assert set(range(151, 301)) <= set(eids)   # nothing unjudged evicted, though over max_rows
        assert {3, 5, 7} <= set(eids) and not set(range(8, 151)) & set(eids)
        assert store.evicted == 150 - 3
        store.cursor.advance(300)                # caught up: back to max_rows, reported rows kept
        store._prune()
        eids = [r["eid"] for r in store.select()]
        assert len(eids) == 100 and {3, 5, 7} <= set(eids) and eids[-1] == 300
        store.max_detected = 1                   # the reported rows have their own cap
        store._prune()
        assert [e for e in (3, 5, 7) if e in {r["eid"] for r in store.select()}] == [7]


def test_socket_events_name_an_exec_eid_given_before_it_is_written_and_are_bounded_apart(place: Path) -> None:
    """add() gives an exec row its eid at once (the socket events of its process name it
    before the batch is written), continuing the sequence across restarts; the socket
    events have their own bounds and their own cursor."""
    with Store(place / "events.db", max_rows=100, judged_by_cursor=True) as store:
        first = store.add(make_row(cmdline="nc a"))
        assert (first, store.add(make_row(cmdline="nc b"))) == (1, 2)
        assert store.cursor is not None and store.socket_cursor is not None
        for i in range(150):
            store.add_socket(make_socket_row(exec_eid=first, remote_port=i))
        store.flush()
        assert [r["eid"] for r in store.select()] == [1, 2]
        events = store.select([("exec_eid", "=", first)], table=SOCKETS)
        assert len(events) == 150 and events[0]["remote_port"] == 0   # none judged yet: none evicted
        store.socket_cursor.advance(150)
        store._prune()   # noqa: SLF001 (eviction runs every few seconds)
        assert [r["remote_port"] for r in store.select(table=SOCKETS)] == list(range(50, 150))
        assert len(store.select()) == 2   # the execs' bound is their own
    with Store(place / "events.db") as store:
        assert store.add(make_row(cmdline="nc c")) == 3
