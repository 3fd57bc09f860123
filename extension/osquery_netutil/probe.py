"""Loads the eBPF exec probe (bpf/netutil_exec.bpf.c) with bcc and hands its raw exec
records to user space.

The probe is the only part of the project that touches the kernel. It compiles the C
program at start-up (bcc), fills the in-kernel filter (catalog comm names, forwarded path
prefixes), polls the ring buffer on a thread and calls `on_exec` with each raw record.
Enrichment (paths, users, containers, IPs) happens downstream, in user space.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from .locations import FD_PATH_PREFIXES, WRITABLE_DIRS
from .memory import page_out_compiler, return_freed_memory

# The program lives in the repository's bpf/; the packaged extension (.ext) carries a copy
# as package data.
BPF_SOURCE = Path(__file__).resolve().parent.parent.parent / "bpf" / "netutil_exec.bpf.c"

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
}

# Event flags (mirrors the F_* defines in the C program).
F_ARGS_TRUNCATED = 1
F_MATCH_COMM = 2
F_MATCH_PATH = 4
F_NO_ENTER = 8
F_ARGC_CAPPED = 16

# AncestryEntry.flags. I_SCRIPT_NOEXEC mirrors the C define; A_FORKED is user space's.
I_SCRIPT_NOEXEC = 1    # exec failed with ENOEXEC: a shell interprets `file` (no #! line)
A_FORKED = 2           # the process has not exec'd since its fork: file/head are its parent's

_COUNTERS = ("execs_seen", "forwarded", "lost", "failed")

TRACEPOINTS = (
    ("syscalls", "sys_enter_execve"),
    ("syscalls", "sys_enter_execveat"),
    ("syscalls", "sys_exit_execve"),
    ("syscalls", "sys_exit_execveat"),
    ("sched", "sched_process_exec"),
    ("task", "task_newtask"),
)
_TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class ProbeError(RuntimeError):
    """The probe cannot load. The message names the cause and the fix."""


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

    @property
    def args_truncated(self) -> bool:
        return bool(self.flags & F_ARGS_TRUNCATED)


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
    failed: int          # exec syscalls that failed


def check_bpf_syscall() -> str | None:
    """Create and close a one-slot BPF array map; return why that failed, or None.

    This is the cheapest proof that the kernel accepts bpf() from this process, so that
    set-up and start-up can stop early with the cause instead of deep inside bcc.
    """
    number = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
    if number is None:
        return f"unsupported architecture {platform.machine()}: the probe supports x86_64 and aarch64"
    bpf_map_create, bpf_map_type_array = 0, 2
    attr = (ctypes.c_uint32 * 32)(bpf_map_type_array, 4, 4, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, bpf_map_create, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return None
    err = ctypes.get_errno()
    if err == errno.EPERM:
        return "bpf() refused (EPERM): run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)"
    if err == errno.ENOSYS:
        return "bpf() not available (ENOSYS): the kernel needs CONFIG_BPF_SYSCALL=y"
    return f"bpf() failed ({errno.errorcode.get(err, err)}): the kernel refuses BPF maps"


def bpf_source() -> str:
    """The C program's text: from the repository, else from the package (the .ext)."""
    if BPF_SOURCE.is_file():
        return BPF_SOURCE.read_text()
    return resources.files(__package__).joinpath("data", BPF_SOURCE.name).read_text()


def comm_key(name: str) -> bytes:
    """The kernel's comm for an exec'd file name: its first 15 bytes."""
    return name.encode()[:15]


