"""The osquery extension over the real thrift protocol: launched as osquery launches it
(the built .ext file), registered with an in-test extension manager, queried with
osquery's call() and context JSON, op codes included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Iterator

import pytest
from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from osquery_netutil.app.extension import parse_args
from osquery_netutil.tables.thrift import Handler, Processor, write_call_result
from osquery_netutil.host.database import Host
from osquery_netutil.schema import EXECS, SOCKETS, STATUS
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import OP_EQUALS, OP_GE, OP_GT, OP_LT, ExecsTable, columns_used, osqueryd_bytes, stored_peak

from tests.conftest import need, probe_unavailable
from testkit.manager import Manager, RemoteTable, context
from testkit.support import HttpServer, write_executable
from testkit.rows import make_row

@pytest.fixture
def manager(place: Path) -> Iterator[Manager]:
    with Manager(place / "osquery.em") as m:
        yield m


def status_row(manager: Manager, uuid: int) -> dict[str, str]:
    (row,) = manager.generate(uuid, STATUS)
    return row


def wait_state(manager: Manager, uuid: int, states: set[str], timeout: float = 20.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        row = status_row(manager, uuid)
        if row["state"] in states or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


def stop(proc: subprocess.Popen, manager: Manager) -> str:
    manager.stop()                      # osquery goes away: the extension must notice and exit
    try:
        proc.wait(timeout=15)
    finally:
        proc.kill()
    return proc.stderr.read()


def test_registers_every_table_with_the_schema(ext_file: str, manager: Manager, place: Path) -> None:
    proc = manager.launch(ext_file, "--store", str(place / "events.db"))
    try:
        uuid = manager.wait_registered("netutil")
        info, registry = manager.registered[uuid]
        assert set(registry["table"]) == {EXECS.name, SOCKETS.name, STATUS.name}
        for table in (EXECS, SOCKETS, STATUS):
            routes = registry["table"][table.name]
            assert [(r["name"], r["type"]) for r in routes] == [(c.name, c.type) for c in table.columns]
            response = manager.call_table(uuid, table.name, {"action": "columns"})
            assert response.status.code == 0 and response.response == routes
        assert manager.call_table(uuid, EXECS.name, {"action": "drop"}).status.code == 1
        assert manager.call_table(uuid, "processes", {"action": "generate"}).status.code == 1
        # A second extension of the same name is refused by osquery; this one stays up.
        assert manager.launch(ext_file, "--store", str(place / "other.db")).wait(timeout=20) == 1
        assert status_row(manager, uuid)["version"] == info.version
    finally:
        err = stop(proc, manager)
    assert proc.returncode == 0, err
    assert "osquery is gone" in err and "flushing the store" in err


def test_a_tmp_script_running_nc_becomes_a_row_over_thrift(ext_file: str, manager: Manager, place: Path, workdir: Path) -> None:
    need(probe_unavailable())
    store = place / "events.db"
    proc = manager.launch(ext_file, "--store", str(store), "--some-future-osquery-flag")
    try:
        uuid = manager.wait_registered("netutil")
        status = wait_state(manager, uuid, {"running", "degraded", "failed"})
        assert status["state"] == "running", status
        assert status["source"] == "ebpf" and status["store_path"] == str(store) and status["error"] == ""
        tag = uuidlib.uuid4().hex[:12]
        script = write_executable(workdir / "beacon.sh", f"#!/bin/sh\nnc -h {tag} 2>/dev/null\ncurl --version http://127.0.0.1/{tag} >/dev/null\n")
        subprocess.run([str(script)], timeout=30)
        deadline = time.monotonic() + 15
        rows: list[dict[str, str]] = []
        while len(rows) < 1 and time.monotonic() < deadline:
            rows = [r for r in manager.generate(uuid, EXECS, {"utility": [(OP_EQUALS, "netcat")]}) if tag in r["cmdline"]]
            time.sleep(0.2)
        (row,) = rows
        assert row["cmdline"] == f"nc -h {tag}" and row["parent_path"] == str(script)
        assert set(row) == set(EXECS.names) and all(isinstance(v, str) and v != "None" for v in row.values())
        pid, eid, t = int(row["pid"]), int(row["eid"]), int(row["time"])
        # Constraints as osquery sends them: equality, ranges, several on one column.
        assert [r["eid"] for r in manager.generate(uuid, EXECS, {"pid": [(OP_EQUALS, str(pid))]})] == [row["eid"]]
        recent = manager.generate(uuid, EXECS, {"time": [(OP_GT, str(t - 60))]})
        assert row["eid"] in {r["eid"] for r in recent} and all(int(r["time"]) > t - 60 for r in recent)
        window = manager.generate(uuid, EXECS, {"eid": [(OP_GE, str(eid)), (OP_LT, str(eid + 1))]})
        assert [r["eid"] for r in window] == [row["eid"]]
        assert manager.generate(uuid, EXECS, {"utility": [(OP_EQUALS, "no-such-tool")]}) == []
        # A value of the wrong type is not pushed down (SQLite re-checks it), never an error.
        assert len(manager.generate(uuid, EXECS, {"pid": [(OP_EQUALS, "abc")]})) >= 2
        assert int(status_row(manager, uuid)["events_matched"]) >= 2
    finally:
        err = stop(proc, manager)
    assert proc.returncode == 0, err
    assert "ignoring flags this version does not know: --some-future-osquery-flag" in err
    with Store(store, readonly=True) as kept:   # flushed on the way out
        assert any(tag in r["cmdline"] for r in kept.select([("utility", "=", "curl")]))


def test_what_a_utility_contacted_joins_its_exec_row_over_thrift(ext_file: str, manager: Manager, place: Path,
                                                                 workdir: Path) -> None:
    """The query of issue 23, as osqueryi runs it: SQLite's virtual tables call the
    extension's two tables over thrift (the inner loop with exec_eid pushed down)."""
    need(probe_unavailable())
    proc = manager.launch(ext_file, "--store", str(place / "events.db"))
    try:
        uuid = manager.wait_registered("netutil")
        assert wait_state(manager, uuid, {"running", "degraded", "failed"})["network_mode"] == "cgroup"
        host = Host([RemoteTable(manager, uuid, EXECS), RemoteTable(manager, uuid, SOCKETS)])
        tag = uuidlib.uuid4().hex[:12]
        with HttpServer() as server:
            url = f"http://127.0.0.1:{server.port}/{tag}"
            subprocess.run([str(write_executable(workdir / "fetch.sh", f"#!/bin/sh\ncurl -s -o /dev/null {url}\n"))], timeout=30)
            sql = ("SELECT e.cmdline, s.remote_address, s.remote_port, s.status, s.dns_name FROM network_utility_execs e "
                   "JOIN network_utility_socket_events s ON s.exec_eid = e.eid WHERE e.cmdline LIKE ?")
            deadline = time.monotonic() + 15
            answer: list[tuple[object, ...]] = []
            while not answer and time.monotonic() < deadline:
                answer = host.query(sql, (f"%{tag}",))[1]
                time.sleep(0.3)
        assert answer == [(f"curl -s -o /dev/null {url}", "127.0.0.1", server.port, "succeeded", "")]
    finally:
        err = stop(proc, manager)
    assert proc.returncode == 0, err


