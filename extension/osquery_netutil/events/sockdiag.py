"""TCP sockets as the kernel's sock_diag reports them (netlink, what `ss` reads), in the
network namespace of a given process.

Where the probe reads a connect's outcome at tracepoints (OUTCOMES_AT_TRACEPOINTS), the
kernel reports how a socket ended, not what it is while it lives: whether a connect still
open was answered, whether a tracked process's bound socket listens, and which peers a
listener holds are asked here, for those sockets only, a few times a second at most. No
kernel hook pays for it, and no other process.

A netlink socket answers for the namespace it was made in: one is made per namespace
asked about, in a thread that entered it (setns), and kept (a few at most).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Collection, Sequence

from osquery_netutil.kernel.sockets import address

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP, INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_EQ = 1, 11, 12   # include/uapi/linux/inet_diag.h
CLONE_NEWNET = 0x40000000

# TCP states (include/net/tcp_states.h) and the masks asked for.
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING = range(1, 12)
LISTENING = 1 << LISTEN
CONNECTED = sum(1 << s for s in (ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING))   # answered, not ended
OPEN = CONNECTED | 1 << SYN_SENT | 1 << SYN_RECV

_REQ = struct.Struct("=BBBxI2s2s16s16sIII")   # inet_diag_req_v2: family, protocol, ext, states, id
_MSG = struct.Struct("=BBBB2s2s16s16sIII")     # inet_diag_msg: family, state, timer, retrans, id (ports, addrs, if, cookie)
_NLMSG = struct.Struct("=IHHII")
_NAMESPACES_KEPT = 8        # netlink sockets kept, one per namespace (each holds its namespace)
_IDLE_S = 10.0              # and closed once unused this long (a container's namespace is let go)
_PORTS_PER_QUESTION = 256   # ports one question's filter compares, at most
_ANSWER_MAX = 100_000       # messages read from one dump at most
_TIMEOUT_S = 1.0
NLM_F_DUMP_INTR = 0x10


@dataclass(frozen=True)
class DiagSocket:
    """One TCP socket as sock_diag reported it."""

    state: int
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    cookie: int


class SockDiag:
    """Asks sock_diag about TCP sockets, in a process's network namespace."""

    def __init__(self) -> None:
        self._sockets: OrderedDict[int, tuple[socket.socket, float]] = OrderedDict()   # by namespace inode: (socket, last used)
        self._seq = 0
        self.last_error = ""   # why the last question that should have had an answer had none

    def netns(self, pid: int) -> int | None:
        """The inode number of pid's network namespace; None when pid is gone."""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None

    def sockets(self, pid: int, family: int, states: int, local_port: int = 0,
                remote_ports: Collection[int] = ()) -> list[DiagSocket] | None:
        """The TCP sockets of family in pid's network namespace in one of states (a mask
        of 1 << state), with that local port, or one of those remote ports, when given
        (the kernel filters: a question per _PORTS_PER_QUESTION ports). None when they
        cannot be asked for: pid gone, or netlink refused (last_error says why)."""
        ns = self.netns(pid)
        if ns is None:
            return None
        self._close_idle()
        sock = self._socket(pid, ns)
        if sock is None:
            return None
        if local_port:
            filters = [_ports_filter(INET_DIAG_BC_S_EQ, [local_port])]
        else:
            ports = sorted(set(remote_ports))
            filters = [_ports_filter(INET_DIAG_BC_D_EQ, ports[i:i + _PORTS_PER_QUESTION])
                       for i in range(0, len(ports), _PORTS_PER_QUESTION)] or [b""]
        found: list[DiagSocket] = []
        try:
            for bytecode in filters:
                found += self._ask(sock, family, states, bytecode)
        except OSError as exc:
            self._drop(ns)
            if self.netns(pid) is not None:   # not just a process that ended meanwhile
                self.last_error = f"sock_diag: {exc.strerror or exc}"
            return None
        self.last_error = ""
        return found

    def close(self) -> None:
        for sock, _ in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def _ask(self, sock: socket.socket, family: int, states: int, bytecode: bytes) -> list[DiagSocket]:
        self._seq += 1
        attr = struct.pack("=HH", 4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode if bytecode else b""
        req = _REQ.pack(family, socket.IPPROTO_TCP, 0, states, b"", b"", b"", b"", 0, 0, 0) + attr
        sock.send(_NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0) + req)
        return self._answer(sock)

    def _answer(self, sock: socket.socket) -> list[DiagSocket]:
        found: list[DiagSocket] = []
        deadline = time.monotonic() + _TIMEOUT_S
        for _ in range(_ANSWER_MAX):
            if time.monotonic() > deadline:
                raise OSError("sock_diag: no end to the answer within a second")
            data = sock.recv(65536)
            at = 0
            while at + _NLMSG.size <= len(data):
                length, kind, flags, seq, _pid = _NLMSG.unpack_from(data, at)
                if length < _NLMSG.size:
                    raise OSError("sock_diag: a malformed message")
                body = data[at + _NLMSG.size: at + length]
                at += (length + 3) & ~3
                if seq != self._seq:
                    continue   # the rest of an answer abandoned earlier
                if flags & NLM_F_DUMP_INTR:
                    raise OSError("sock_diag: the tables changed during the answer")
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    err = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                    if err > 0:
                        raise OSError(err, os.strerror(err))
                    if kind == NLMSG_DONE:
                        return found
                    continue   # an acknowledgement
                if len(body) >= _MSG.size:
                    found.append(_parse(body))
        raise OSError("sock_diag: an answer of more than 100,000 messages")

    def _socket(self, pid: int, ns: int) -> socket.socket | None:
        kept = self._sockets.get(ns)
        if kept is not None:
            self._sockets[ns] = (kept[0], time.monotonic())
            self._sockets.move_to_end(ns)
            return kept[0]
        try:
            sock = _made_in(f"/proc/{pid}/ns/net") if ns != self.netns(os.getpid()) else _netlink()
        except OSError as exc:
            if self.netns(pid) is not None:
                self.last_error = f"sock_diag in the network namespace of pid {pid}: {exc.strerror or exc}"
            return None
        self._sockets[ns] = (sock, time.monotonic())
        if len(self._sockets) > _NAMESPACES_KEPT:
            self._sockets.popitem(last=False)[1][0].close()
        return sock

    def _close_idle(self) -> None:
        idle = time.monotonic() - _IDLE_S
        for ns, (sock, used) in list(self._sockets.items()):
            if used < idle:
                sock.close()
                del self._sockets[ns]

    def _drop(self, ns: int) -> None:
        kept = self._sockets.pop(ns, None)
        if kept is not None:
            kept[0].close()


