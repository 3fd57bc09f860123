"""Socket records to rows, without the kernel: a connect held for its outcome, repeats
folded, the exec row each event joins (through row-less tracked execs), and fixtures'
socket events checked as rows are."""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import time
from typing import Any

import pytest

from osquery_netutil.events.sockdiag import SockDiag
from osquery_netutil.events.sockets import ANSWER_WAIT_S, SYN_WAIT_S, SocketRows
from osquery_netutil.kernel.records import F_TRACK_PENDING, F_UNJUDGED, ExecRecord
from osquery_netutil.kernel.sockets import (
    A_ACCEPT, A_CONNECT, A_DNS, A_OUTCOME, A_SEND, S_CLOSED, S_ESTABLISHED, S_FAILED, S_NO_SYN, S_SYN_SENT,
    S_UNANSWERED, SockRecord,
)
from osquery_netutil.packs import jsonl

Row = dict[str, Any]
NOW_NS = time.monotonic_ns()


def record(action: int, cookie: int = 1, status: int = 0, retrans: int = 0, track: tuple[int, int] = (10, 5),
           remote: str = "203.0.113.9", port: int = 443, protocol: int = 6, at_ns: int = NOW_NS,
           payload: bytes = b"") -> SockRecord:
    return SockRecord(time=time.time(), ktime_ns=at_ns, cookie=cookie, action=action, status=status, pid=11, uid=0,
                      comm=b"curl", cgroup_id=0, track=track, origin=(0, 0), family=2, protocol=protocol,
                      local_address="0.0.0.0", local_port=0, remote_address=remote, remote_port=port, retrans=retrans,
                      payload=payload)


def exec_record(pid: int, ktime_ns: int, track: tuple[int, int], before: tuple[int, int] = (0, 0),
                flags: int = 0) -> ExecRecord:
    return ExecRecord(time=time.time(), ktime_ns=ktime_ns, pid=pid, tid=pid, ppid=1, uid=0, gid=0, cgroup_id=0,
                      comm=b"x", filename=b"/tmp/x", argv=(b"x",), argc=1, flags=flags, track=track, track_before=before)


@pytest.fixture
def rows() -> tuple[SocketRows, list[Row]]:
    out: list[Row] = []
    return SocketRows(out.append, lambda pid: None, lambda key, t, k: "", cgroups=None), out


def test_a_connect_takes_its_outcome(rows: tuple[SocketRows, list[Row]]) -> None:
    sockets, out = rows
    for cookie, outcome, retrans in ((1, S_ESTABLISHED, 0), (2, S_CLOSED, 0), (3, S_CLOSED, 2)):
        sockets.take(record(A_CONNECT, cookie))
        sockets.take(record(A_OUTCOME, cookie, S_SYN_SENT))
        sockets.take(record(A_OUTCOME, cookie, outcome, retrans))
    sockets.take(record(A_CONNECT, 4))                        # no SYN ever left: no route
    sockets.take(record(A_CONNECT, 5))
    sockets.take(record(A_OUTCOME, 5, S_SYN_SENT))            # a SYN left, no answer yet
    sockets.tick(NOW_NS + int(SYN_WAIT_S * 1e9) + 1)
    assert 5 in sockets._connects   # noqa: SLF001 (still waiting for its answer)
    sockets.tick(NOW_NS + int(ANSWER_WAIT_S * 1e9) + 1)
    sockets.flush()
    assert [r["status"] for r in out] == ["succeeded", "refused", "timed out", "unreachable", "in progress"]


def test_repeats_are_folded_and_an_unknown_outcome_is_no_row(rows: tuple[SocketRows, list[Row]]) -> None:
    sockets, out = rows
    for _ in range(5):
        sockets.take(record(A_SEND, protocol=17, port=53))
    sockets.take(record(A_SEND, protocol=17, port=54))
    sockets.take(record(A_OUTCOME, 99, S_ESTABLISHED))        # its connect was over the budget
    sockets.flush()
    assert sorted((r["remote_port"], r["count"]) for r in out) == [(53, 5), (54, 1)]


def test_a_question_that_could_not_be_read_is_a_row_with_no_name_and_no_question_is_none(
        rows: tuple[SocketRows, list[Row]]) -> None:
    sockets, out = rows
    sockets.take(record(A_DNS, protocol=17, port=53))                                # sendfile: nothing read
    sockets.take(record(A_DNS, protocol=6, port=53, payload=b"\x00\x05hello"))     # a later TCP segment
    sockets.flush()
    assert [(r["action"], r["dns_name"], r["dns_type"]) for r in out] == [("dns_query", "", "")]


