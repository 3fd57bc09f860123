"""The socket side of the probe (bpf/netutil_sock.bpf.c, netutil_sock_send.bpf.c): its
programs, attached to the root of the cgroup v2 hierarchy with BPF links, the raw
tracepoint that reads what tracked processes send, and the records they hand over.

bcc 0.26 attaches cgroup programs with the legacy BPF_PROG_ATTACH, which outlives the
process that attached them (a killed sensor would leave its programs taxing the host).
A BPF link (BPF_LINK_CREATE) lives as long as its file descriptor: this process's, so a
`kill -9` detaches everything. bcc loads the programs; the links are made here. A raw
tracepoint is held by a file descriptor too (bpf_raw_tracepoint_open, through bcc).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osquery_netutil.kernel import fields
from osquery_netutil.kernel.preflight import bpf_call

# sock_event.action and .status (mirrors the A_* and S_* defines in the C program).
A_CONNECT, A_SEND, A_BIND, A_LISTEN, A_ACCEPT, A_OUTCOME, A_DNS, A_PEER_END = 1, 2, 3, 4, 5, 6, 7, 8
S_SYN_SENT, S_ESTABLISHED, S_CLOSED, S_FAILED, S_UNANSWERED, S_NO_SYN = 1, 2, 3, 4, 5, 6
ACTIONS = {A_CONNECT: "connect", A_SEND: "send", A_BIND: "bind", A_LISTEN: "listen", A_ACCEPT: "accept",
           A_DNS: "dns_query"}

AF_INET, AF_INET6 = 2, 10

# bcc's program types and the kernel's attach types (enum bpf_prog_type, bpf_attach_type).
_CGROUP_SKB, _CGROUP_SOCK, _SOCK_OPS, _CGROUP_SOCK_ADDR = 8, 9, 13, 18
# (function, program type, attach type)
PROGRAMS = (
    ("netutil_connect4", _CGROUP_SOCK_ADDR, 10),
    ("netutil_connect6", _CGROUP_SOCK_ADDR, 11),
    ("netutil_post_bind4", _CGROUP_SOCK, 12),
    ("netutil_post_bind6", _CGROUP_SOCK, 13),
)
# A TCP connect's outcome and a tracked listener's accepts: raw tracepoints where the
# build has them (OUTCOMES_AT_TRACEPOINTS), else sock_ops, which every TCP connection of
# the host passes about ten times.
OUTCOME_TRACEPOINTS = fields.OUTCOME_TRACEPOINTS
SOCK_OPS_PROGRAM = ("netutil_sock_ops", _SOCK_OPS, 3)
# What tracked processes send: a raw tracepoint where the build reads it at the syscall
# (SENDS_AT_SYSCALL), else two more cgroup programs (netutil_sock_send.bpf.c).
SEND_TRACEPOINT = (fields.SEND_TRACEPOINT, "netutil_send")
EGRESS_PROGRAMS = (
    ("netutil_sock_create", _CGROUP_SOCK, 2),
    ("netutil_egress", _CGROUP_SKB, 1),
)
_BPF_LINK_CREATE = 28


class SocketsRefused(Exception):
    """The socket side cannot run here; the message says why (exec rows go on)."""


@dataclass(frozen=True)
class SockRecord:
    """One socket event of a tracked process, as the kernel reported it."""

    time: float            # unix time
    ktime_ns: int
    cookie: int            # the socket's cookie: an outcome (A_OUTCOME) names its connect by it
    action: int            # A_*
    status: int            # S_* of an outcome
    pid: int               # 0 for an outcome
    uid: int
    comm: bytes
    cgroup_id: int
    track: tuple[int, int]    # (pid, exec ktime) of the lineage's tracked exec; (0, 0): none
    origin: tuple[int, int]   # (pid, exec ktime) of the lineage's origin; (0, 0): none
    family: int
    protocol: int
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    retrans: int
    error: int = 0         # of S_FAILED: the socket's errno
    netns: int = 0         # of A_PEER_END: the network namespace's inode number
    payload: bytes = b""   # of A_DNS: the first bytes of what the socket sent to port 53


def cgroup2_root(mounts: Path = Path("/proc/self/mounts")) -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified
    on hybrid hosts). Raises SocketsRefused when it is not mounted."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError as exc:
        raise SocketsRefused(f"cannot read {mounts}: {exc.strerror}") from exc
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    raise SocketsRefused("cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup/unified): "
                         "socket events need it")


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """A BPF link of the program to the cgroup: its fd, which detaches it when closed."""
    attr = (ctypes.c_uint8 * 144)()
    struct.pack_into("<IIII", attr, 0, prog_fd, target_fd, attach_type, 0)
    fd, err = bpf_call(_BPF_LINK_CREATE, attr)
    if fd < 0:
        raise SocketsRefused(f"the kernel refused a BPF link ({errno.errorcode.get(err, err)}: {os.strerror(err)})")
    return int(fd)


class CgroupLinks:
    """The socket programs of a loaded probe, linked to the cgroup v2 root (and its raw
    tracepoints attached) until close()."""

    def __init__(self, bpf: Any, sends_at_syscall: bool, outcomes_at_tracepoints: bool, root: Path | None = None) -> None:
        """bpf: bcc's BPF object of the probe's program; sends_at_syscall,
        outcomes_at_tracepoints: it was built with SENDS_AT_SYSCALL, OUTCOMES_AT_TRACEPOINTS.
        Raises SocketsRefused."""
        self.root = root or cgroup2_root()
        self._fds: list[int] = []
        self._bpf = bpf
        self._tracepoints: list[str] = []
        cgroup_programs = PROGRAMS + (() if outcomes_at_tracepoints else (SOCK_OPS_PROGRAM,)) \
            + (() if sends_at_syscall else EGRESS_PROGRAMS)
        tracepoints = (OUTCOME_TRACEPOINTS if outcomes_at_tracepoints else ()) \
            + ((SEND_TRACEPOINT,) if sends_at_syscall else ())
        try:
            cgroup = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise SocketsRefused(f"cannot open {self.root}: {exc.strerror}") from exc
        try:
            for name, prog_type, attach_type in cgroup_programs:
                try:
                    fn = bpf.load_func(name.encode(), prog_type, attach_type=attach_type)
                except Exception as exc:   # bcc raises bare Exception with the verifier's log
                    hint = ": the kernel loads networking programs only with CAP_NET_ADMIN" \
                        if "not permitted" in str(exc) else ""
                    raise SocketsRefused(f"{name} did not load{hint} ({str(exc).strip()[:500]})") from exc
                self._fds.append(link_create(fn.fd, cgroup, attach_type))
            for tracepoint, name in tracepoints:
                try:
                    bpf.attach_raw_tracepoint(tp=tracepoint.encode(), fn_name=name.encode())
                except Exception as exc:   # bcc raises bare Exception
                    raise SocketsRefused(f"{name} did not attach to {tracepoint} ({str(exc).strip()[:500]})") from exc
                self._tracepoints.append(tracepoint)
        except SocketsRefused:
            self.close()
            raise
        finally:
            os.close(cgroup)

    def close(self) -> None:
        """Detach every program (closing a link detaches it). Safe to call twice."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for tracepoint in self._tracepoints:
            self._bpf.detach_raw_tracepoint(tp=tracepoint.encode())
        self._tracepoints = []


