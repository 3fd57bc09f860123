"""Where a launched program is suspicious: the writable directories and fd path prefixes.

One list, used by the kernel filter (which execs reach user space), by enrichment and by
the packs' SQL. Each entry ends with '/' so that `/tmpfoo` does not match `/tmp/`.
"""

from __future__ import annotations

# World-writable or per-user scratch space that ordinary software does not install into.
WRITABLE_DIRS: tuple[str, ...] = (
    "/tmp/",
    "/var/tmp/",
    "/dev/shm/",
    "/run/shm/",
    "/run/user/",
)

# Paths that name an open file rather than a place: fexecve(), memfd_create() payloads,
# /proc/<pid>/fd/N and /proc/self/exe re-execs. Always forwarded by the kernel filter.
FD_PATH_PREFIXES: tuple[str, ...] = (
    "/dev/fd/",
    "/proc/",
)
