"""Socket records -> rows of network_utility_socket_events.

Every call runs on the probe's poll thread (exec records, socket records and ticks alike),
so what this module keeps needs no lock:

* which exec row each tracked exec became (`exec_seen`), to give a socket event the
  `exec_eid` of the exec its process was tracked from; an exec that tracks but is no row
  (a script from /tmp) leads on to the tracked exec it inherited, so a utility's child
  (`ssh`'s ProxyCommand, a renamed copy run by `nc -e`) is joined to the utility's row;
* a TCP connect until its outcome. Where the probe reads outcomes at tracepoints, the
  kernel says how a connect failed (its error) or, at its socket's end, whether it was
  answered; a connect still open after ANSWER_WAIT_S is looked up with sock_diag
  (answered, or in progress). With sock_ops, the kernel says when its SYN left (none:
  unreachable, the connect failed before a packet could), then whether it was answered;
* listeners and the peers they accept, where no sock_ops reports them (listeners.py);
* identical actions of one process within FOLD_S, folded into one row with a count.
"""

from __future__ import annotations

import errno
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from osquery_netutil.events.containers import CgroupResolver, container_id
from osquery_netutil.events.dns import question
from osquery_netutil.events.ipargs import is_public_address
from osquery_netutil.events.listeners import Listeners
from osquery_netutil.events.procfs import text
from osquery_netutil.events.sockdiag import CONNECTED, OPEN, SockDiag
from osquery_netutil.kernel.records import F_TRACK_PENDING, AncestryEntry, ExecRecord
from osquery_netutil.kernel.sockets import (
    A_BIND, A_CONNECT, A_DNS, A_OUTCOME, A_PEER_END, ACTIONS, S_CLOSED, S_ESTABLISHED, S_FAILED, S_NO_SYN,
    S_SYN_SENT, S_UNANSWERED, SockRecord,
)

Row = dict[str, Any]
Key = tuple[int, int]   # (pid, exec ktime) of a tracked exec

SYN_WAIT_S = 0.25      # a TCP connect whose SYN has not left by then found no route: unreachable
ANSWER_WAIT_S = 3.0    # and one not answered by then is reported as in progress
FOLD_S = 1.0           # identical actions of a process within this are one row with a count
# An exec row's first socket events are stored within this of its time (whole seconds): a
# connect's outcome, the fold, the store's batch and a second of rounding. watch judges the
# exec rows this old, so that their lines can name what they contacted.
SETTLED_S = int(ANSWER_WAIT_S + FOLD_S) + 2
_TRACKED_REMEMBERED = 65536
_CONNECTS_HELD = 16384
_CHAIN_MAX = 32        # links followed from a row-less tracked exec to a row
_DUE_PER_TICK = 256    # connects settled per tick at most (sock_diag questions are bounded by it)
IPPROTO_TCP = 6
NOT_OPEN = 0           # a connect's socket is not among the open ones of its namespace
# The outcomes that need no more than their status: answered; closed by its caller before
# an answer; ended having sent nothing (no route).
_ENDED = {S_ESTABLISHED: "succeeded", S_UNANSWERED: "in progress", S_NO_SYN: "unreachable"}
_TRACK = "_track"      # a held row's tracked exec, until it is handed on
ENDED = -1             # exec_eid of a track that ended: its exec was judged no row (F_TRACK_PENDING)


@dataclass
class _Connect:
    """A TCP connect waiting for its outcome."""

    rec: SockRecord
    row: Row
    syn_sent: bool = False
    asked: bool = False    # sock_diag found its socket not open: its outcome may still be in the ring


@dataclass
class _Folding:
    row: Row
    since: float = field(default_factory=time.monotonic)


