"""Listeners and their peers read with the real sock_diag, of real sockets: this
process's, and a listener's in another network namespace (an `unshare -n` child)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time

import pytest

from osquery_netutil.events.listeners import LISTEN_WAIT_S, PEERS_EVERY_S, Listeners
from osquery_netutil.events.sockdiag import CONNECTED, LISTENING, SockDiag
from osquery_netutil.kernel.sockets import A_ACCEPT, A_BIND, A_LISTEN, A_PEER_END, SockRecord

STEP_NS = int(PEERS_EVERY_S * 1e9) + 1


def bound(port: int, pid: int | None = None, at_ns: int | None = None) -> SockRecord:
    """The kernel's record of a tracked process's TCP bind."""
    return SockRecord(time=time.time(), ktime_ns=at_ns or time.monotonic_ns(), cookie=1, action=A_BIND, status=0,
                      pid=pid or os.getpid(), uid=0, comm=b"nc", cgroup_id=0, track=(10, 5), origin=(0, 0), family=2,
                      protocol=6, local_address="127.0.0.1", local_port=port, remote_address="0.0.0.0",
                      remote_port=0, retrans=0)


def test_a_bound_socket_that_listens_its_peers_and_its_end() -> None:
    watched: list[tuple[int, bool]] = []
    listeners = Listeners(SockDiag(), lambda port, listening: watched.append((port, listening)))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        listeners.bound(bound(port))
        now = time.monotonic_ns()
        assert listeners.poll(now) == [] and watched == []          # bound, not listening yet
        server.listen()
        (listen,) = listeners.poll(now + 1)
        assert (listen.action, listen.local_port, listen.pid, listen.track) == (A_LISTEN, port, os.getpid(), (10, 5))
        assert watched == [(port, True)]                            # the kernel watches its port now
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = server.accept()
        (accept,) = listeners.poll(now + STEP_NS)
        assert (accept.action, accept.remote_address, accept.remote_port, accept.local_port) == \
            (A_ACCEPT, "127.0.0.1", client.getsockname()[1], port)
        assert listeners.poll(now + 2 * STEP_NS) == []              # reported once
        ended = dataclasses.replace(accept, action=A_PEER_END, netns=os.stat("/proc/self/ns/net").st_ino)
        assert listeners.peer_ended(ended) is None                  # its end: already an accept
        other = dataclasses.replace(ended, remote_port=1)           # a peer that came and went between reads
        assert listeners.peer_ended(other).action == A_ACCEPT       # type: ignore[union-attr]
        server.close()                                              # nc -l closes its listener, serves its peer
        assert listeners.poll(now + 3 * STEP_NS) == [] and watched == [(port, True)]
        client.close()
        peer.close()
        assert listeners.poll(now + 4 * STEP_NS) == [] and watched == [(port, True), (port, False)]


def test_a_bound_socket_that_never_listens_is_forgotten() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        start = time.monotonic_ns()
        listeners = Listeners(SockDiag(), lambda port, listening: None)
        listeners.bound(bound(s.getsockname()[1], at_ns=start))
        assert listeners.poll(start) == []
        assert listeners._bound   # noqa: SLF001 (still looked for)
        assert listeners.poll(start + int(LISTEN_WAIT_S * 1e9) + 1) == []
        assert not listeners._bound   # noqa: SLF001


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


def test_several_bound_sockets_are_looked_for_together() -> None:
    """Bound sockets of one namespace are looked for with one question (no port filter):
    each that listens is found, one that does not stays looked for."""
    listeners = Listeners(SockDiag(), lambda port, listening: None)
    with socket.socket() as a, socket.socket() as b, socket.socket() as idle:
        for s in (a, b, idle):
            s.bind(("127.0.0.1", 0))
            listeners.bound(bound(s.getsockname()[1]))
        a.listen()
        b.listen()
        found = listeners.poll()
        assert sorted(r.local_port for r in found) == sorted([a.getsockname()[1], b.getsockname()[1]])
        assert [port for _, _, port in listeners._bound] == [idle.getsockname()[1]]   # noqa: SLF001