def preflight() -> None:
    """Raise ProbeError naming the first missing prerequisite, cheapest check first."""
    if os.geteuid() != 0:
        raise ProbeError("the eBPF probe needs root: run as root (sudo)")
    problem = check_bpf_syscall()
    if problem:
        raise ProbeError(problem)
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc, linked into the venv by set-up)
    except ImportError as exc:
        raise ProbeError(f"bcc is not importable ({exc}): run 'make setup' (installs Debian's python3-bpfcc)") from exc
    build = Path("/lib/modules") / os.uname().release / "build" / "include"
    if not build.exists():
        raise ProbeError(f"kernel headers missing ({build.parent}): run 'make setup' (installs and links linux-headers)")
    root = next((p for p in _TRACEFS if (p / "events").is_dir()), None)
    if root is None:
        raise ProbeError("tracefs is not mounted: run 'mount -t tracefs nodev /sys/kernel/tracing' (or 'make setup')")
    for category, name in TRACEPOINTS:
        if not (root / "events" / category / name).is_dir():
            raise ProbeError(f"tracepoint {category}:{name} missing: the kernel needs CONFIG_FTRACE_SYSCALLS and CONFIG_TRACEPOINTS")
    if not Path("/sys/kernel/debug/tracing/events").is_dir():
        # bcc 0.26 reads tracepoint formats through debugfs.
        raise ProbeError("debugfs is not mounted: run 'mount -t debugfs nodev /sys/kernel/debug' (or 'make setup')")


def _field_bytes(struct: ctypes.Structure, name: str) -> bytes:
    """All bytes of a char-array field (ctypes would stop at the first NUL)."""
    field = getattr(type(struct), name)
    return ctypes.string_at(ctypes.addressof(struct) + field.offset, field.size)


def _image_head(proc: ctypes.Structure) -> bytes:
    """The argv head of a process's image: half cur & 1 of heads (the other half is an
    exec's in progress)."""
    field = type(proc).heads
    size = field.size // 2
    start = ctypes.addressof(proc) + field.offset + (proc.cur & 1) * size
    return ctypes.string_at(start, min(proc.head_len, size))


