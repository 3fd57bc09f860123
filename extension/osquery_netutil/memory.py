"""Keeping the long-running processes' resident memory flat.

glibc keeps freed heap for reuse: clang compiling the probe, or a multi-megabyte query
answer, leaves tens of MB resident that nothing uses. This hands it back; a no-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes

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
