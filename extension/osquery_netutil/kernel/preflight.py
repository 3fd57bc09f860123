"""Before bcc compiles anything: whether this process and kernel can run the probe,
checked cheapest first with raw bpf() calls, so that start-up stops with the cause and the
fix instead of deep inside bcc."""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import struct
from pathlib import Path

from osquery_netutil.kernel.btf import Btf, BtfError
from osquery_netutil.kernel.fields import FENTRY_FUNCTION

MODES = ("auto", "btf", "tracepoint")   # auto: btf where the kernel has BTF, else tracepoint

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



def bpf_call(command: int, attr: ctypes.Array[ctypes.c_uint8] | ctypes.Array[ctypes.c_uint32]) -> tuple[int, int]:
    """The bpf() system call with a command and its attribute block: (the fd it returned,
    or -1, and errno). -1 with ENOSYS on an architecture this project has no number for."""
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        return -1, errno.ENOSYS
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, command, ctypes.byref(attr), ctypes.sizeof(attr))
    return int(fd), ctypes.get_errno() if fd < 0 else 0


def check_bpf_syscall() -> str | None:
    """Create and close a one-slot BPF array map; return why that failed, or None.

    This is the cheapest proof that the kernel accepts bpf() from this process, so that
    set-up and start-up can stop early with the cause instead of deep inside bcc.
    """
    if platform.machine() not in _BPF_SYSCALL:
        return f"unsupported architecture {platform.machine()}: the probe supports x86_64 and aarch64"
    bpf_map_create, bpf_map_type_array = 0, 2
    fd, err = bpf_call(bpf_map_create, (ctypes.c_uint32 * 32)(bpf_map_type_array, 4, 4, 1))
    if fd >= 0:
        os.close(fd)
        return None
    if err == errno.EPERM:
        return "bpf() refused (EPERM): run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)"
    if err == errno.ENOSYS:
        return "bpf() not available (ENOSYS): the kernel needs CONFIG_BPF_SYSCALL=y"
    return f"bpf() failed ({errno.errorcode.get(err, err)}): the kernel refuses BPF maps"


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


def tracepoint_preflight() -> None:
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
    fd, err = bpf_call(bpf_prog_load, attr)
    if fd >= 0:
        os.close(fd)
        return None
    return f"the kernel refuses fentry programs ({errno.errorcode.get(err, err)})"