def _cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _split_args(raw: bytes) -> tuple[bytes, ...]:
    """NUL-terminated strings back to back -> tuple; an unterminated tail is kept."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return tuple(parts)


class Probe:
    """The loaded probe: start() attaches, stop() detaches, on_exec gets each record.

    on_exec runs on the probe's poll thread, soon after the exec: the process is usually
    still alive, which is when /proc can still tell about it.
    """

    def __init__(
        self,
        comm_names: Iterable[str],
        on_exec: Callable[[ExecRecord], None],
        forward_prefixes: Iterable[str] = WRITABLE_DIRS,
        poll_ms: int = 100,
    ) -> None:
        self._comms = sorted({comm_key(n) for n in comm_names})
        self._prefixes = tuple(dict.fromkeys([*forward_prefixes, *FD_PATH_PREFIXES]))
        self._on_exec = on_exec
        self._poll_ms = poll_ms
        self._bpf = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wall_offset = time.time() - time.monotonic()
        self.callback_errors = 0
        self.last_callback_error: str = ""
        for prefix in self._prefixes:
            if not prefix.startswith("/") or not prefix.endswith("/") or len(prefix.encode()) > SIZES["PREFIX_LEN"]:
                raise ProbeError(
                    f"forward prefix {prefix!r} must be absolute, end with '/' and be at most {SIZES['PREFIX_LEN']} bytes"
                )

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Compile, load and attach the program, fill the filter maps, start polling."""
        preflight()
        from bcc import BPF

        cflags = [f"-D{k}={v}" for k, v in SIZES.items()] + ["-Wno-unused-function"]
        try:
            self._bpf = BPF(text=bpf_source().encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception with the compiler/verifier log
            raise ProbeError(f"the BPF program failed to load: {str(exc).strip()[:2000]}") from exc
        return_freed_memory()   # clang's freed heap (~25 MB)
        page_out_compiler()     # and its code (~85 MB), which never runs again
        self._fill_filter()
        self._procs = self._bpf[b"procs"]
        self._event_type = self._bpf[b"pending_full"].Leaf
        self._args_offset = self._event_type.args.offset
        self._bpf[b"events"].open_ring_buffer(self._on_sample)
        self._thread = threading.Thread(target=self._poll, name="netutil-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (draining what is queued) and detach. Safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "Probe":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries ----------------------------------------------------------------------
    def counters(self) -> Counters:
        table = self._bpf[b"counters"]
        values = [sum(table[ctypes.c_int(i)]) for i in range(len(_COUNTERS))]
        return Counters(*values)

    def ancestry(self, pid: int) -> AncestryEntry | None:
        """What the kernel remembers of pid, alive or exited; None if never seen/evicted.

        A process that has not exec'd since its fork runs its parent's image: that image
        is reported (flag A_FORKED) if the parent had it when the fork happened.
        """
        proc = self._lookup(pid)
        if proc is None:
            return None
        image, flags = proc, 0
        if proc.ktime_ns == 0:
            # No exec since its fork: it runs its parent's image, if the parent had it
            # when the fork happened.
            image = None
            parent = self._lookup(proc.ppid) if proc.ppid else None
            if parent is not None and 0 < parent.ktime_ns <= proc.fork_ktime_ns:
                image, flags = parent, A_FORKED
        if image is None:
            return AncestryEntry(pid, proc.ppid, 0, b"", b"", (), proc.fork_ktime_ns, 0)
        return AncestryEntry(
            pid=pid,
            ppid=proc.ppid,
            uid=image.uid,
            comm=_cstr(_field_bytes(image, "comm")),
            file=_cstr(_field_bytes(image, "file")),
            head=_split_args(_image_head(image)),
            ktime_ns=image.ktime_ns,
            flags=flags | image.flags,
        )

    def _lookup(self, pid: int) -> ctypes.Structure | None:
        """pid's slot, if a newer process has not claimed it."""
        proc = self._procs[ctypes.c_uint32(pid & (SIZES["ANCESTRY_MAX"] - 1))]
        return proc if proc.pid == pid and pid else None

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Per program: (runs, total ns), from the kernel's BPF stats.

        The kernel counts only while sysctl kernel.bpf_stats_enabled is 1.
        """
        stats = {}
        for name, fn in self._bpf.funcs.items():
            info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
            fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
            stats[name.decode()] = (int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
        return stats

    def drain(self) -> None:
        """Consume whatever the ring buffer holds now (on the caller's thread)."""
        self._bpf.ring_buffer_consume()

    # -- internals --------------------------------------------------------------------
    def _fill_filter(self) -> None:
        comms, name_heads = self._bpf[b"catalog_comms"], self._bpf[b"name_heads"]
        for name in self._comms:
            key = comms.Key()
            key.name = name
            comms[key] = ctypes.c_ubyte(1)
            name_heads[ctypes.c_int(name[0] | (name[1] if len(name) > 1 else 0) << 8)] = ctypes.c_ubyte(1)
        prefixes, prefix_heads = self._bpf[b"forward_prefixes"], self._bpf[b"prefix_heads"]
        for prefix in self._prefixes:
            raw = prefix.encode()
            key = prefixes.Key()
            key.prefixlen = len(raw) * 8
            key.path = raw
            prefixes[key] = ctypes.c_ubyte(1)
            for second in [raw[1]] if len(raw) > 1 else range(256):   # "/" forwards every path
                prefix_heads[ctypes.c_int(second)] = ctypes.c_ubyte(1)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._bpf.ring_buffer_poll(self._poll_ms)
        self._bpf.ring_buffer_consume()

    def _on_sample(self, _ctx: object, data: int, size: int) -> None:
        try:
            self._on_exec(self._parse(ctypes.string_at(data, size)))
        except Exception as exc:  # a consumer bug must not kill the poll thread
            self.callback_errors += 1
            self.last_callback_error = f"{type(exc).__name__}: {exc}"

    def _parse(self, raw: bytes) -> ExecRecord:
        ev = self._event_type.from_buffer_copy(raw[: self._args_offset].ljust(ctypes.sizeof(self._event_type), b"\0"))
        argv = _split_args(raw[self._args_offset : self._args_offset + ev.args_size])
        flags = ev.flags
        if len(argv) < ev.argc or any(len(a) >= SIZES["ARG_MAX_LEN"] - 1 for a in argv):
            flags |= F_ARGS_TRUNCATED   # the kernel leaves this part of the check to us
        return ExecRecord(
            time=self._wall_offset + ev.ktime_ns / 1e9,
            ktime_ns=ev.ktime_ns,
            pid=ev.pid,
            tid=ev.old_tid,
            ppid=ev.ppid,
            uid=ev.uid,
            gid=ev.gid,
            cgroup_id=ev.cgroup_id,
            comm=_cstr(_field_bytes(ev, "comm")),
            filename=_cstr(_field_bytes(ev, "filename")),
            argv=argv,
            argc=ev.argc,
            flags=flags,
        )
