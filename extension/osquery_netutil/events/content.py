"""Renamed copies of network utilities, found by content: matched_by='content'.

`cp /usr/bin/nc /tmp/upd; /tmp/upd -e /bin/sh ...` hides from every name-based rule. The
kernel forwards every exec from a writable directory, so here the executed file is
compared with the catalog utilities installed on this host: first by identity (device and
inode: hard links, symlinks), then by size, and only when a size matches by sha256. Most
files are never read.

The file is attacker-controlled, so it is opened with O_NOFOLLOW | O_NONBLOCK (a planted
symlink or FIFO cannot redirect or hang the reader), checked with fstat to be a regular
file, and hashed only up to MAX_BYTES. Hashes are cached by (device, inode, size, mtime,
ctime): ctime cannot be set from user space, so rewriting a file and restoring its mtime
does not reuse a stale hash.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable

from osquery_netutil.catalog import Catalog, Utility

SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
MAX_BYTES = 64 << 20       # no network utility is larger; bigger files are not hashed
_RESCAN_AFTER_S = 300.0    # pick up utilities installed after start-up
_CACHE_MAX = 4096

_Key = tuple[int, int, int, int, int]   # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


Identity = tuple[int, int]              # st_dev, st_ino of an executed image, from the kernel


def is_image(st: os.stat_result, identity: Identity | None) -> bool:
    """Whether st is the file the kernel saw exec'd (True when it did not say). On an
    anonymous device (overlayfs, btrfs subvolumes: major 0) stat may report another
    device than the superblock's, so the inode alone decides there."""
    if identity is None:
        return True
    dev, ino = identity
    return st.st_ino == ino and (st.st_dev == dev or os.major(dev) == 0)


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ContentMatcher:
    """Which installed catalog utility, if any, a file is a copy of."""

    def __init__(self, catalog: Catalog, search_path: Iterable[str] = SYSTEM_PATH) -> None:
        self._catalog = catalog
        self._search_path = tuple(search_path)
        self._lock = threading.Lock()
        self._installed: dict[tuple[int, int], Utility] = {}     # (dev, ino) -> utility
        self._by_size: dict[int, list[tuple[str, Utility]]] = {}
        self._hashes: dict[_Key, bytes] = {}
        self._scanned_at = float("-inf")
        # (st_ino, st_ctime_ns) of the files whose content was read and decided (an installed
        # utility's inode, no catalog size, or hashes compared): only those may be given a
        # verdict, never a file that could not be opened or read.
        self.decided: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.generation = 0   # grows when the installed utilities change: earlier verdicts are void

    def match_path(self, path: str, identity: Identity | None = None) -> Utility | None:
        """The utility `path` is, or is a copy of. A symlink or hard link to an installed
        utility is recognised from metadata alone; content is read only from a regular
        file at `path` itself, never through a symlink. With `identity` (the image the
        kernel saw exec'd), a file that is not that image is never judged: one put at the
        path since, or a script whose image is its interpreter."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not is_image(st, identity):
            return None
        with self._lock:
            self._rescan_if_old()
            hit = self._installed.get((st.st_dev, st.st_ino))
        return hit if hit is not None else self._match(path, os.O_NOFOLLOW, identity)

    def match_proc_exe(self, pid: int, identity: Identity | None = None,
                       unchanged: Callable[[], bool] | None = None) -> Utility | None:
        """The utility the running process pid executes (fd and memfd execs, deleted
        files), only while it still runs the image that was reported: it may have exec'd
        another since (a trampoline that execs the utility). The kernel's `identity` says
        so in btf mode; `unchanged()`, asked once the file is open, where it does not."""
        return self._match(f"/proc/{pid}/exe", 0, identity, unchanged)

    def _match(self, path: str, extra_flags: int, identity: Identity | None,
               unchanged: Callable[[], bool] | None = None) -> Utility | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | extra_flags)
        except OSError:
            return None   # gone, a symlink (ELOOP), or unreadable: nothing to compare
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES or not is_image(st, identity):
                return None
            if unchanged is not None and not unchanged():
                return None
            with self._lock:
                self._rescan_if_old()
                hit = self._installed.get((st.st_dev, st.st_ino))
                if hit is not None or st.st_size not in self._by_size:
                    self._decide(st)
                    return hit
                candidates = list(self._by_size[st.st_size])
            digest = self._digest_fd(fd, st)
        finally:
            os.close(fd)
        if digest is None:
            return None
        known = [(self._digest_path(path), utility) for path, utility in candidates]
        if all(d is not None for d, _ in known):
            self._decide(st)
        return next((utility for d, utility in known if d == digest), None)

    def _decide(self, st: os.stat_result) -> None:
        self.decided[(st.st_ino, st.st_ctime_ns)] = None
        if len(self.decided) > _CACHE_MAX:
            self.decided.popitem(last=False)

    def _rescan_if_old(self) -> None:
        if time.monotonic() - self._scanned_at < _RESCAN_AFTER_S:
            return
        self._scanned_at = time.monotonic()
        installed: dict[tuple[int, int], Utility] = {}
        by_size: dict[int, list[tuple[str, Utility]]] = {}
        for utility in self._catalog.utilities:
            for basename in utility.basenames:
                for directory in self._search_path:
                    path = os.path.join(directory, basename)
                    try:
                        st = os.stat(path)   # installed ones may be symlinks (alternatives)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in installed:
                        continue
                    installed[(st.st_dev, st.st_ino)] = utility
                    by_size.setdefault(st.st_size, []).append((path, utility))
        if installed.keys() != self._installed.keys() and self._installed:
            self.generation += 1
        self._installed, self._by_size = installed, by_size

    def _digest_path(self, path: str) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return self._digest_fd(fd, os.fstat(fd))
        finally:
            os.close(fd)

    def _digest_fd(self, fd: int, st: os.stat_result) -> bytes | None:
        key = _key(st)
        with self._lock:
            cached = self._hashes.get(key)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        left = st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                return None   # truncated while reading: not a copy of anything
            h.update(chunk)
            left -= len(chunk)
        digest = h.digest()
        with self._lock:
            if len(self._hashes) >= _CACHE_MAX:
                self._hashes.clear()
            self._hashes[key] = digest
        return digest