def address(family: int, words: Any) -> str:
    """The text of an address the kernel gave as four network-order words (IPv4 in the
    first); an IPv4-mapped IPv6 address as its IPv4."""
    raw = b"".join(struct.pack("<I", w) for w in words)
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    v6 = ipaddress.IPv6Address(raw)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped else str(v6)


def parse(raw: bytes, dns_type: Any, wall_offset: float) -> SockRecord:
    """A sock_event's bytes (a dns_event's, for A_DNS) as a SockRecord. dns_type: the
    program's struct dns_event, a sock_event and its payload."""
    whole = dns_type.from_buffer_copy(raw[: ctypes.sizeof(dns_type)].ljust(ctypes.sizeof(dns_type), b"\0"))
    ev = whole.ev
    payload = bytes(whole.payload[: min(whole.payload_len, len(whole.payload))]) if ev.action == A_DNS else b""
    return SockRecord(
        time=wall_offset + ev.ktime_ns / 1e9,
        ktime_ns=ev.ktime_ns,
        cookie=ev.cookie,
        action=ev.action,
        status=ev.status,
        pid=ev.pid,
        uid=ev.uid,
        comm=bytes(ev.comm).split(b"\0", 1)[0],
        cgroup_id=ev.cgroup_id,
        track=(ev.track_pid, ev.track_ktime_ns) if ev.track_ktime_ns else (0, 0),
        origin=(ev.origin_pid, ev.origin_ktime_ns) if ev.origin_ktime_ns else (0, 0),
        family=ev.family,
        protocol=ev.protocol,
        local_address=address(ev.family, ev.local_addr) if ev.family in (AF_INET, AF_INET6) else "",
        local_port=ev.local_port,
        remote_address=address(ev.family, ev.remote_addr) if ev.family in (AF_INET, AF_INET6) else "",
        remote_port=ev.remote_port,
        retrans=ev.retrans,
        error=ev.error,
        netns=ev.netns,
        payload=payload,
    )