def test_a_second_extension_on_the_same_store_only_reads(ext_file: str, place: Path) -> None:
    need(probe_unavailable())
    store = place / "events.db"
    with Manager(place / "a.em") as first, Manager(place / "b.em") as second:
        writer = first.launch(ext_file, "--store", str(store))
        try:
            uuid_a = first.wait_registered("netutil")
            assert wait_state(first, uuid_a, {"running", "failed"})["state"] == "running"
            reader = second.launch(ext_file, "--store", str(store))
            try:
                uuid_b = second.wait_registered("netutil")
                subprocess.run(["curl", "--version", "http://127.0.0.1/second"], capture_output=True, timeout=10)
                time.sleep(3)    # one flush and one status publication
                status = status_row(second, uuid_b)
                assert status["state"] == "running" and "only reads it" in status["error"], status
                assert status["source"] == "store"
                mine = [r["eid"] for r in first.generate(uuid_a, EXECS, {"utility": [(OP_EQUALS, "curl")]})]
                theirs = [r["eid"] for r in second.generate(uuid_b, EXECS, {"utility": [(OP_EQUALS, "curl")]})]
                assert mine and mine == theirs
            finally:
                stop(reader, second)
        finally:
            stop(writer, first)
    assert writer.returncode == 0 and reader.returncode == 0


def test_when_the_probe_cannot_attach_the_tables_stay_and_say_why(ext_file: str, manager: Manager, place: Path) -> None:
    proc = manager.launch(ext_file, "--store", str(place / "events.db"), "--prefix", "relative/")
    try:
        uuid = manager.wait_registered("netutil")
        status = wait_state(manager, uuid, {"failed"})
        assert status["state"] == "failed" and "must be absolute" in status["error"], status
        assert manager.generate(uuid, EXECS) == []
    finally:
        err = stop(proc, manager)
    assert proc.returncode == 0 and "probe failed" in err


