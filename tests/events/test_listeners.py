"""Listeners and their peers read with the real sock_diag, of real sockets: this
process's, and a listener's in another network namespace (an `unshare -n` child)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import struct
import subprocess
import time
from typing import Callable

import pytest

from osquery_netutil.events.listeners import LISTEN_WAIT_S, PEERS_EVERY_S, Listeners
from osquery_netutil.events.sockdiag import CONNECTED, LISTENING, SockDiag
from osquery_netutil.kernel.sockets import A_ACCEPT, A_BIND, A_LISTEN, A_PEER_END, SockRecord

STEP_NS = int(PEERS_EVERY_S * 1e9) + 1
SO_COOKIE = 57   # include/uapi/asm-generic/socket.h (Python names no constant for it)
NETNS = os.stat("/proc/self/ns/net").st_ino


def cookie(s: socket.socket) -> int:
    return int(struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0])


def bound(s: socket.socket, at_ns: int | None = None) -> SockRecord:
    """The kernel's record of a tracked process's bind of s (post_bind gives its cookie)."""
    return SockRecord(time=time.time(), ktime_ns=at_ns or time.monotonic_ns(), cookie=cookie(s), action=A_BIND,
                      status=0, pid=os.getpid(), uid=0, comm=b"nc", cgroup_id=0, track=(10, 5), origin=(0, 0),
                      family=2, protocol=6, local_address=s.getsockname()[0], local_port=s.getsockname()[1],
                      remote_address="0.0.0.0", remote_port=0, retrans=0)


def until(check: Callable[[int], bool], start: int) -> None:
    """Polls at later and later times (PEERS_EVERY_S apart) until check(now) holds, for up
    to 10 s of wall time (a connection's end is processed by softirq, later under load)."""
    deadline, step = time.monotonic() + 10, 0
    while not check(start + step * STEP_NS):
        assert time.monotonic() < deadline
        step += 1
        time.sleep(0.05)


def test_a_bound_socket_that_listens_its_peers_and_its_end() -> None:
    watched: list[tuple[int, int, bool]] = []
    listeners = Listeners(SockDiag(), lambda netns, port, listening: watched.append((netns, port, listening)))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        listeners.bound(bound(server))
        now = time.monotonic_ns()
        assert listeners.poll(now) == [] and watched == []          # bound, not listening yet
        server.listen()
        (listen,) = listeners.poll(now + 1)
        assert (listen.action, listen.local_port, listen.pid, listen.track) == (A_LISTEN, port, os.getpid(), (10, 5))
        assert watched == [(NETNS, port, True)]                     # the kernel watches its port now
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = server.accept()
        (accept,) = listeners.poll(now + STEP_NS)
        assert (accept.action, accept.remote_address, accept.remote_port, accept.local_port) == \
            (A_ACCEPT, "127.0.0.1", client.getsockname()[1], port)
        assert listeners.poll(now + 2 * STEP_NS) == []              # reported once
        ended = dataclasses.replace(accept, action=A_PEER_END, netns=NETNS)
        assert listeners.peer_ended(ended) is None                  # its end: already an accept
        other = dataclasses.replace(ended, remote_port=1)           # a peer that came and went between reads
        assert listeners.peer_ended(other).action == A_ACCEPT       # type: ignore[union-attr]
        elsewhere = dataclasses.replace(ended, remote_port=2, local_address="127.0.0.2")
        assert listeners.peer_ended(elsewhere) is None              # not its address
        server.close()                                              # nc -l closes its listener, serves its peer
        assert listeners.poll(now + 3 * STEP_NS) == [] and watched == [(NETNS, port, True)]
        client.close()
        peer.close()
        until(lambda at: listeners.poll(at) == [] and len(watched) == 2, now + 4 * STEP_NS)
        assert watched == [(NETNS, port, True), (NETNS, port, False)]


def test_a_listener_in_place_of_another_on_its_port_is_a_listener_of_its_own() -> None:
    """`while :; do nc -l -p 4444; done`: the next one binds and listens before the last
    one's end was read."""
    watched: list[tuple[int, int, bool]] = []
    listeners = Listeners(SockDiag(), lambda netns, port, listening: watched.append((netns, port, listening)))
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    first.bind(("127.0.0.1", 0))
    port = first.getsockname()[1]
    listeners.bound(bound(first))
    first.listen()
    assert [r.action for r in listeners.poll()] == [A_LISTEN]
    first.close()
    with socket.socket() as second:
        second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        second.bind(("127.0.0.1", port))
        rec = dataclasses.replace(bound(second), pid=os.getpid(), track=(20, 6))
        listeners.bound(rec)
        second.listen()
        (listen,) = listeners.poll()
        assert (listen.action, listen.track) == (A_LISTEN, (20, 6))
        assert watched == [(NETNS, port, True)]   # still one listener there


def test_a_bound_socket_is_matched_by_its_cookie_not_its_port() -> None:
    """A tracked process binds port P to connect from it; another socket listens on P
    (SO_REUSEPORT): the bind is no listener."""
    listeners = Listeners(SockDiag(), lambda netns, port, listening: None)
    with socket.socket() as other, socket.socket() as mine:
        for s in (other, mine):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        mine.bind(("127.0.0.1", other.getsockname()[1]))
        other.listen()
        listeners.bound(bound(mine))
        assert listeners.poll() == []


def test_several_bound_sockets_are_looked_for_together() -> None:
    """Bound sockets of one namespace are looked for with one question (no port filter):
    each that listens is found, one that does not stays looked for until LISTEN_WAIT_S."""
    listeners = Listeners(SockDiag(), lambda netns, port, listening: None)
    with socket.socket() as a, socket.socket() as b, socket.socket() as idle:
        start = time.monotonic_ns()
        for s in (a, b, idle):
            s.bind(("127.0.0.1", 0))
            listeners.bound(bound(s, at_ns=start))
        a.listen()
        b.listen()
        found = listeners.poll(start)
        assert sorted(r.local_port for r in found) == sorted([a.getsockname()[1], b.getsockname()[1]])
        assert [port for _, _, port in listeners._bound] == [idle.getsockname()[1]]   # noqa: SLF001
        assert listeners.poll(start + int(LISTEN_WAIT_S * 1e9) + 1) == []
        assert not listeners._bound   # noqa: SLF001 (forgotten)


def test_sock_diag_filters_by_any_of_many_remote_ports() -> None:
    """The kernel filters by a chain of port comparisons (an `or`, in questions of at most 256)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        try:
            diag = SockDiag()
            others = [p for p in range(20000, 20400) if p != port]
            for ports in ([port], [port, 1], others[:300] + [port], others[:300]):
                found = diag.sockets(os.getpid(), socket.AF_INET, CONNECTED, remote_ports=ports) or []
                assert [s.cookie for s in found] == ([cookie(client)] if port in ports else [])
        finally:
            client.close()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a network namespace needs root and unshare")
def test_sock_diag_asks_in_the_process_s_own_network_namespace() -> None:
    """A listener in an empty network namespace is seen there, and not in this one."""
    with socket.socket() as free:   # a port nothing listens on here
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    child = subprocess.Popen(["unshare", "-n", "python3", "-c",
                              "import socket, time\n"
                              f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); print(1, flush=True)\n"
                              "time.sleep(30)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "1"
        diag = SockDiag()
        theirs = diag.sockets(child.pid, socket.AF_INET, LISTENING, local_port=port)
        ours = diag.sockets(os.getpid(), socket.AF_INET, LISTENING, local_port=port)
        assert [(s.local_address, s.local_port) for s in theirs or ()] == [("127.0.0.1", port)]
        assert ours == [] and diag.netns(child.pid) != diag.netns(os.getpid())
        assert diag.sockets(child.pid, socket.AF_INET, CONNECTED, local_port=port) == []
    finally:
        child.kill()
        child.wait(timeout=10)
    assert diag.sockets(child.pid, socket.AF_INET, LISTENING) is None   # gone: cannot be asked
    assert diag.last_error == ""   # a process that ended is no fault
