"""Loads the eBPF exec probe (bpf/netutil_exec.bpf.c) with bcc and hands its raw exec
records to user space.

The probe is the only part of the project that touches the kernel. It compiles the C
program at start-up (bcc), fills the in-kernel filter (catalog comm names, forwarded path
prefixes), polls the ring buffer on a thread and calls `on_exec` with each raw record.
Enrichment (paths, users, containers, IPs) happens downstream, in user space.

Two modes (docs/design.md): btf, the default where the kernel describes itself in BTF, hooks
only sched_process_exec and task_newtask (raw tracepoints) and reads the few struct
fields it needs at offsets taken from that BTF; tracepoint, the fallback, hooks the exec
syscalls' tracepoints, which tax every syscall on the host. btf mode checks itself on a
real exec before it is trusted, and falls back with the reason when the check fails.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

from .btf import VMLINUX, Btf, BtfError
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
F_SCRIPT = 32          # btf mode: a #! script, argv as the kernel rewrote it (interpreter first)

# AncestryEntry.flags. I_* mirror the C defines; A_FORKED is user space's.
I_SCRIPT_NOEXEC = 1    # exec failed with ENOEXEC: a shell interprets `file` (no #! line)
A_FORKED = 2           # the process has not exec'd since its fork: file/head are its parent's
I_SCRIPT = 4           # btf mode: `file` is a #! script, its head starts with the interpreter

MODES = ("auto", "btf", "tracepoint")   # auto: btf where the kernel has BTF, else tracepoint

# Struct members btf mode reads, by the -D name the C program uses. Their offsets come
# from the running kernel's BTF, never from headers (btf.py says why).
BTF_FIELDS: dict[str, tuple[str, str]] = {
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_TASK_PID": ("task_struct", "pid"),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start"),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end"),
    "OFF_BPRM_FILENAME": ("linux_binprm", "filename"),
    "OFF_BPRM_INTERP": ("linux_binprm", "interp"),
    "OFF_BPRM_ARGC": ("linux_binprm", "argc"),
    "OFF_BPRM_BUF": ("linux_binprm", "buf"),
}
# The fentry that names scripts without #! reads the exec syscall's number and argv from
# the registers it was entered with. x86_64 only: bcc 0.26 attaches fentry nowhere else.
FENTRY_FUNCTION = "security_bprm_check"
FENTRY_FIELDS: dict[str, tuple[str, str]] = {
    "OFF_REGS_NR": ("pt_regs", "orig_ax"),
    "OFF_REGS_EXECVE_ARGV": ("pt_regs", "si"),      # execve(filename, argv, envp)
    "OFF_REGS_EXECVEAT_ARGV": ("pt_regs", "dx"),    # execveat(dfd, filename, argv, envp, flags)
}
FENTRY_CONSTANTS = {"NR_EXECVE": 59, "NR_EXECVEAT": 322}
NOT_NAMED_WITHOUT_FENTRY = "scripts run without a #! line are not named in the ancestry"

_COUNTERS = ("execs_seen", "forwarded", "lost", "failed")

# What tracepoint mode attaches (btf mode: the raw tracepoints sched_process_exec and
# task_newtask, and the fentry where the kernel allows it).
TRACEPOINTS = (
    ("syscalls", "sys_enter_execve"),
    ("syscalls", "sys_enter_execveat"),
    ("syscalls", "sys_exit_execve"),
    ("syscalls", "sys_exit_execveat"),
    ("sched", "sched_process_exec"),
    ("task", "task_newtask"),
)
_TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
NEEDS_ROOT = "the eBPF probe needs root: run as root (sudo)"


class ProbeError(RuntimeError):
    """The probe cannot load. The message names the cause and the fix."""


class BtfRefused(Exception):
    """btf mode cannot be trusted on this kernel; the message says why."""


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
    failed: int          # exec syscalls that failed (tracepoint mode; btf mode sees only successes)


def check_bpf_syscall() -> str | None:
    """Create and close a one-slot BPF array map; return why that failed, or None.

    This is the cheapest proof that the kernel accepts bpf() from this process, so that
    set-up and start-up can stop early with the cause instead of deep inside bcc.
    """
    number = _BPF_SYSCALL.get(platform.machine())
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
    """Raise ProbeError naming the first missing prerequisite of either mode, cheapest
    check first."""
    if os.geteuid() != 0:
        raise ProbeError(NEEDS_ROOT)
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


def _tracepoint_preflight() -> None:
    """What tracepoint mode needs beyond preflight(): tracefs, debugfs, the tracepoints."""
    root = next((p for p in _TRACEFS if (p / "events").is_dir()), None)
    if root is None:
        raise ProbeError("tracefs is not mounted: run 'mount -t tracefs nodev /sys/kernel/tracing' (or 'make setup')")
    for category, name in TRACEPOINTS:
        if not (root / "events" / category / name).is_dir():
            raise ProbeError(f"tracepoint {category}:{name} missing: the kernel needs CONFIG_FTRACE_SYSCALLS and CONFIG_TRACEPOINTS")
    if not Path("/sys/kernel/debug/tracing/events").is_dir():
        # bcc 0.26 reads tracepoint formats through debugfs.
        raise ProbeError("debugfs is not mounted: run 'mount -t debugfs nodev /sys/kernel/debug' (or 'make setup')")


def probe_mode_option(parser: argparse.ArgumentParser) -> None:
    """--probe-mode, the same for watch, record and the extension."""
    parser.add_argument(
        "--probe-mode", choices=MODES, default="auto",
        help="btf: no syscall tax, offsets from the kernel's BTF; tracepoint: exec syscall tracepoints; "
             "auto (default): btf where it passes its self-check, else tracepoint",
    )


def btf_offsets(btf: Btf) -> dict[str, int]:
    """The member offsets btf mode needs, from the kernel's BTF. Raises BtfError."""
    return {name: btf.offset(struct, member) for name, (struct, member) in BTF_FIELDS.items()}