def test_an_answer_osqueryd_could_not_hold_is_refused_and_says_how_to_constrain_it(
        ext_file: str, manager: Manager, place: Path) -> None:
    """osqueryd keeps a whole answer in its worker (twice at the peak): over --max-answer-mb
    the call fails with a message, as osqueryd surfaces it (an SQL error), never a worker
    killed by the watchdog. Only the columns a query uses are sent."""
    now = int(time.time())
    chain = json.dumps([{"pid": 100 + i, "path": f"/usr/bin/tool{i}", "cmdline": "x" * 300, "uid": 0} for i in range(8)])
    with Store(place / "events.db", max_rows=10_000) as store:
        store.add_many(make_row(pid=i, time=now - 3600 + i // 2, utility="netcat", cmdline=f"nc -l {i}", ancestors=chain)
                       for i in range(2000))
        store.flush()
    proc = manager.launch(ext_file, "--store", str(place / "events.db"), "--prefix", "relative/", "--max-answer-mb", "12")
    try:
        uuid = manager.wait_registered("netutil")
        response = manager.call_table(uuid, EXECS.name, {"action": "generate", "context": context(EXECS, {})})
        assert response.status.code == 1 and response.response == []
        message = response.status.message
        assert message.startswith("network_utility_execs: this answer is 2,000 rows, about ") and "--max-answer-mb=12" in message
        assert "WHERE time > strftime('%s', 'now') - 3600" in message, message
        recent = manager.generate(uuid, EXECS, {"time": [(OP_GT, str(now - 3600 + 900))]})
        assert len(recent) == 2000 - 1802 and set(recent[0]) == set(EXECS.names)
        narrow = manager.generate(uuid, EXECS, used=["pid", "utility"])   # what SELECT pid, utility sends
        assert len(narrow) == 2000 and set(narrow[0]) == {"pid", "utility"} and narrow[5] == {"pid": "5", "utility": "netcat"}
        counted = manager.generate(uuid, EXECS, used=[])   # SELECT count(*): osquery sends colsUsed []
        assert len(counted) == 2000 and set(counted[0]) == {"eid"}
    finally:
        stop(proc, manager)


def test_with_reconnect_the_extension_outlives_osqueryd_and_registers_with_the_next(ext_file: str, place: Path) -> None:
    """fleetd's orbit restarts its osqueryd at every change of agent options: the extension
    started beside it (the fleetd unit) registers again, its probe recording all along, so
    the status row shows one run (same start_time, no restart, nothing for the health
    query to report)."""
    need(probe_unavailable())
    socket = place / "osquery.em"
    first = Manager(socket)
    with first:
        proc = first.launch(ext_file, "--store", str(place / "events.db"), "--reconnect")
        try:
            before = wait_state(first, first.wait_registered("netutil"), {"running", "failed"})
            assert before["state"] == "running", before
        except BaseException:
            proc.kill()
            raise
    try:
        time.sleep(2)   # osqueryd restarting: the extension's pings fail, it waits for the next
        assert proc.poll() is None
        subprocess.run(["true"], check=True)   # an exec while no osquery is there: still seen
        with Manager(socket) as second:
            uuid = second.wait_registered("netutil", timeout=30)
            after = wait_state(second, uuid, {"running"})
            assert after["state"] == "running" and after["start_time"] == before["start_time"]
            assert after["restarted"] == before["restarted"] and int(after["execs_seen"]) > int(before["execs_seen"])
            proc.terminate()   # systemd stopping the unit
            assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "registering again when it is back" in err and err.count("registered as 'netutil'") == 2, err


@pytest.mark.parametrize("used", [None, ["pid", "cmdline", "ancestors"], []])
def test_the_cap_sums_in_sql_what_the_model_counts_in_python(place: Path, used: list[str] | None) -> None:
    """tables.osqueryd_bytes (the model) and the SQL sum the cap uses agree, to the byte,
    for any columns and values (long, short, non-ASCII, NULL)."""
    with Store(place / "events.db") as store:
        store.add_many([make_row(pid=i, cmdline="é" * (i * 7 % 60), ancestors="x" * (i % 3) * 20, cwd=None if i % 2 else "/tmp/w" * i)
                        for i in range(50)])
        store.flush()
        context = {"constraints": [], **({"colsUsed": used} if used is not None else {})}
        rows = ExecsTable(lambda: store).generate(context)
        peak = stored_peak(rows, columns_used(context))
        listed = list(rows)
    assert len(listed) == 50 and peak == osqueryd_bytes(listed) > 0


def test_shutdown_request_stops_the_extension(ext_file: str, manager: Manager, place: Path) -> None:
    proc = manager.launch(ext_file, "--store", str(place / "events.db"))
    uuid = manager.wait_registered("netutil")
    transport_path = f"{manager.socket}.{uuid}"
    transport = TTransport.TBufferedTransport(TSocket.TSocket(unix_socket=transport_path))
    transport.open()
    Extension.Client(TBinaryProtocol.TBinaryProtocol(transport)).shutdown()
    transport.close()
    assert proc.wait(timeout=15) == 0
    assert not os.path.exists(transport_path)


def test_real_osqueryi_loads_the_extension(ext_file: str, place: Path) -> None:
    osqueryi = shutil.which("osqueryi")
    if osqueryi is None:
        pytest.skip("osqueryi is not on PATH (osquery cannot be installed on this machine)")
    run = subprocess.run(
        [osqueryi, "--extension", ext_file, "--extensions_require=netutil", "--extensions_timeout=10", "--json",
         "SELECT state, store_path FROM network_utility_probe_status"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert run.returncode == 0, run.stderr
    (row,) = json.loads(run.stdout)
    assert row["state"] in {"starting", "running", "degraded", "failed"}


def test_flags_come_from_the_flagfile_and_the_command_line(place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flagfile = place / "netutil.flags"
    flagfile.write_text("# extra flags for the autoloaded extension\n--store=/srv/netutil/events.db\n--max-rows 5000\n--prefix=/srv/uploads/\n")
    flagfile.chmod(0o600)
    args = parse_args(["--socket", "/var/osquery/osquery.em", "--timeout", "3", "--interval", "3", "--flagfile", str(flagfile), "--max-rows", "7"])
    assert args.store == Path("/srv/netutil/events.db") and args.max_rows == 7 and args.prefix == ["/srv/uploads/"]
    assert args.socket == "/var/osquery/osquery.em" and args.interval == 3
    flagfile.chmod(0o666)
    assert parse_args(["--flagfile", str(flagfile)]).max_rows != 5000
    assert "ignoring the flag file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "response",
    [
        ExtensionResponse(status=ExtensionStatus(code=0, message="OK"), response=[{"pid": "1", "cmdline": "nc -e /bin/sh ü\\x00"}] * 3),
        ExtensionResponse(status=ExtensionStatus(code=0, message="OK"), response=[]),
        ExtensionResponse(status=ExtensionStatus(code=1, message="table x: unknown action 'drop'"), response=[]),
        ExtensionResponse(status=ExtensionStatus(code=0, message="OK", uuid=42), response=[{}]),
    ],
)
def test_the_fast_reply_encoder_writes_what_thrift_writes(response: ExtensionResponse) -> None:
    buffer = TTransport.TMemoryBuffer()
    Extension.call_result(success=response).write(TBinaryProtocol.TBinaryProtocol(buffer))
    pieces: list[bytes] = []
    write_call_result(response, pieces.append)
    assert b"".join(pieces) == buffer.getvalue()
    # and the extension's processor really answers call() with it
    assert Processor(Handler({}, threading.Event()))._processMap["call"] is Processor.process_call


def test_a_corrupt_store_is_replaced_and_the_status_says_so(ext_file: str, manager: Manager, place: Path) -> None:
    need(probe_unavailable())
    store = place / "events.db"
    store.write_bytes(b"garbage" * 1000)
    store.chmod(0o600)
    proc = manager.launch(ext_file, "--store", str(store))
    try:
        uuid = manager.wait_registered("netutil")
        status = wait_state(manager, uuid, {"degraded", "running", "failed"})
        assert status["state"] == "degraded" and "moved aside" in status["error"], status
    finally:
        err = stop(proc, manager)
    assert "was unreadable" in err and "moved aside" in err
    assert list(place.glob("events.db.corrupt-*"))


def test_the_extension_leaves_within_its_interval_when_osquery_goes(ext_file: str, manager: Manager, place: Path) -> None:
    proc = manager.launch(ext_file, "--store", str(place / "events.db"), interval=1)
    manager.wait_registered("netutil")
    gone = time.monotonic()
    manager.stop()
    assert proc.wait(timeout=15) == 0
    assert time.monotonic() - gone < 1 + 3, "more than --interval (1 s) and a flush"


def test_a_flag_file_at_the_former_place_is_named_not_silently_dropped(monkeypatch: pytest.MonkeyPatch, place: Path) -> None:
    from osquery_netutil.app import flagfile
    monkeypatch.setattr(flagfile, "FORMER", place / "netutil.flags")
    (place / "netutil.flags").write_text("--max-rows=5\n")
    warnings: list[str] = []
    assert flagfile.read(place / "new" / "netutil.flags", warnings.append) == [] and warnings == []   # not the default
    monkeypatch.setattr(flagfile, "DEFAULT", place / "new" / "netutil.flags")
    assert flagfile.read(flagfile.DEFAULT, warnings.append) == []
    assert warnings == [f"{place}/netutil.flags is not read any more: move it to {place}/new/netutil.flags"]