class SocketRows:
    """Turns SockRecords into rows, handed to emit(row) once final (within FOLD_S, or
    ANSWER_WAIT_S for a connect)."""

    def __init__(self, emit: Callable[[Row], None], ancestry: Callable[[int], AncestryEntry | None],
                 origin: Callable[[Key, float, int], str], cgroups: CgroupResolver | None = None) -> None:
        """ancestry: the probe's (a process's exec'd file); origin(key, time, ktime): the
        enricher's origin column for a lineage's origin (pid, exec ktime)."""
        self._emit = emit
        self._ancestry = ancestry
        self._origin = origin
        self._cgroups = cgroups or CgroupResolver()
        # tracked exec -> the eid of its row, ENDED, or the tracked exec it inherited (no row)
        self._tracked: OrderedDict[Key, int | Key] = OrderedDict()
        self._connects: OrderedDict[int, _Connect] = OrderedDict()   # by socket cookie
        self._folding: dict[tuple[Any, ...], _Folding] = {}
        self._diag: SockDiag | None = None   # where outcomes come from tracepoints (read_states)
        self._listeners: Listeners | None = None

    def read_states(self, diag: SockDiag, listen_port: Callable[[int, int, bool], None]) -> None:
        """The probe reads TCP outcomes at tracepoints (no sock_ops): what the kernel does
        not report (an open connect's state, listeners, their peers) is read with diag.
        Called once, as the probe starts, before its poll thread."""
        self._listeners = Listeners(diag, listen_port)
        self._diag = diag

    @property
    def lost(self) -> int:
        """Events not made rows here (listeners over their budget)."""
        return self._listeners.lost if self._listeners is not None else 0

    @property
    def problem(self) -> str:
        """Why the last sock_diag question went unanswered, if one did ('' if none)."""
        return self._diag.last_error if self._diag is not None else ""

    def exec_seen(self, rec: ExecRecord, eid: int) -> bool:
        """rec was forwarded and became row eid (0: no row). Returns whether the track it
        began stays: false only for a pending one (F_TRACK_PENDING, an exec forwarded only
        to be judged) whose exec is no row and which replaced no pending track that led to
        one (a renamed nc that ran an unjudged program keeps its child's)."""
        if rec.track != (rec.pid, rec.ktime_ns):
            return True   # it tracks nothing of its own
        # What the process of an ended track sent before the kernel learnt so is dropped,
        # unless it has an origin.
        kept = not rec.flags & F_TRACK_PENDING or eid > 0 or self.exec_eid(rec.track_before) > 0
        self._tracked[rec.track] = eid or rec.track_before if kept else ENDED
        if len(self._tracked) > _TRACKED_REMEMBERED:
            self._tracked.popitem(last=False)
        return kept

    def exec_eid(self, key: Key) -> int:
        """The eid of the row of the tracked exec key, or of the nearest one it inherited; 0
        for none, ENDED for a pending track that ended."""
        for _ in range(_CHAIN_MAX):
            found = self._tracked.get(key)
            if found is None:
                return 0
            self._tracked.move_to_end(key)   # a long-lived tracked process stays known
            if isinstance(found, int):
                return found
            key = found
        return 0

    def take(self, rec: SockRecord) -> None:
        """One record from the kernel."""
        if rec.action == A_OUTCOME:
            self._outcome(rec)
        elif rec.action == A_PEER_END:
            accepted = self._listeners.peer_ended(rec) if self._listeners is not None else None
            if accepted is not None:
                self._fold(self._row(accepted))
        elif rec.action == A_DNS:
            # No payload: the kernel could not read what was sent (sendfile, io_uring): a
            # question with no name. A payload with no question: a later segment of a TCP
            # stream, a reply.
            asked = question(rec.payload, rec.protocol == IPPROTO_TCP) if rec.payload else ("", "")
            if asked is not None:
                self._fold({**self._row(rec), "dns_name": asked[0], "dns_type": asked[1]})
        elif rec.action == A_CONNECT and rec.protocol == IPPROTO_TCP:
            self._connects[rec.cookie] = _Connect(rec, self._row(rec))
            if len(self._connects) > _CONNECTS_HELD:
                self._settle(self._connects.popitem(last=False)[1])
        else:
            if rec.action == A_BIND and rec.protocol == IPPROTO_TCP and self._listeners is not None:
                self._listeners.bound(rec)
            self._fold(self._row(rec))

    def tick(self, now_ns: int | None = None) -> None:
        """Settle the connects that waited long enough and hand on the folded rows that are due."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        due = []
        for cookie, pending in list(self._connects.items()):
            waited = (now_ns - pending.rec.ktime_ns) / 1e9
            if waited >= (ANSWER_WAIT_S if pending.syn_sent or self._diag else SYN_WAIT_S):
                del self._connects[cookie]
                due.append(pending)
                if len(due) == _DUE_PER_TICK:
                    break
        states = self._states(due)
        for pending in due:
            state = states.get(pending.rec.cookie)
            if state == NOT_OPEN and not pending.asked:
                pending.asked = True   # its end may be in the ring still: read at the next tick
                self._connects[pending.rec.cookie] = pending
            else:
                self._settle(pending, state)
        if self._listeners is not None:
            for rec in self._listeners.poll(now_ns):
                self._fold(self._row(rec))
        self.flush(time.monotonic() - FOLD_S)

    def flush(self, before: float = float("inf")) -> None:
        """Hand on the folded rows begun before `before` (all by default)."""
        for key, folding in list(self._folding.items()):
            if folding.since < before:
                del self._folding[key]
                row = folding.row
                # Joined now, not when the event was read: the exec's own record comes through
                # the other ring buffer and may be read after its first socket events.
                row["exec_eid"] = self.exec_eid(row.pop(_TRACK))
                if row["exec_eid"] == ENDED:
                    if not row["origin"]:
                        continue
                    row["exec_eid"] = 0
                self._emit(row)

    def close(self) -> None:
        """Hand on everything held: connects as they stand, folded rows."""
        states = self._states(list(self._connects.values()))
        for pending in self._connects.values():
            self._settle(pending, states.get(pending.rec.cookie))
        self._connects.clear()
        if self._listeners is not None:
            self._listeners.close()
        if self._diag is not None:
            self._diag.close()
        self.flush()

    def _outcome(self, rec: SockRecord) -> None:
        pending = self._connects.get(rec.cookie)
        if pending is None:
            return   # its connect was not reported (over budget) or was settled already
        if rec.status == S_SYN_SENT:
            pending.syn_sent = True
            return
        del self._connects[rec.cookie]
        if rec.status == S_CLOSED:
            # A RST answers at once; a SYN sent again and again went unanswered.
            pending.row["status"] = "timed out" if rec.retrans else "refused"
        elif rec.status == S_FAILED:
            pending.row["status"] = {errno.ECONNREFUSED: "refused", errno.ETIMEDOUT: "timed out"}.get(rec.error, "unreachable")
        else:
            pending.row["status"] = _ENDED.get(rec.status, "")
        self._fold(pending.row)

    def _states(self, due: list[_Connect]) -> dict[int, int]:
        """The TCP states of the sockets of connects still open, by cookie (NOT_OPEN: its
        namespace was asked and it is not there), asked of sock_diag where the probe reads
        outcomes at tracepoints: per network namespace and family, of those connects'
        remote ports only (at most _DUE_PER_TICK of them)."""
        states: dict[int, int] = {}
        if self._diag is None:
            return states
        groups: dict[tuple[int, int], list[_Connect]] = {}
        for pending in due:
            netns = self._diag.netns(pending.rec.pid)
            if netns is not None:
                groups.setdefault((netns, pending.rec.family), []).append(pending)
        for (_, family), connects in groups.items():
            found = self._diag.sockets(connects[0].rec.pid, family, OPEN, remote_ports={p.rec.remote_port for p in connects})
            if found is not None:
                states |= {p.rec.cookie: NOT_OPEN for p in connects}
                states |= {sock.cookie: sock.state for sock in found}
        return states

    def _settle(self, pending: _Connect, state: int | None = None) -> None:
        """A connect with no final outcome by now. With sock_ops: no SYN left (no route),
        or no answer yet. Else its socket's state: answered, or not (yet): also when it
        could not be asked, or was not open (twice: a socket that entered the kernel's
        tables and left them had an outcome, read first)."""
        if self._diag is None:
            pending.row["status"] = "in progress" if pending.syn_sent else "unreachable"
        else:
            pending.row["status"] = "succeeded" if state and (1 << state) & CONNECTED else "in progress"
        self._fold(pending.row)

    def _fold(self, row: Row) -> None:
        key = tuple(v for k, v in row.items() if k not in ("time", "count"))
        folding = self._folding.get(key)
        if folding is None:
            self._folding[key] = _Folding(row)
        else:
            folding.row["count"] += 1

    def _row(self, rec: SockRecord) -> Row:
        entry = self._ancestry(rec.pid) if rec.pid else None
        cgroup_path = self._cgroups.path_of(rec.pid, rec.cgroup_id)
        return {
            _TRACK: rec.track,   # becomes exec_eid when the row is handed on (flush)
            "time": int(rec.time),
            "action": ACTIONS.get(rec.action, str(rec.action)),
            "status": "",
            "pid": rec.pid,
            "uid": rec.uid,
            "comm": text(rec.comm),
            "path": text(entry.file) if entry is not None else "",
            "family": rec.family,
            "protocol": rec.protocol,
            "local_address": _address(rec.local_address, rec.local_port),
            "local_port": rec.local_port,
            "remote_address": _address(rec.remote_address, rec.remote_port),
            "remote_port": rec.remote_port,
            "remote_public": int(is_public_address(rec.remote_address)),
            "dns_name": "",
            "dns_type": "",
            "count": 1,
            "origin": self._origin(rec.origin, rec.time, rec.ktime_ns) if rec.origin != (0, 0) else "",
            "container_id": container_id(cgroup_path),
        }


def _address(address: str, port: int) -> str:
    """'' for an address the action did not have (unspecified, port 0)."""
    return "" if port == 0 and address in ("0.0.0.0", "::") else address
