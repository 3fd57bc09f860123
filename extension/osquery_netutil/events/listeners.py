"""The listening sockets of tracked processes and the peers they accept, where the probe
reads TCP outcomes at tracepoints (OUTCOMES_AT_TRACEPOINTS, no sock_ops).

No kernel hook tells when a socket starts listening or a connection is accepted without
running for every TCP connection of the host, so these are read with sock_diag
(sockdiag.py), for the sockets of tracked processes only:

* a TCP socket a tracked process bound (its `bind` event) is looked for among the
  listeners of its namespace, by its cookie, for LISTEN_WAIT_S: found, it is a `listen`
  row and a listener, whose namespace and port the kernel then watches (Probe.listen_port);
* a listener's connections are read every PEERS_EVERY_S: each new peer is an `accept`
  row; and a connection on a watched port that ended before it was read (a one-shot
  `echo cmd | nc host port`) is handed over by the kernel at its end (A_PEER_END), and
  is an `accept` row then; a listener's peers are those on its port and address;
* a listener is forgotten once its listening socket and its connections are gone (nc -l
  closes its listener as it accepts, and serves the connection for hours).
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from osquery_netutil.events.sockdiag import CONNECTED, LISTEN, LISTENING, DiagSocket, SockDiag
from osquery_netutil.kernel.records import SIZES
from osquery_netutil.kernel.sockets import A_ACCEPT, A_LISTEN, SockRecord

LISTEN_WAIT_S = 3.0     # a bound TCP socket of a tracked process is looked for among listeners this long
PEERS_EVERY_S = 0.5     # a listener's connections are read this often
LISTENERS_MAX = 64      # listeners followed at once (a port-filtered question each, twice a second); more are counted as lost
_BOUND_MAX = 1024
Peer = tuple[str, int]
WILDCARDS = ("0.0.0.0", "::")


@dataclass
class _Listener:
    bound: SockRecord     # the bind that made it: its process, track and origin
    netns: int
    cookie: int           # of its listening socket
    address: str          # its local address (a wildcard takes a peer to any)
    peers: OrderedDict[Peer, None] = field(default_factory=OrderedDict)   # reported, at most SOCK_BUDGET

    def serves(self, local_address: str) -> bool:
        """Whether a connection to local_address on its port is one it accepted (a
        SO_REUSEPORT sibling on the same address cannot be told apart)."""
        return self.address in WILDCARDS or local_address == self.address


class Listeners:
    """Listeners and their peers, as SockRecords for SocketRows to make rows of."""

    def __init__(self, diag: SockDiag, listen_port: Callable[[int, int, bool], None]) -> None:
        """listen_port(netns, port, listening): the probe's, so that the kernel hands
        over the connections that end on the port of a listener (A_PEER_END)."""
        self._diag = diag
        self._listen_port = listen_port
        self._bound: OrderedDict[tuple[int, int, int], SockRecord] = OrderedDict()   # (pid, family, port)
        self._listeners: dict[tuple[int, int], _Listener] = {}   # by (netns, port)
        self._peers_read = 0
        self.lost = 0   # listeners not followed, accepts over a listener's budget

    def bound(self, rec: SockRecord) -> None:
        """A tracked process bound a TCP socket (a `bind` event): it may listen."""
        if rec.local_port:
            self._bound[(rec.pid, rec.family, rec.local_port)] = rec
            if len(self._bound) > _BOUND_MAX:
                self._bound.popitem(last=False)

    def peer_ended(self, rec: SockRecord) -> SockRecord | None:
        """A connection on a watched port ended (A_PEER_END): an `accept` of the listener
        of its namespace, port and address, unless one was reported."""
        listener = self._listeners.get((rec.netns, rec.local_port))
        if listener is None or not listener.serves(rec.local_address):
            return None
        return self._accepted(listener, rec.remote_address, rec.remote_port, rec.local_address, rec.cookie, rec)

    def poll(self, now_ns: int | None = None) -> list[SockRecord]:
        """Look for the bound sockets that listen and for new peers of the listeners
        (every PEERS_EVERY_S); the `listen` and `accept` events found."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        found = self._listening(now_ns)
        if now_ns - self._peers_read >= PEERS_EVERY_S * 1e9:
            self._peers_read = now_ns
            for key, listener in list(self._listeners.items()):
                found += self._read_peers(key, listener, now_ns)
        return found

    def close(self) -> None:
        """Stop watching every listener's port."""
        for netns, port in self._listeners:
            self._listen_port(netns, port, False)
        self._listeners.clear()

    def _listening(self, now_ns: int) -> list[SockRecord]:
        """The bound sockets found listening (by their cookie), as `listen` events: one
        question per network namespace and family (of one port when only one is looked for)."""
        groups: dict[tuple[int, int], list[tuple[tuple[int, int, int], SockRecord]]] = {}
        for key, rec in list(self._bound.items()):
            netns = self._diag.netns(rec.pid)
            if netns is None or now_ns - rec.ktime_ns > LISTEN_WAIT_S * 1e9:
                del self._bound[key]   # its process is gone; or it did not listen in time
            else:
                groups.setdefault((netns, rec.family), []).append((key, rec))
        found: list[SockRecord] = []
        for (netns, family), bound in groups.items():
            port = bound[0][1].local_port if len(bound) == 1 else 0
            listening = {s.cookie: s for s in self._diag.sockets(bound[0][1].pid, family, LISTENING, local_port=port) or ()}
            for key, rec in bound:
                sock = listening.get(rec.cookie)
                if sock is not None:
                    del self._bound[key]
                    found += self._listener(netns, rec, sock, now_ns)
        return found

    def _listener(self, netns: int, rec: SockRecord, sock: DiagSocket, now_ns: int) -> list[SockRecord]:
        """rec's socket listens: a listener (in place of one that listened there before:
        `while :; do nc -l -p 4444; done`), and its `listen` event."""
        key = (netns, rec.local_port)
        before = self._listeners.get(key)
        if before is None:
            if len(self._listeners) >= LISTENERS_MAX:
                self.lost += 1
                return []
            self._listen_port(netns, rec.local_port, True)
        self._listeners[key] = _Listener(rec, netns, sock.cookie, sock.local_address)
        return [_at(rec, now_ns, action=A_LISTEN, local_address=sock.local_address)]

    def _read_peers(self, key: tuple[int, int], listener: _Listener, now_ns: int) -> list[SockRecord]:
        bound = listener.bound
        found = self._diag.sockets(bound.pid, bound.family, LISTENING | CONNECTED, local_port=bound.local_port)
        if found is None:
            if self._diag.netns(bound.pid) == listener.netns:
                return []   # asked in vain: again at the next read
            found = []      # its process is gone (or moved): nothing more is read of it
        listening = any(s.state == LISTEN and s.cookie == listener.cookie for s in found)
        peers = [s for s in found if s.state != LISTEN and listener.serves(s.local_address)]
        if not listening and not peers:
            del self._listeners[key]
            self._listen_port(listener.netns, bound.local_port, False)
            return []
        accepts = (self._accepted(listener, s.remote_address, s.remote_port, s.local_address, s.cookie) for s in peers)
        return [_at(rec, now_ns) for rec in accepts if rec]

    def _accepted(self, listener: _Listener, address: str, port: int, local_address: str, cookie: int,
                  ended: SockRecord | None = None) -> SockRecord | None:
        peer = (address, port)
        if peer in listener.peers:
            return None
        if len(listener.peers) >= SIZES["SOCK_BUDGET"]:
            if ended is not None:
                self.lost += 1   # counted once, at its end
            return None
        listener.peers[peer] = None
        rec = dataclasses.replace(listener.bound, action=A_ACCEPT, cookie=cookie, local_address=local_address,
                                  remote_address=address, remote_port=port)
        return dataclasses.replace(rec, time=ended.time, ktime_ns=ended.ktime_ns) if ended else rec


def _at(rec: SockRecord, now_ns: int, **changes: Any) -> SockRecord:
    """rec as an event of now (monotonic ns, the kernel's clock)."""
    return dataclasses.replace(rec, time=time.time() - (time.monotonic_ns() - now_ns) / 1e9, ktime_ns=now_ns,
                               **changes)
