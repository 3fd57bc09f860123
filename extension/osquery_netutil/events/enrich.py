"""Raw exec records -> rows of network_utility_execs.

Runs on the probe's thread right after the exec, while the process (and its parent) are
usually still alive: cwd, cgroup and the executed file can only be read from /proc then.
Everything the kernel already captured (argv, ancestry at exec time) comes from the
probe, and /proc is the fallback for ancestors older than the probe.

The row holds facts only; the packs decide what is suspicious.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Any, Callable

from osquery_netutil.catalog import MULTICALL, Catalog, Utility
from osquery_netutil.events.containers import CgroupResolver, container_id
from osquery_netutil.events.content import ContentMatcher
from osquery_netutil.events.ipargs import ip_columns
from osquery_netutil.events.loader import LDD, TRACE_ENV, is_loader, loaded
from osquery_netutil.events.procfs import ProcView, absolute, cmdline, read, readlink, text
from osquery_netutil.events.scripts import with_script
from osquery_netutil.events.stdio import STREAMS, StdioReader
from osquery_netutil.locations import FD_PATH_PREFIXES
from osquery_netutil.kernel.records import A_FORKED, F_UNJUDGED, SIZES, AncestryEntry, ExecRecord

MAX_ANCESTORS = 32
_PATHS_REMEMBERED = 4096
_ORIGINS_REMEMBERED = 16384   # origins named by later rows: ~300 bytes each
_PROC_CACHE_S = 10.0
_CHAIN_CACHE_S = 1.0
_PIPE_WRITER_PIDS = 8   # pids around an interpreter reading a pipe where its writer is looked for
_PIPE_WRITER_S = 0.5    # and how close to the interpreter's exec the writer's was
_SETTLED_S = 2.0        # a file's ctime this old, or older, before a verdict is given for it

Row = dict[str, Any]


@lru_cache(maxsize=1024)
def username(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def own_ancestry() -> dict[int, int]:
    """The ancestors of this process, up to init: pid -> start time
    (clock ticks since boot, /proc/PID/stat). They are the host's base: whatever started
    the sensor (init, osqueryd, a supervisor, a CI runner or sandbox launcher) is no
    evidence against the processes it also started."""
    base: dict[int, int] = {}
    pid = ProcView(os.getpid()).ppid()
    while pid > 0 and pid not in base and len(base) < MAX_ANCESTORS:
        view = ProcView(pid)
        started = view.start_time()
        if started < 0:
            break
        base[pid] = started
        pid = view.ppid()
    return base


class Enricher:
    """Turns ExecRecords into rows; keeps what it learnt of forwarded scripts' paths."""

    def __init__(
        self,
        catalog: Catalog,
        ancestry: Callable[[int], AncestryEntry | None],
        cgroups: CgroupResolver | None = None,
        content: ContentMatcher | None = None,
        base: dict[int, int] | None = None,
        verdict: Callable[[ExecRecord, bool], None] | None = None,
        forget: Callable[[], None] = lambda: None,
    ) -> None:
        """base: the host's base processes (own_ancestry()), marked in every chain.
        verdict(rec, is_utility): told the content verdict on an F_UNJUDGED image (the
        probe's remember_verdict), when it was judged on the content that ran; forget():
        all verdicts given are void (the probe's forget_verdicts)."""
        self.catalog = catalog
        self._ancestry = ancestry
        self._base = own_ancestry() if base is None else base
        self._cgroups = cgroups or CgroupResolver()
        self._content = content or ContentMatcher(catalog)
        # (exec ktime, file as exec'd) -> absolute path, for scripts started by a relative
        # path: by the time their children are reported they may have exited.
        self._resolved: OrderedDict[tuple[int, bytes], str] = OrderedDict()
        # (pid, exec ktime) -> the node of an exec that became its lineage's origin: the
        # kernel names origins by that pair only, and they may be long gone when a
        # descendant is reported.
        self._origins: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()
        self._from_proc: dict[int, tuple[float, dict[str, Any], int]] = {}
        self._chains: dict[int, tuple[tuple[int, int], float, list[dict[str, Any]], str]] = {}
        self._stdio = StdioReader(self._forked)
        self._verdict = verdict
        self._forget = forget
        self._generation = self._content.generation

    def row(self, rec: ExecRecord) -> Row | None:
        """The row for rec, or None when rec is not a network utility (a script, say)."""
        cwd = readlink(f"/proc/{rec.pid}/cwd")   # first: the process may be about to exit
        path = absolute(text(rec.filename), cwd) if cwd else self._placed_by_parent(rec)
        argv = [text(a) for a in rec.argv]
        if rec.is_origin:
            self._remember_origin(rec, path, cwd)
        if is_loader(rec.comm):
            return self._loaded_row(rec, argv, cwd)
        utility = self.catalog.by_comm(text(rec.comm))
        matched_by = "name"
        if utility is None and text(rec.comm) in MULTICALL and len(rec.argv) > 1:
            utility = self.catalog.by_basename(os.path.basename(text(rec.argv[1])))   # busybox nc ...
        if utility is None:
            self._remember(rec.ktime_ns, rec.filename, path)
            utility = self._match_content(rec, path)
            if rec.flags & F_UNJUDGED:
                self._give_verdict(rec, utility is not None)
            if utility is None:
                return None
            matched_by = "content"
        own_argv = argv[1:] if matched_by == "name" and text(rec.comm) in MULTICALL else argv
        return self._row(rec, utility, matched_by, path, argv, own_argv, cwd)

    def _placed_by_parent(self, rec: ExecRecord) -> str:
        """The exec'd file of a process already gone: a relative one (`cd /tmp/w && ./x.sh`,
        a script that exits at once) joined to the parent's cwd, where the exec that
        started it resolved it, when the file is there; else as given."""
        given = text(rec.filename)
        parent_cwd = readlink(f"/proc/{rec.ppid}/cwd") if rec.ppid > 0 and not given.startswith("/") else ""
        placed = absolute(given, parent_cwd)
        return placed if parent_cwd and os.path.isfile(ProcView(rec.ppid).sees(placed)) else given

    def _loaded_row(self, rec: ExecRecord, argv: list[str], cwd: str) -> Row | None:
        """The row of a utility run through the dynamic loader: the program it loads,
        by name, else by content; None when that is no utility (or ldd is asking)."""
        run = loaded(argv)
        if run is None or TRACE_ENV in (read(f"/proc/{rec.pid}/environ") or b"").split(b"\0"):
            return None
        # ldd, whose loader has listed and gone: the first ancestor that exec'd, past
        # the subshells it forks (gone too, so known by pid only), is ldd (the kernel's
        # name for the #! script) or its interpreter (seen in /proc).
        chain, _ = self._chain(rec.ppid)
        first = next((n for n in chain if n.get("path")), {})
        if first.get("path") in LDD or first.get("script") in LDD:
            return None
        path = absolute(run.program, cwd)
        utility = self.catalog.by_basename(os.path.basename(run.program))
        if utility is None:
            utility = self._content.match_path(path)
        if utility is None:
            return None
        return self._row(rec, utility, "loader", path, argv, list(run.argv), cwd)

    def _row(self, rec: ExecRecord, utility: Utility, matched_by: str, path: str, argv: list[str],
             own_argv: list[str], cwd: str) -> Row | None:
        """The row, from what the exec ran (utility, path) and the utility's own argv
        (after busybox or the loader); None when the entry does not count these args."""
        if not utility.counts(own_argv):
            return None   # openssl version, iptables -A: not this entry's business
        stdio = self._stdio_columns(rec)   # first: the fds change as the utility runs
        ip_args, public_ip_args = ip_columns(utility.name, own_argv)
        chain, chain_json = self._chain(rec.ppid)
        cgroup_path = self._cgroups.path_of(rec.pid, rec.cgroup_id, rec.ppid)
        return {
            "time": int(rec.time),
            "pid": rec.pid,
            "parent": rec.ppid,
            "uid": rec.uid,
            "gid": rec.gid,
            "username": username(rec.uid),
            "utility": utility.name,
            "category": utility.category,
            "technique": utility.technique,
            "matched_by": matched_by,
            "comm": text(rec.comm),
            "path": path,
            "cmdline": " ".join(argv),
            "json_cmdline": json.dumps(argv),
            "argc": rec.argc,
            "args_truncated": int(rec.args_truncated),
            "cwd": cwd,
            "ip_args": ip_args,
            "public_ip_args": public_ip_args,
            "parent_path": chain[0]["path"] if chain else "",
            "parent_cmdline": chain[0]["cmdline"] if chain else "",
            "ancestors": chain_json,
            "origin": self.origin((rec.origin_pid, rec.origin_ktime_ns), rec.time, rec.ktime_ns),
            **stdio,
            "container_id": container_id(cgroup_path),
            "cgroup_path": cgroup_path,
        }

    def _piped(self, pid: int, ppid: int, substituted: bool) -> str:
        """The file that the writer of pid's pipe read, found in the kernel's map though it
        has exited, by its arguments naming an existing file (cat /tmp/x.sh | sh,
        bash <(base64 -d /tmp/x)). The writer is the nearest sibling forked before pid (a
        shell forks a pipeline's writer first, and a process substitution before the
        command) or, for a process substitution, pid's nearest child (the shell exec'd the
        command in its own pid); it must have exec'd within _PIPE_WRITER_S of pid. A
        subshell running a builtin (echo "$x" | sh) names nothing: '' then."""
        own = self._ancestry(pid)
        if own is None or not own.ktime_ns:
            return ""
        groups = [[(c, ppid) for c in range(pid - 1, max(pid - _PIPE_WRITER_PIDS, 1) - 1, -1)]]
        if substituted:
            groups.append([(c, pid) for c in range(pid + 1, pid + _PIPE_WRITER_PIDS)])
        for group in groups:
            entry = next((e for c, parent in group if (e := self._ancestry(c)) is not None and e.ppid == parent), None)
            if (entry is None or not entry.file or entry.flags & A_FORKED
                    or abs(entry.ktime_ns - own.ktime_ns) > _PIPE_WRITER_S * 1e9):
                continue
            for arg in entry.head[1:]:
                word = text(arg)
                if word.startswith("/") and os.path.isfile(ProcView(pid).sees(word)):
                    return word
        return ""

    def _stdio_columns(self, rec: ExecRecord) -> dict[str, str]:
        """stdin, stdout, stderr and pipe_peers, while the utility lives."""
        stdio = self._stdio.read(rec.pid, rec.ppid)
        return {**dict(zip(STREAMS, stdio.kinds)), "pipe_peers": json.dumps(stdio.peers) if stdio.peers else "[]"}

    def _forked(self, pid: int) -> bool | None:
        """Whether pid has not exec'd since its fork, by the kernel; None when it does not know."""
        entry = self._ancestry(pid)
        if entry is None or not entry.file:
            return None
        return bool(entry.flags & A_FORKED)

    def _chain(self, ppid: int) -> tuple[list[dict[str, Any]], str]:
        """The chain above a process (parent first, up to init or MAX_ANCESTORS levels)
        and its JSON. Siblings share them: a script running nc a hundred
        times is walked once a second, not a hundred times (the parent's exec time tells
        a reused pid apart)."""
        if ppid <= 0:
            return [], "[]"
        entry = self._ancestry(ppid)
        key = (ppid, entry.ktime_ns if entry is not None else 0)
        now = time.monotonic()
        cached = self._chains.get(ppid)
        if cached is not None and cached[0] == key and now - cached[1] < _CHAIN_CACHE_S:
            return cached[2], cached[3]
        chain: list[dict[str, Any]] = []
        pid, known = ppid, entry
        while pid > 0 and len(chain) < MAX_ANCESTORS and all(a["pid"] != pid for a in chain):
            node, parent = self._ancestor(pid, known if pid == ppid else self._ancestry(pid))
            if self._is_base(pid):
                node = {**node, "base": True}   # the same process the sensor descends from
            chain.append(node)
            pid = parent
            if node["pid"] == 1:
                break
        if len(self._chains) >= _PATHS_REMEMBERED:
            self._chains.clear()
        encoded = json.dumps(chain)
        self._chains[ppid] = (key, now, chain, encoded)
        return chain, encoded

    def _is_base(self, pid: int) -> bool:
        """pid is one of the host's base processes (not a later process given its pid)."""
        return pid in self._base and ProcView(pid).start_time() == self._base[pid]

    def _ancestor(self, pid: int, entry: AncestryEntry | None) -> tuple[dict[str, Any], int]:
        """({pid, path, cmdline, uid}, its parent's pid or 0) from the kernel's entry,
        else from /proc."""
        if entry is None or not entry.file:
            return self._ancestor_from_proc(pid, entry.ppid if entry is not None else 0)
        proc = ProcView(pid)
        path = text(entry.file)
        if not path.startswith("/"):
            path = self._resolved.get((entry.ktime_ns, entry.file)) or absolute(path, proc.cwd())
        args = entry.head
        if _head_may_be_cut(args):
            full = proc.argv()
            if full and full[: len(args) - 1] == args[:-1] and full[len(args) - 1].startswith(args[-1]):
                args = full   # the same exec's argv, longer than the kernel kept
        node = with_script({"pid": pid, "path": path, "cmdline": cmdline(args), "uid": entry.uid}, proc.cwd(), proc.fd,
                           lambda substituted: self._piped(pid, entry.ppid, substituted))
        return node, entry.ppid or proc.ppid()

    def _ancestor_from_proc(self, pid: int, ppid: int) -> tuple[dict[str, Any], int]:
        """An ancestor the probe never saw exec (older than the probe), from /proc while it
        lives. Cached briefly: these are long-lived (init, sshd, shells) and every row
        walks through them; a pid reused since would be known to the kernel instead."""
        now = time.monotonic()
        cached = self._from_proc.get(pid)
        if cached is not None and now - cached[0] < _PROC_CACHE_S:
            return cached[1], ppid or cached[2]
        proc = ProcView(pid)
        node = with_script({"pid": pid, "path": proc.exe(), "cmdline": cmdline(proc.argv()), "uid": proc.uid()}, proc.cwd(), proc.fd,
                           lambda substituted: self._piped(pid, ppid or proc.ppid(), substituted))
        parent = ppid or proc.ppid()
        if len(self._from_proc) >= _PATHS_REMEMBERED:
            self._from_proc.clear()
        self._from_proc[pid] = (now, node, parent)
        return node, parent

    def _remember_origin(self, rec: ExecRecord, path: str, cwd: str) -> None:
        node = with_script({"pid": rec.pid, "path": path, "cmdline": cmdline(rec.argv), "uid": rec.uid,
                            "time": int(rec.time)}, cwd, ProcView(rec.pid).fd)
        self._origins[(rec.pid, rec.ktime_ns)] = node
        if len(self._origins) > _ORIGINS_REMEMBERED:
            self._origins.popitem(last=False)

    def origin(self, origin: tuple[int, int], at_time: float, at_ktime_ns: int) -> str:
        """The origin (pid, exec ktime) of a lineage as JSON, for an event of it at
        (at_time, at_ktime_ns): '' when none, or when it is the host's base; the node
        remembered when it was forwarded, else what the kernel's slot still holds, else
        its pid and time alone (the row still says there was one)."""
        pid, ktime_ns = origin
        if not ktime_ns or self._is_base(pid):
            return ""
        node = self._origins.get((pid, ktime_ns))
        if node is None:
            entry = self._ancestry(pid)
            when = int(at_time - (at_ktime_ns - ktime_ns) / 1e9)
            if entry is not None and entry.ktime_ns == ktime_ns and not entry.flags & A_FORKED and entry.file:
                node = {**self._ancestor(pid, entry)[0], "time": when}
            else:
                node = {"pid": pid, "path": "", "cmdline": "", "time": when}
        return json.dumps(node)

    def _remember(self, ktime_ns: int, filename: bytes, path: str) -> None:
        if path != text(filename):
            self._resolved[(ktime_ns, filename)] = path
            if len(self._resolved) > _PATHS_REMEMBERED:
                self._resolved.popitem(last=False)

    def _give_verdict(self, rec: ExecRecord, utility: bool) -> None:
        """Tell the kernel the verdict on rec's image, when its content was read and decided
        with the very change time the exec saw (what was read is what ran), and that time
        is older than _SETTLED_S: a coarse clock (one jiffy, whole seconds on some file
        systems) could give a rewrite in the same tick the same ctime. Else the image is
        judged again at its next exec."""
        if self._verdict is None:
            return
        if self._content.generation != self._generation:
            self._generation = self._content.generation
            self._forget()   # utilities were installed or removed: earlier "no" may be wrong
        if (rec.ino, rec.ctime_ns) in self._content.decided and time.time_ns() - rec.ctime_ns > _SETTLED_S * 1e9:
            self._verdict(rec, utility)

    def _match_content(self, rec: ExecRecord, path: str) -> Utility | None:
        """A renamed copy: by the file at path, else (fd execs, symlinks, deleted or
        relative files) by what the still-running process executes; only a file that is
        the image the exec ran (the kernel's identity of it, or its slot's exec time)."""
        if path.startswith("/") and not path.startswith(FD_PATH_PREFIXES):
            hit = self._content.match_path(path, rec.identity)
            if hit is not None:
                return hit

        def unchanged() -> bool:
            entry = self._ancestry(rec.pid)
            return entry is None or entry.ktime_ns == rec.ktime_ns   # None: no kernel slot to ask
        return self._content.match_proc_exe(rec.pid, rec.identity, unchanged)


def _head_may_be_cut(head: tuple[bytes, ...]) -> bool:
    return len(head) >= SIZES["HEAD_ARGS"] or sum(len(a) + 1 for a in head) >= SIZES["HEAD_LEN"] - 1
