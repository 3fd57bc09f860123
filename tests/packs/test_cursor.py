"""watch judges every stored row exactly once, in eid order, whatever the rate: a cursor on
eid, not a time window, kept beside the store so that a restart resumes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from osquery_netutil.packs import source as packs, runner
from osquery_netutil.host.database import Host
from osquery_netutil.packs.runner import PackRunner
from osquery_netutil.store.cursor import Cursor
from osquery_netutil.store.store import Store
from osquery_netutil.schema import SOCKETS
from osquery_netutil.tables.plugins import ExecsTable, SocketsTable, stored_tables

from testkit.rows import make_row, make_socket_row


def _cursor(store: Store, path: Path) -> Cursor:
    return Cursor(path, lambda: store.stats()[2], store.eid_before, store.time_after)


def _judge(store: Store, cursor: Cursor, rounds: int = 100) -> tuple[list[int], list[dict[str, int]]]:
    """eids reported by every_execution, round after round until nothing waits."""
    (query,) = [q for q in packs.load_each(by_cursor=True)[0] if q.name == "netutil_every_execution"]
    run = PackRunner(Host(stored_tables(lambda: store)), [query], cursor=cursor)
    eids, progress = [], []
    for _ in range(rounds):
        lines, errors = run.run_due()
        assert errors == []
        eids += [r.rows[0]["eid"] for r in lines]
        progress.append(cursor.progress())
        if progress[-1]["judge_backlog"] == 0:
            break
    return eids, progress


def test_every_row_is_judged_once_in_order_however_far_behind_and_a_restart_resumes(
        place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "ROUND_BUDGET_S", 0.0)   # one batch a round: a round that falls behind
    now = int(time.time())
    with Store(place / "events.db", max_rows=100_000) as store:
        store.add_many(make_row(time=now - 3600, utility="netcat", cmdline="nc old", ancestors="[]") for _ in range(50))
        store.add_many(make_row(time=now, utility="netcat", cmdline=f"nc row{i}", ancestors="[]") for i in range(5000))
        store.flush()
        mark = place / "events.db.judged"
        cursor = _cursor(store, mark)
        assert cursor.value == 50   # a first start judges the last minute, not the history
        eids, progress = _judge(store, cursor)
        assert eids == list(range(51, 5051))   # each row once, in eid order
        assert progress[0]["judge_backlog"] == 5000 - runner.BATCH_ROWS and progress[0]["judge_delay_s"] <= 5
        assert len(progress) == -(-5000 // runner.BATCH_ROWS) and progress[-1] == {"judge_backlog": 0, "judge_delay_s": 0}
        assert mark.read_text().strip() == "5050"
        # A restart reads the mark: the rows stored meanwhile are judged, and only they.
        store.add_many(make_row(time=now, utility="netcat", cmdline=f"nc late{i}", ancestors="[]") for i in range(30))
        store.flush()
        eids, _ = _judge(store, _cursor(store, mark))
        assert eids == list(range(5051, 5081))


def test_a_mark_beyond_the_store_is_not_trusted(place: Path) -> None:
    """A store replaced since (moved aside when corrupt) has fewer eids: judge from the
    last minute again rather than skip what is new."""
    with Store(place / "events.db") as store:
        store.add_many(make_row(utility="netcat", cmdline=f"nc {i}") for i in range(3))
        store.flush()
        (place / "events.db.judged").write_text("999\n")
        assert _cursor(store, place / "events.db.judged").value == 0


class _Flaky(ExecsTable):
    """The real table, failing while `broken` is set (a store that cannot be read)."""

    broken = True

    def generate(self, context):
        if self.broken:
            raise OSError("disk I/O error")
        return super().generate(context)


def test_a_batch_that_cannot_be_read_is_reported_once_and_judged_when_it_can(place: Path) -> None:
    with Store(place / "events.db") as store:
        store.add_many(make_row(utility="netcat", cmdline=f"nc {i}", ancestors="[]") for i in range(3))
        store.flush()
        cursor = _cursor(store, place / "events.db.judged")
        table = _Flaky(lambda: store)
        (query,) = [q for q in packs.load_each(by_cursor=True)[0] if q.name == "netutil_every_execution"]
        run = PackRunner(Host([table, SocketsTable(lambda: store)]), [query], cursor=cursor)
        first, second = run.run_due(), run.run_due(time.time() + 5)
        assert first[0] == [] and len(first[1]) == 1 and "disk I/O error" in first[1][0] and "after eid 0" in first[1][0]
        assert second == ([], [])   # still failing: not reported again, nothing skipped
        assert cursor.value == 0
        table.broken = False
        lines, errors = run.run_due(time.time() + 10)
        assert errors == [] and [r.rows[0]["cmdline"] for r in lines] == ["nc 0", "nc 1", "nc 2"]
        assert cursor.value == 3


def test_socket_detections_judge_each_socket_event_once_by_their_own_cursor(place: Path) -> None:
    """A detection of socket events reads {{recent_sockets}}: in plain watch, the events after
    the socket cursor, each once, whatever the exec cursor says; the exec row it names is
    joined whenever it was judged."""
    (query,) = [q for q in packs.load_each(by_cursor=True)[0] if q.name == "netutil_contacted_public_destination"]
    assert query.judged == SOCKETS.name
    origin = '{"pid": 7, "path": "/tmp/x.sh", "cmdline": "/tmp/x.sh", "uid": 0, "time": 1}'
    with Store(place / "events.db", judged_by_cursor=True) as store:
        assert store.cursor is not None and store.socket_cursor is not None
        run = PackRunner(Host(stored_tables(lambda: store)), [query], cursor=store.cursor, socket_cursor=store.socket_cursor)
        curl = store.add(make_row(utility="curl", cmdline="curl http://c2.example.com/", origin=origin))
        store.flush()
        assert run.run_due()[0] == []   # the exec's events have not come yet
        for port in (443, 8443):
            store.add_socket(make_socket_row(exec_eid=curl, remote_address="45.9.148.3", remote_port=port, remote_public=1,
                                             status="succeeded", origin=origin, comm="curl", path="/usr/bin/curl"))
        store.flush()
        found, errors = run.run_due()
        assert errors == [] and [r.rows[0]["remote_port"] for r in found] == [443, 8443]
        assert all("curl http://c2.example.com/" in r.rows[0]["message"] for r in found)
        assert run.run_due()[0] == [] and store.socket_cursor.value == 2 and store.cursor.value == 1


def test_watch_judges_an_exec_once_its_socket_events_have_come_and_its_line_names_them(place: Path) -> None:
    """With settle_s, an exec row is judged once it is that old (its socket events are
    stored by then), and the detection's line says what the process contacted; at stop
    (settle 0) every row is judged."""
    (query,) = [q for q in packs.load_each(by_cursor=True)[0] if q.name == "netutil_host_suspicious_location"]
    chain = '[{"pid": 7, "path": "/tmp/.x/run.sh", "cmdline": "/bin/sh /tmp/.x/run.sh", "uid": 0}]'
    now = int(time.time())
    with Store(place / "events.db", judged_by_cursor=True, settle_s=5) as store:
        assert store.cursor is not None
        run = PackRunner(Host(stored_tables(lambda: store)), [query], cursor=store.cursor, socket_cursor=store.socket_cursor)
        old = store.add(make_row(time=now - 10, utility="curl", path="/usr/bin/curl", cmdline="curl -s http://c2.example.com/",
                                 ancestors=chain))
        young = store.add(make_row(time=now, utility="curl", path="/usr/bin/curl", cmdline="curl -s http://young.example/",
                                   ancestors=chain))
        store.add_socket(make_socket_row(exec_eid=old, time=now - 10, remote_address="45.9.148.3", remote_port=443,
                                         status="succeeded"))
        store.add_socket(make_socket_row(exec_eid=old, time=now - 9, action="dns_query", remote_address="127.0.0.53",
                                         remote_port=53, dns_name="c2.example.com", dns_type="A"))
        store.flush()
        (found,), errors = run.run_due()
        assert errors == [] and found.rows[0]["eid"] == old
        assert found.rows[0]["message"].endswith("; contacted 45.9.148.3:443 (asked c2.example.com)")
        assert (found.rows[0]["contacted"], found.rows[0]["asked"]) == ("45.9.148.3:443", "c2.example.com")
        assert run.run_due()[0] == [] and store.cursor.value == old   # the young row waits
        store.cursor.settle_s = 0
        (last,), _ = run.run_due()
        assert last.rows[0]["eid"] == young and last.rows[0]["contacted"] == "" and "contacted" not in last.rows[0]["message"]


def test_a_scheduled_run_judges_an_exec_once_settled_and_its_line_stays_as_later_events_come(place: Path) -> None:
    """As osquery schedules it (a window, differential results): an exec row younger than
    twice SETTLED_S is not judged yet, and the line of a settled one names what its process
    contacted in its first SETTLED_S seconds only, so that a later connect does not change
    the row (osquery would log the exec again as added)."""
    (query,) = [q for q in packs.load() if q.name == "netutil_host_suspicious_location"]
    chain = '[{"pid": 7, "path": "/tmp/.x/run.sh", "cmdline": "/bin/sh /tmp/.x/run.sh", "uid": 0}]'
    now = int(time.time())
    with Store(place / "events.db") as store:
        host = Host(stored_tables(lambda: store))
        settled = store.add(make_row(time=now - 30, utility="curl", path="/usr/bin/curl", cmdline="curl -s http://c2.example/",
                                     ancestors=chain))
        store.add(make_row(time=now - 1, utility="curl", path="/usr/bin/curl", cmdline="curl -s http://young.example/",
                           ancestors=chain))
        store.add_socket(make_socket_row(exec_eid=settled, time=now - 29, remote_address="45.9.148.3", remote_port=443,
                                         status="succeeded"))
        store.flush()
        columns, first = host.query(query.sql)
        assert [dict(zip(columns, row))["eid"] for row in first] == [settled]   # the young one waits
        assert str(first[0][columns.index("message")]).endswith("; contacted 45.9.148.3:443")
        store.add_socket(make_socket_row(exec_eid=settled, time=now - 3, remote_address="198.51.100.7", remote_port=22,
                                         status="succeeded"))
        store.flush()
        assert host.query(query.sql)[1] == first


def test_the_exec_rows_of_socket_events_are_read_as_one_recent_range_and_old_ones_by_eid(place: Path) -> None:
    """A backdoor tracked for hours (an old eid) and a new curl both contact public
    addresses: the detection names both execs, and reads the execs table as the range of
    the new eids plus the old one by itself, not every exec made in between."""
    (query,) = [q for q in packs.load() if q.name == "netutil_contacted_public_destination"]
    now = int(time.time())
    origin = '{"pid": 7, "path": "/tmp/.x/run.sh", "script": "", "time": 1}'
    served: list[int] = []

    class CountingExecs(ExecsTable):
        def answer(self, context: dict[str, Any]) -> Any:
            rows = list(super().answer(context))
            served.append(len(rows))
            return rows

    with Store(place / "events.db") as store:
        old = store.add(make_row(time=now - 7200, utility="netcat", path="/usr/bin/nc", cmdline="nc -lp 4444"))
        for i in range(6000):
            store.add(make_row(time=now - 100, utility="curl", path="/usr/bin/curl", cmdline=f"curl -s http://127.0.0.1/{i}"))
        new = store.add(make_row(time=now - 50, utility="curl", path="/usr/bin/curl", cmdline="curl -s http://c2.example/"))
        for eid, address in ((old, "45.9.148.3"), (new, "45.9.148.4")):
            store.add_socket(make_socket_row(exec_eid=eid, time=now - 40, remote_address=address, remote_port=443,
                                             status="succeeded", remote_public=1, origin=origin))
        store.flush()
        host = Host([CountingExecs(lambda: store), SocketsTable(lambda: store)])
        columns, found = host.query(query.sql)
    assert sorted((row[columns.index("exec_eid")], row[columns.index("cmdline")]) for row in found) == \
        [(old, "nc -lp 4444"), (new, "curl -s http://c2.example/")]
    assert sum(served) == 2, served