def _ports_filter(op: int, ports: Sequence[int]) -> bytes:
    """inet_diag bytecode: true when the port is one of ports, in the form `ss` gives an
    `or` (inet_diag_bc_audit follows each op's true branch, so every op must be on it):
    each comparison (8 bytes: the op, then the port in the next op's `no`) is followed by
    a JMP to the end (accept) on its true branch; its false branch goes on to the next
    comparison, the last one's 4 bytes past the end (reject)."""
    ops = b""
    for i, port in enumerate(ports):
        ops += struct.pack("=BBHBBH", op, 8, 12, 0, 0, port)
        if i < len(ports) - 1:
            rest = 12 * (len(ports) - 2 - i) + 8   # the comparisons after this JMP
            ops += struct.pack("=BBH", INET_DIAG_BC_JMP, 4, 4 + rest)
    return ops


def _netlink() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    sock.settimeout(_TIMEOUT_S)
    return sock


def _made_in(ns_path: str) -> socket.socket:
    """A sock_diag socket of the network namespace at ns_path, made by a thread that
    entered it (setns changes the calling thread only; that thread then ends)."""
    fd = os.open(ns_path, os.O_RDONLY)
    made: list[socket.socket | OSError] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            made.append(OSError(err, os.strerror(err)))
            return
        try:
            made.append(_netlink())
        except OSError as exc:
            made.append(exc)

    try:
        thread = threading.Thread(target=enter, name="netutil-setns", daemon=True)
        thread.start()
        thread.join()   # setns and socket do not block; the fd stays open until they are done
    finally:
        os.close(fd)
    if isinstance(made[0], OSError):
        raise made[0]
    return made[0]


def _parse(body: bytes) -> DiagSocket:
    family, state, _timer, _retrans, sport, dport, src, dst, _ifindex, lo, hi = _MSG.unpack_from(body)
    return DiagSocket(state=state, local_address=address(family, struct.unpack("<4I", src)), local_port=int.from_bytes(sport, "big"),
                      remote_address=address(family, struct.unpack("<4I", dst)), remote_port=int.from_bytes(dport, "big"),
                      cookie=lo | hi << 32)
