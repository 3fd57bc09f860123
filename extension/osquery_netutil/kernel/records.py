"""What the kernel hands over: the exec records and ancestry slots of
bpf/netutil_exec.bpf.c, the sizes compiled into it, its flags and counters, and how their
bytes decode.

The flags, the counter order and the sizes are the kernel/user contract: defined here and
in the C program, and tests/kernel/test_contract.py reads the C and fails on any difference.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

# Sizes compiled into the program (-D flags). Powers of two where the C masks with them.
SIZES: dict[str, int] = {
    "FILENAME_LEN": 256,     # exec'd path kept per event and per ancestry entry
    "ARGS_BUF": 8192,        # argv bytes kept per forwarded exec (plus one ARG_MAX_LEN of slack)
    "ARG_MAX_LEN": 1024,     # longest single argument kept
    "MAX_ARGS": 64,          # arguments kept per forwarded exec; argc is counted beyond
    "ARGC_COUNT_MAX": 4096,  # argc counted up to MAX_ARGS + this; above, F_ARGC_CAPPED is set
    "HEAD_LEN": 128,         # argv head kept in the ancestry map (every process)
    "HEAD_ARGS": 4,
    "PREFIX_LEN": 64,        # longest forwarded path prefix
    "RINGBUF_PAGES": 2048,   # 8 MiB ring buffer
    "ANCESTRY_MAX": 32768,   # processes remembered, alive or exited: the last this many pids (a power of 2)
    "PENDING_MAX": 8192,     # execs between syscall entry and completion
    "VERDICTS_MAX": 16384,   # btf mode: slots of content verdicts, one image each (a power of 2)
    "SOCK_BUDGET": 4096,     # socket events one tracked process may send (reset at a tracked exec)
    "SOCK_RINGBUF_PAGES": 512,   # 2 MiB ring buffer for socket events, apart from the execs'
    "LISTENERS_MAX": 4096,   # listening sockets of tracked processes, whose accepts are reported
    "CONNECTS_MAX": 16384,   # TCP connects of tracked processes waiting for their outcome (an LRU)
    "DNS_MAX": 512,          # bytes of a DNS question's packet payload copied (a question is at most 255 + 16)
    "TRACK_VERDICTS_MAX": 16384,   # user space's verdicts on pending tracks (an LRU: one per unjudged exec)
    "PENDING_NS": 2_000_000_000,   # a pending track with no verdict this long after its exec ends
}

# Event flags (mirrors the F_* defines in the C program).
F_ARGS_TRUNCATED = 1
F_MATCH_COMM = 2
F_MATCH_PATH = 4
F_NO_ENTER = 8
F_ARGC_CAPPED = 16
F_SCRIPT = 32          # btf mode: a #! script, argv as the kernel rewrote it (interpreter first)
F_PATH_RELATIVE = 64   # with F_MATCH_PATH or F_MATCH_SCRIPT: the path is relative, a weak origin
F_MATCH_SCRIPT = 128   # an interpreter started on a script by a placed or relative path: an origin
F_UNJUDGED = 256       # btf mode: the image has no content verdict yet: judge it, write it back
F_MATCH_CONTENT = 512  # btf mode: the image's verdict says it is a utility
F_TRACK_PENDING = 1024 # btf mode: the exec tracks until user space judges it (Probe.judge_track)
# Probe.judge_track's verdicts on a pending track (mirrors the C program's TRACK_*).
TRACK_KEEP = 1         # the exec is a row (a renamed utility): the track stays
TRACK_END = 2          # it is no row: the track ends

# Values of the kernel's name filter (catalog_comms, name_heads), OR'd.
N_CATALOG = 1          # a catalog name, busybox or a loader: forwarded
N_INTERPRETER = 2      # an interpreter: its script argument is judged

# AncestryEntry.flags. I_* mirror the C defines; A_FORKED is user space's.
I_SCRIPT_NOEXEC = 1    # exec failed with ENOEXEC: a shell interprets `file` (no #! line)
A_FORKED = 2           # the process has not exec'd since its fork: file/head are its parent's
I_SCRIPT = 4           # btf mode: `file` is a #! script, its head starts with the interpreter

# The per-CPU counters, in the order of the C program's C_* indexes.
COUNTERS = ("execs_seen", "forwarded", "lost", "failed", "sock_events", "sock_lost", "sock_over_budget",
            "sock_unread")


@dataclass(frozen=True)
class ExecRecord:
    """One exec as the kernel reported it, before any enrichment.

    Byte strings stay bytes: argv may hold anything but NUL, and a detection must see
    exactly what was executed.
    """

    time: float          # unix time of the exec
    ktime_ns: int        # CLOCK_MONOTONIC of the exec
    pid: int
    tid: int             # thread that called exec (== pid unless a non-leader thread did)
    ppid: int            # parent recorded at fork by the probe; 0 when unknown
    uid: int
    gid: int
    cgroup_id: int       # cgroup v2 id (inode of the cgroup directory)
    comm: bytes
    filename: bytes      # as the exec tracepoint gives it: as passed, a script path, /dev/fd/N
    argv: tuple[bytes, ...]
    argc: int            # real argument count (a lower bound when argc_capped)
    flags: int
    # The lineage's origin: the nearest exec suspicious by place among this process's own
    # images and its ancestors', inherited at fork (bpf/netutil_exec.bpf.c); (0, 0): none.
    origin_pid: int = 0
    origin_ktime_ns: int = 0
    # btf mode: the executed image as the exec opened it (st_dev encoding, inode); 0, 0
    # in tracepoint mode. For a #! script, its interpreter.
    dev: int = 0
    ino: int = 0
    # btf mode: the image's superblock (a kernel address, its verdict's key with ino) and
    # change time (ns), which a content verdict is given for; 0 in tracepoint mode.
    image_sb: int = 0
    ctime_ns: int = 0
    # The lineage's tracked exec after this exec and before it, (pid, exec ktime), (0, 0)
    # for none: the socket events of the process and its children name `track`
    # (bpf/netutil_sock.bpf.c); an exec that tracks yet is no row leads on to `track_before`.
    track: tuple[int, int] = (0, 0)
    track_before: tuple[int, int] = (0, 0)

    @property
    def args_truncated(self) -> bool:
        return bool(self.flags & F_ARGS_TRUNCATED)

    @property
    def identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the executed image, when the kernel read it."""
        return (self.dev, self.ino) if self.ino else None

    @property
    def is_origin(self) -> bool:
        """This exec is the origin its lineage now carries (it is suspicious by place)."""
        return self.origin_pid == self.pid and self.origin_ktime_ns == self.ktime_ns and self.ktime_ns != 0


