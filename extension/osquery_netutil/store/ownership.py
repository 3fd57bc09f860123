"""Who writes a store: the lock its one writer holds (with its pid), and the status row it
publishes beside the store, signed with that pid, for readers in other processes (`query`,
a second extension). A reader shows a status only while its signer holds the lock, so a run
that died is never shown as live; a status from before this boot describes no restart."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
from pathlib import Path
from typing import Any

from osquery_netutil.store.errors import StoreBusy


@functools.cache
def boot_id() -> str:
    """This boot's id (a random UUID the kernel draws at boot): read once, it cannot change."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class WriterLock:
    """`<store>.lock`: flock'ed by the writer, which writes its pid into it."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.path = store_path.with_name(store_path.name + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> None:
        """Become the writer. Raises StoreBusy naming the holder's pid, OSError on a file
        that cannot be written."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreBusy(
                f"{self.store_path}: another osquery-netutil (pid {holder}) is writing this store: "
                "read it with 'osquery-netutil query', or give this one another --store"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)   # a full disk: give the lock back, or this process would keep it
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> int | None:
        """The pid of the process writing this store, or None when no writer runs."""
        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None   # nobody holds the writer's lock
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)


class StatusFile:
    """`<store>.status`: {writer_pid, boot_id, status}, replaced whole at each publish."""

    def __init__(self, store_path: Path) -> None:
        self.path = store_path.with_name(store_path.name + ".status")
        self._lock = threading.Lock()   # the extension publishes from its attach and its timer threads

    def signed(self) -> dict[str, Any] | None:
        """The file as published, or None."""
        try:
            signed = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return signed if isinstance(signed, dict) and isinstance(signed.get("status"), dict) else None

    def previous_run(self) -> dict[str, Any] | None:
        """The last status the previous writer published, with its pid, if it ran since this
        boot (a status from before a reboot is no restart)."""
        signed = self.signed()
        if signed is None or signed.get("boot_id") != boot_id():
            return None
        return {**signed["status"], "pid": signed.get("writer_pid")}

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def publish(self, status: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._lock:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"writer_pid": os.getpid(), "boot_id": boot_id(), "status": status}, f)
            os.replace(tmp, self.path)

    def by(self, writer: int | None) -> dict[str, Any] | None:
        """The status, when the given writer (the lock's holder now) signed it."""
        signed = self.signed() if writer is not None else None
        return signed["status"] if signed is not None and signed.get("writer_pid") == writer else None
