"""Which container a process runs in: the container_id and cgroup_path columns.

The kernel gives the probe the cgroup v2 id of the exec'ing task (the inode of its
directory under the v2 mount). That id alone misses containers on hybrid hosts, where a
runtime with the cgroupfs driver places a container only in the v1 hierarchies; so while
the process (or else its parent) is alive, /proc/<pid>/cgroup, which lists every
hierarchy, is read first, and the v2 id is the fallback for processes already gone.

Runtimes are recognised by the path patterns they really create, not by "some long hex
string": a sandbox's `/process_api/<32 hex>` is not a container.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

_ID = r"([0-9a-f]{64})"
# One pattern per runtime layout, systemd and cgroupfs drivers. Checked against each
# path component, so the id is found at any depth (kubepods nest them).
_RUNTIME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(rf"^docker-{_ID}\.scope$")),               # systemd driver
    ("containerd", re.compile(rf"^cri-containerd-{_ID}\.scope$")),   # CRI, systemd driver
    ("cri-o", re.compile(rf"^crio-(?:conmon-)?{_ID}(?:\.scope)?$")),
    ("podman", re.compile(rf"^libpod-(?:conmon-)?{_ID}(?:\.scope)?$")),
    ("nerdctl", re.compile(rf"^nerdctl-{_ID}\.scope$")),
)
# Bare ids are only a container below a runtime's parent directory (cgroupfs driver).
_BARE_ID = re.compile(rf"^{_ID}$")
_BARE_PARENTS = re.compile(r"^(docker|kubepods.*|besteffort|burstable|guaranteed|pod[0-9a-f_-]+(\.slice)?|"
                           r"libpod_parent|machine\.slice|actions_job|ecs|[a-z0-9.-]+\.slice|default|k8s\.io|moby)$")

V2_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
_RESCAN_AFTER_S = 1.0
_PARENT_CACHE_S = 1.0


def container_id(cgroup_path: str) -> str:
    """The 64-hex container id in a cgroup path, or '' on the host."""
    parts = [p for p in cgroup_path.split("/") if p]
    for i, part in enumerate(parts):
        for _runtime, pattern in _RUNTIME_PATTERNS:
            m = pattern.match(part)
            if m:
                return m.group(1)
        if i > 0 and _BARE_ID.match(part) and _BARE_PARENTS.match(parts[i - 1]):
            return part
    return ""


def choose_path(proc_cgroup: str) -> str:
    """From /proc/<pid>/cgroup text, the path that names the container if any hierarchy
    does (v2 first), else the v2 path, else the first one."""
    paths: list[str] = []
    for line in proc_cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            hierarchy, _controllers, path = fields
            paths.insert(0, path) if hierarchy == "0" else paths.append(path)
    return next((p for p in paths if container_id(p)), paths[0] if paths else "")


def v2_root() -> Path | None:
    """The cgroup v2 mount: /sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on pure v2."""
    for mount in V2_MOUNTS:
        if (mount / "cgroup.procs").exists() and (mount / "cgroup.controllers").exists():
            return mount
    return None


class CgroupResolver:
    """cgroup path of a process: from /proc while it lives, else from its v2 cgroup id.

    The id -> path map comes from walking the v2 tree, rescanned when an unknown id shows
    up (a container started since the last walk). An id that a walk did not find is not
    walked for again for a second: a storm of execs from a vanished cgroup costs one walk
    a second, while a new container is found at its first exec, however recent the last
    walk (a gate on the walk itself made the second of two containers started within a
    second go unnamed once its processes had exited).
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root if root is not None else v2_root()
        self._by_inode: dict[int, str] = {}
        self._parents: dict[int, tuple[tuple[int, int], float, str]] = {}
        self._missed: dict[int, float] = {}   # cgroup id -> when a walk did not find it
        self._lock = threading.Lock()

    def path_of(self, pid: int, cgroup_id: int, ppid: int = 0) -> str:
        """The process's own /proc entry if it still lives, else its parent's (cached a
        second: a script's many children share it), else the kernel's cgroup id."""
        path = self._read(pid)
        if path is not None:
            return path
        key = (ppid, cgroup_id)
        now = time.monotonic()
        cached = self._parents.get(ppid)
        if cached is not None and cached[0] == key and now - cached[1] < _PARENT_CACHE_S:
            return cached[2]
        path = self._read(ppid)
        if path is None:
            return self.path_of_id(cgroup_id)
        if len(self._parents) >= 4096:
            self._parents.clear()
        self._parents[ppid] = (key, now, path)
        return path

    @staticmethod
    def _read(pid: int) -> str | None:
        if pid <= 0:
            return None
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                return choose_path(f.read())
        except OSError:
            return None   # gone already

    def path_of_id(self, cgroup_id: int) -> str:
        with self._lock:
            path = self._by_inode.get(cgroup_id)
            now = time.monotonic()
            if path is None and now - self._missed.get(cgroup_id, float("-inf")) > _RESCAN_AFTER_S:
                self._scan()
                path = self._by_inode.get(cgroup_id)
                if path is None:
                    if len(self._missed) >= 4096:
                        self._missed.clear()
                    self._missed[cgroup_id] = now
        return path or ""

    def _scan(self) -> None:
        if self._root is None:
            return
        by_inode: dict[int, str] = {}
        for directory, subdirs, _files in os.walk(self._root):
            try:
                inode = os.stat(directory).st_ino
            except OSError:
                continue
            rel = "/" + os.path.relpath(directory, self._root)
            by_inode[inode] = "/" if rel == "/." else rel
            subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]
        self._by_inode = by_inode