@dataclass(frozen=True)
class AncestryEntry:
    """What the kernel remembered of a process: kept after it exits, until evicted."""

    pid: int
    ppid: int
    uid: int
    comm: bytes
    file: bytes          # the file it exec'd (a script's own path), or its parent's if it only forked
    head: tuple[bytes, ...]   # first arguments, possibly cut
    ktime_ns: int
    flags: int


@dataclass(frozen=True)
class Counters:
    execs_seen: int      # successful execs on the host since attach
    forwarded: int       # execs that passed the in-kernel filter
    lost: int            # forwarded execs dropped because the ring buffer was full
    failed: int          # exec syscalls that failed (tracepoint mode; btf mode sees only successes)
    sock_events: int = 0       # socket events of tracked processes handed over
    sock_lost: int = 0         # socket events dropped because their ring buffer was full
    sock_over_budget: int = 0  # socket events not sent: the process had spent its SOCK_BUDGET
    sock_unread: int = 0       # sends whose destination or DNS question could not be read from the syscall


def user_dev(kernel_dev: int) -> int:
    """A superblock's s_dev (the kernel's major << 20 | minor) in st_dev's encoding."""
    return os.makedev(kernel_dev >> 20, kernel_dev & 0xFFFFF)


def comm_key(name: str) -> bytes:
    """The kernel's comm for an exec'd file name: its first 15 bytes."""
    return name.encode()[:15]


def field_bytes(struct: ctypes.Structure, name: str) -> bytes:
    """All bytes of a char-array field (ctypes would stop at the first NUL)."""
    field = getattr(type(struct), name)
    return ctypes.string_at(ctypes.addressof(struct) + field.offset, field.size)


def image_head(proc: ctypes.Structure) -> bytes:
    """The argv head of a process's image: half cur & 1 of heads (the other half is an
    exec's in progress)."""
    field = type(proc).heads
    size = field.size // 2
    start = ctypes.addressof(proc) + field.offset + (proc.cur & 1) * size
    return ctypes.string_at(start, min(proc.head_len, size))


def cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def split_args(raw: bytes) -> tuple[bytes, ...]:
    """NUL-terminated strings back to back -> tuple; an unterminated tail is kept."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return tuple(parts)