def test_an_event_joins_the_row_of_its_tracked_exec_or_of_the_one_that_exec_inherited(rows: tuple[SocketRows, list[Row]]) -> None:
    sockets, out = rows
    sockets.exec_seen(exec_record(10, 5, track=(10, 5)), eid=7)              # curl: row 7
    sockets.exec_seen(exec_record(12, 9, track=(12, 9), before=(10, 5)), eid=0)   # its child, no row
    sockets.exec_seen(exec_record(13, 9, track=(12, 9)), eid=0)              # not a tracking exec: ignored
    sockets.take(record(A_ACCEPT, track=(12, 9)))
    sockets.take(record(A_ACCEPT, track=(40, 1), port=444))                   # a track never seen
    sockets.flush()
    assert sorted((r["remote_port"], r["exec_eid"]) for r in out) == [(443, 7), (444, 0)]


def test_a_pending_track_judged_no_row_drops_its_events_and_one_judged_a_row_joins_it(
        rows: tuple[SocketRows, list[Row]]) -> None:
    sockets, out = rows
    pending = F_TRACK_PENDING | F_UNJUDGED
    sockets.exec_seen(exec_record(20, 3, track=(20, 3), flags=pending), eid=0)   # a copy of bash: no row
    sockets.exec_seen(exec_record(21, 4, track=(21, 4), flags=pending), eid=9)   # a renamed curl: row 9
    # The renamed curl runs an unjudged program that is no row: its pending track replaced
    # a kept one, so it stays, and joins the curl's row.
    child = exec_record(22, 5, track=(22, 5), before=(21, 4), flags=pending)
    assert sockets.exec_seen(child, eid=0)
    assert not sockets.exec_seen(exec_record(23, 6, track=(23, 6), before=(20, 3), flags=pending), eid=0)
    sockets.take(record(A_ACCEPT, track=(20, 3), port=1))
    sockets.take(record(A_ACCEPT, track=(21, 4), port=2))
    sockets.take(record(A_ACCEPT, track=(22, 5), port=3))
    sockets.flush()
    assert sorted((r["remote_port"], r["exec_eid"]) for r in out) == [(2, 9), (3, 9)]


def test_fixture_socket_events_are_checked_as_rows_are() -> None:
    row = jsonl.socket_row({"action": "connect", "remote_address": "45.9.148.3", "remote_port": 443}, now=5)
    assert (row["time"], row["count"], row["remote_public"], row["status"]) == (5, 1, 1, "")
    assert jsonl.socket_row({"remote_address": "10.0.0.1"})["remote_public"] == 0
    with pytest.raises(ValueError, match="unknown socket event column 'cmdline'"):
        jsonl.socket_row({"cmdline": "nc"})
    with pytest.raises(ValueError, match="'remote_port' must be an integer"):
        jsonl.socket_row({"remote_port": "443"})


SO_COOKIE = 57   # include/uapi/asm-generic/socket.h (Python names no constant for it)


def test_outcomes_read_at_tracepoints_and_an_open_connect_s_state_read_with_sock_diag(
        rows: tuple[SocketRows, list[Row]]) -> None:
    """Where the probe reads outcomes at tracepoints: the kernel's error, or how the
    socket ended; a connect still open when ANSWER_WAIT_S is up is looked up (a real
    socket of this process, by its cookie): answered. One whose socket is not open is
    asked again at the next tick (its end may still be in the ring), then in progress."""
    sockets, out = rows
    sockets.read_states(SockDiag(), lambda netns, port, listening: None)
    for cookie, status, error in ((1, S_FAILED, 111), (2, S_FAILED, 110), (3, S_FAILED, 113), (4, S_ESTABLISHED, 0),
                                  (5, S_UNANSWERED, 0), (6, S_NO_SYN, 0)):
        sockets.take(record(A_CONNECT, cookie, port=cookie))   # a port each: no two rows fold
        sockets.take(dataclasses.replace(record(A_OUTCOME, cookie, status), error=error))
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client.connect(("127.0.0.1", port))
        cookie = struct.unpack("=Q", client.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
        for c in (cookie, cookie + 1_000_000, cookie + 2_000_000):   # the open one; two not open
            sockets.take(dataclasses.replace(record(A_CONNECT, c, remote="127.0.0.1", port=port), pid=os.getpid()))
        sockets.tick(NOW_NS + int(SYN_WAIT_S * 1e9) + 1)
        assert cookie in sockets._connects   # noqa: SLF001 (no SYN_SENT event here: it waits for ANSWER_WAIT_S)
        sockets.tick(NOW_NS + int(ANSWER_WAIT_S * 1e9) + 1)
        assert set(sockets._connects) == {cookie + 1_000_000, cookie + 2_000_000}   # noqa: SLF001
        sockets.take(record(A_OUTCOME, cookie + 2_000_000, S_NO_SYN))   # read from the ring meanwhile
        sockets.tick(NOW_NS + int(ANSWER_WAIT_S * 1e9) + 2)
    sockets.flush()
    assert sorted((r["remote_port"], r["status"], r["count"]) for r in out) == [
        (1, "refused", 1), (2, "timed out", 1), (3, "unreachable", 1), (4, "succeeded", 1), (5, "in progress", 1),
        (6, "unreachable", 1), (port, "in progress", 1), (port, "succeeded", 1), (port, "unreachable", 1)]
