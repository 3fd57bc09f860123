"""What /proc says of a live process: read lazily, and '' / () / -1 once it is gone.

Enrichment runs right after an exec, while the process and its parent usually still
live; every read here may lose that race, so none raises.
"""

from __future__ import annotations

import os
from typing import Iterable

ANCESTOR_ARGV_MAX = 4096   # bytes of an ancestor's argv read from /proc (the kernel keeps less)


def text(raw: bytes) -> str:
    """Bytes from the kernel as text; undecodable bytes become \\xNN escapes, not lost."""
    return raw.decode("utf-8", "backslashreplace")


def cmdline(args: Iterable[bytes]) -> str:
    return " ".join(text(a) for a in args)


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def absolute(path: str, cwd: str) -> str:
    """path with cwd applied when it is relative and cwd is known; else as given."""
    if path.startswith("/") or not cwd:
        return path
    return os.path.normpath(os.path.join(cwd, path))


class ProcView:
    """Lazy reads of /proc/<pid>: each file at most once, '' / () / -1 when gone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._status: dict[str, str] | None = None

    def cwd(self) -> str:
        return readlink(f"/proc/{self.pid}/cwd")

    def exe(self) -> str:
        return readlink(f"/proc/{self.pid}/exe")

    def sees(self, path: str) -> str:
        """Where the sensor finds path as this process sees it (its mount namespace: a
        container's /app is not the host's)."""
        return f"/proc/{self.pid}/root{path}"

    def fd(self, n: int) -> str:
        """What fd n is open on: a path, 'pipe:[ino]', 'socket:[ino]', ...; '' when closed or gone."""
        return readlink(f"/proc/{self.pid}/fd/{n}")

    def children(self) -> list[int]:
        """The children of the process's main thread (those of other threads are not
        listed: shells and the utilities' launchers fork from their main thread)."""
        raw = read(f"/proc/{self.pid}/task/{self.pid}/children") or b""
        return [int(c) for c in raw.split()]

    def argv(self) -> tuple[bytes, ...]:
        raw = (read(f"/proc/{self.pid}/cmdline") or b"")[:ANCESTOR_ARGV_MAX]
        return tuple(raw.rstrip(b"\0").split(b"\0")) if raw else ()

    def _fields(self) -> dict[str, str]:
        if self._status is None:
            raw = read(f"/proc/{self.pid}/status") or b""
            self._status = {}
            for line in raw.decode(errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key in ("PPid", "Uid"):
                    self._status[key] = value
                    if len(self._status) == 2:
                        break
        return self._status

    def ppid(self) -> int:
        return int(self._fields().get("PPid", "0").strip() or 0)

    def start_time(self) -> int:
        """Clock ticks since boot when the process started (stat field 22); -1 when gone.
        With the pid, it names one process: a reused pid starts later."""
        raw = read(f"/proc/{self.pid}/stat")
        if not raw:
            return -1
        return int(raw.rsplit(b")", 1)[1].split()[19])

    def uid(self) -> int:
        uids = self._fields().get("Uid", "").split()
        return int(uids[0]) if uids else -1
