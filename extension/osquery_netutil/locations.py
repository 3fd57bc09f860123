"""Where a launched program is suspicious: the writable directories and fd path prefixes.

One list, used by the kernel filter (which execs reach user space), by enrichment and by
the packs' SQL. Each entry ends with '/' so that `/tmpfoo` does not match `/tmp/`.
"""

from __future__ import annotations

# Places ordinary software does not install programs into, but that an intruder can
# write to: world-writable scratch space, per-user runtime dirs, lock and mail spools,
# crash dumps and web roots (where a web shell drops its stage two). The union of what
# Datadog, Elastic, Sigma and Falco test, minus /home (too many legitimate user tools).
WRITABLE_DIRS: tuple[str, ...] = (
    "/tmp/",
    "/var/tmp/",
    "/dev/shm/",
    "/run/shm/",
    "/run/user/",
    "/run/lock/",
    "/var/lock/",
    "/var/mail/",
    "/var/crash/",
    "/var/www/",
)

# Paths that name an open file rather than a place: fexecve(), memfd_create() payloads,
# /proc/<pid>/fd/N and /proc/self/exe re-execs. Always forwarded by the kernel filter.
FD_PATH_PREFIXES: tuple[str, ...] = (
    "/dev/fd/",
    "/proc/",
)
