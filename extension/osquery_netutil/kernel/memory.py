"""Keeping the long-running processes' resident memory flat.

glibc keeps freed heap for reuse: clang compiling the probe, or a multi-megabyte query
answer, leaves tens of MB resident that nothing uses. And the compiler's own code,
LLVM and clang (about 85 MB once the probe is compiled), stays resident although the
process never runs it again. Both are handed back to the kernel here; each step is a
no-op where it cannot apply (not glibc, a kernel before 5.4).
"""

from __future__ import annotations

import ctypes
import re

# madvise(2): reclaim these pages now. Clean file pages are dropped and read back from
# the file if ever touched again, so nothing can break, it can only cost a page fault.
MADV_PAGEOUT = 21
# The libraries bcc compiles with; nothing after the compile runs their code.
COMPILER_LIBRARIES = re.compile(r"/lib(LLVM|clang)[-.][^/]*$")


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def return_freed_memory() -> None:
    """Give the heap's free pages back to the kernel."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def compiler_mappings(maps: str) -> list[tuple[int, int]]:
    """(start, length) of each mapping of LLVM or clang in a /proc/PID/maps text."""
    spans = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and COMPILER_LIBRARIES.search(fields[5]):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end - start))
    return spans


def page_out_compiler() -> None:
    """Ask the kernel to reclaim the compiler's resident pages.

    Called once the probe is compiled: for the rest of the run LLVM and clang are only
    mapped, and their pages would otherwise count in the extension's RSS for good."""
    libc = _libc()
    if libc is None:
        return
    with open("/proc/self/maps") as f:
        spans = compiler_mappings(f.read())
    madvise = libc.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, length in spans:
        if madvise(start, length, MADV_PAGEOUT) != 0:
            return                  # EINVAL: a kernel without MADV_PAGEOUT; nothing else to do