def btf_defines(btf: Btf, offsets: dict[str, int], fentry: bool) -> dict[str, int]:
    """The -D flags of btf mode: its offsets, and the fentry's when it is wanted."""
    defines = {"PROBE_BTF": 1, **offsets}
    if fentry:
        defines |= {"HAVE_FENTRY": 1, **FENTRY_CONSTANTS}
        defines |= {name: btf.offset(*field) for name, field in FENTRY_FIELDS.items()}
    return defines


def fentry_problem(btf: Btf) -> str | None:
    """Why the fentry on FENTRY_FUNCTION cannot be used here, or None.

    Loads a two-instruction fentry program (never attached) so that a kernel that refuses
    trampolines says so before bcc compiles anything: bcc would print the kernel's refusal
    on stderr and abandon the whole program.
    """
    if platform.machine() != "x86_64":
        return f"no BPF trampolines for {platform.machine()} in bcc 0.26"
    try:
        func_id = btf.function_id(FENTRY_FUNCTION)
    except BtfError as exc:
        return str(exc)
    bpf_prog_load, prog_type_tracing, trace_fentry = 5, 26, 24
    insns = bytes.fromhex("b700000000000000" "9500000000000000")   # r0 = 0; exit
    license_ = ctypes.create_string_buffer(b"GPL")
    code = ctypes.create_string_buffer(insns, len(insns))
    attr = (ctypes.c_uint8 * 144)()
    fields = ((0, "I", prog_type_tracing), (4, "I", 2), (8, "Q", ctypes.addressof(code)),
              (16, "Q", ctypes.addressof(license_)), (68, "I", trace_fentry), (108, "I", func_id))
    for offset, kind, value in fields:
        struct.pack_into("<" + kind, attr, offset, value)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_BPF_SYSCALL.get(platform.machine(), -1), bpf_prog_load, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return None
    err = ctypes.get_errno()
    return f"the kernel refuses fentry programs ({errno.errorcode.get(err, err)})"


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
        mode: str = "auto",
        btf_offsets: dict[str, int] | None = None,
    ) -> None:
        """mode: one of MODES. btf_offsets: the struct offsets btf mode uses, instead of
        the kernel's (to prove that wrong ones are caught)."""
        if mode not in MODES:
            raise ProbeError(f"unknown probe mode {mode!r}: use one of {', '.join(MODES)}")
        self._requested = mode
        self._btf_offsets = btf_offsets
        self.mode = ""        # the mode in force once started: btf or tracepoint
        self.mode_note = ""   # why btf mode was refused, or what it cannot see on this kernel
        self._check_pid = 0
        self._check_record: ExecRecord | None = None
        self._comms = sorted({comm_key(n) for n in comm_names})
        self._prefixes = tuple(dict.fromkeys([*forward_prefixes, *FD_PATH_PREFIXES]))
        self._on_exec = on_exec
        self._poll_ms = poll_ms
        self._bpf: Any = None   # bcc's BPF object (bcc has no type information)
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
        """Compile, load and attach the program in the best mode this kernel allows, fill
        the filter maps, start polling."""
        preflight()
        if self._requested != "tracepoint":
            try:
                self._load_btf()
            except BtfRefused as exc:
                if self._requested == "btf":
                    raise ProbeError(f"btf mode refused: {exc}; run with --probe-mode tracepoint") from exc
                self.mode_note = f"btf mode refused: {exc}"
        if not self.mode:
            _tracepoint_preflight()
            self._bpf = self._compile({"PROBE_BTF": 0})
            self._prepare()
            self.mode = "tracepoint"
        self._thread = threading.Thread(target=self._poll, name="netutil-probe", daemon=True)
        self._thread.start()

    def _load_btf(self) -> None:
        """Load btf mode and check it on a real exec; BtfRefused says why it cannot be used."""
        try:
            btf = Btf.load(VMLINUX)
            offsets = self._btf_offsets or btf_offsets(btf)
        except BtfError as exc:
            raise BtfRefused(str(exc)) from exc
        no_fentry = fentry_problem(btf)
        try:
            self._bpf = self._compile(btf_defines(btf, offsets, fentry=no_fentry is None))
        except ProbeError as exc:
            raise BtfRefused(str(exc)) from exc
        no_fentry = no_fentry or self._bpf.fentry_error
        if no_fentry:
            self.mode_note = f"{NOT_NAMED_WITHOUT_FENTRY} ({no_fentry})"
        try:
            self._prepare()
            self._self_check()
        except BtfRefused:
            self._bpf.cleanup()
            self._bpf = None
            raise
        self.mode = "btf"

    @staticmethod
    def _compile(defines: dict[str, int]) -> "object":
        """bcc's BPF object for the program with these -D flags (and the sizes); it
        attaches its programs as it loads them. An fentry the kernel refuses leaves its
        reason in the object's fentry_error."""
        from bcc import BPF

        class _Bpf(BPF):
            """bcc's BPF, where an fentry the kernel refuses to attach is noted, not fatal."""

            fentry_error = ""

            def attach_kfunc(self, fn_name: bytes = b"") -> "_Bpf":
                try:
                    return super().attach_kfunc(fn_name=fn_name)
                except Exception as exc:   # bcc raises bare Exception
                    self.fentry_error = str(exc)
                    return self

        cflags = [f"-D{k}={v}" for k, v in {**SIZES, **defines}.items()] + ["-Wno-unused-function"]
        try:
            bpf = _Bpf(text=bpf_source().encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception with the compiler/verifier log
            raise ProbeError(f"the BPF program failed to load: {str(exc).strip()[:2000]}") from exc
        return_freed_memory()   # clang's freed heap (~25 MB)
        page_out_compiler()     # and its code (~85 MB), which never runs again
        return bpf

    def _prepare(self) -> None:
        """Fill the filter and open the ring buffer of the loaded program."""
        self._fill_filter()
        self._procs = self._bpf[b"procs"]
        self._event_type = self._bpf[b"event_heap"].Leaf._type_   # per-CPU: an array of them
        self._args_offset = self._event_type.args.offset
        self._bpf[b"events"].open_ring_buffer(self._on_sample)

    def _self_check(self, timeout_s: float = 2.0) -> None:
        """Exec known programs by a path the filter forwards (/dev/fd/N) and compare what
        btf mode reports with what ran. Each offset shows in a field: the parent (the
        task's pid), argv and the ancestry head (mm and its arg range), argc, the file and
        the script flag (bprm's). An ELF and a #! script, so that bprm's filename and
        interp, equal for the one, differ for the other."""
        true = os.path.realpath(shutil.which("true") or "/bin/true").encode()
        args = (b"netutil-selfcheck", os.urandom(6).hex().encode(), b"x" * 40)
        binary = os.open(true, os.O_RDONLY)
        script = os.memfd_create("netutil-selfcheck")
        try:
            os.write(script, b"#!" + true + b"\n")
            fd_path = f"/dev/fd/{script}".encode()
            for fd, argv, flag in ((binary, args, 0), (script, (true, fd_path, *args[1:]), F_SCRIPT)):
                rec, slot = self._check_exec(fd, args, timeout_s)
                wrong = [
                    f"{what} {got!r}, expected {want!r}"
                    for what, got, want in (
                        ("parent", rec.ppid, os.getpid()),
                        ("argv", rec.argv, argv),
                        ("argc", rec.argc, len(argv)),
                        ("file", rec.filename, f"/dev/fd/{fd}".encode()),
                        ("script flag", rec.flags & F_SCRIPT, flag),
                        ("ancestry head", slot.head if slot else None, argv),
                    )
                    if got != want
                ]
                if wrong:
                    raise BtfRefused("the self-check exec read " + "; ".join(wrong) + ": the BTF offsets do not fit this kernel")
        finally:
            os.close(binary)
            os.close(script)

    def _check_exec(self, fd: int, argv: tuple[bytes, ...], timeout_s: float) -> tuple[ExecRecord, AncestryEntry | None]:
        """Run /dev/fd/fd with argv; its record (kept from on_exec) and ancestry entry."""
        self._check_record = None
        try:
            child = subprocess.Popen(argv, executable=f"/dev/fd/{fd}", pass_fds=(fd,))
            self._check_pid = child.pid
            child.wait(timeout=timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BtfRefused(f"the self-check exec failed: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while self._check_record is None and time.monotonic() < deadline:
            self._bpf.ring_buffer_poll(50)
        rec, self._check_pid = self._check_record, 0
        if rec is None:
            raise BtfRefused(f"the self-check exec (pid {child.pid}) was not reported")
        return rec, self.ancestry(child.pid)

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
        image: ctypes.Structure | None = proc
        flags = 0
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
            rec = self._parse(ctypes.string_at(data, size))
            if rec.pid == self._check_pid:
                self._check_record = rec   # the self-check's own exec: not the host's
                return
            self._on_exec(rec)
        except Exception as exc:  # a consumer bug must not kill the poll thread
            self.callback_errors += 1
            self.last_callback_error = f"{type(exc).__name__}: {exc}"

    def _parse(self, raw: bytes) -> ExecRecord:
        ev = self._event_type.from_buffer_copy(raw[: self._args_offset].ljust(ctypes.sizeof(self._event_type), b"\0"))
        argv = _split_args(raw[self._args_offset : self._args_offset + ev.args_size])
        # The same limits in both modes: btf mode reads argv in one block, so the count
        # and per-argument caps that tracepoint mode applies in the kernel apply here.
        cut = SIZES["ARG_MAX_LEN"] - 1
        argv = tuple(a[:cut] for a in argv[: SIZES["MAX_ARGS"]])
        flags = ev.flags
        if len(argv) < ev.argc or any(len(a) >= cut for a in argv):
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
