"""Loads the eBPF exec probe (bpf/netutil_exec.bpf.c) with bcc and hands its raw exec
records to user space.

The probe is the only part of the project that touches the kernel. It compiles the C
program at start-up (bcc), fills the in-kernel filter (catalog comm names, forwarded path
prefixes), polls the ring buffer on a thread and calls `on_exec` with each raw record.
Enrichment (paths, users, containers, IPs) happens downstream, in user space.

Two modes (docs/design.md): btf, the default where the kernel describes itself in BTF, hooks
only sched_process_exec and task_newtask (raw tracepoints) and reads the few struct
fields it needs at offsets taken from that BTF; tracepoint, the fallback, hooks the exec
syscalls' tracepoints, which tax every syscall on the host. btf mode checks itself on a
real exec before it is trusted, and falls back with the reason when the check fails.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Iterable

from osquery_netutil.kernel.btf import VMLINUX, Btf, BtfError
from osquery_netutil.kernel.fields import NOT_NAMED_WITHOUT_FENTRY, btf_defines, btf_offsets
from osquery_netutil.kernel.program import compile_program, run_stats
from osquery_netutil.kernel.preflight import MODES, BtfRefused, ProbeError, fentry_problem, preflight, tracepoint_preflight
from osquery_netutil.kernel.sockets import CgroupLinks, SockRecord, SocketsRefused, parse as parse_sock
from osquery_netutil.kernel.records import (
    A_FORKED, COUNTERS, F_ARGS_TRUNCATED, F_SCRIPT, F_TRACK_PENDING, SIZES, TRACK_END, TRACK_KEEP, AncestryEntry,
    Counters, ExecRecord, comm_key, cstr, field_bytes, image_head, split_args, user_dev, N_CATALOG, N_INTERPRETER,
)
from osquery_netutil.catalog import interpreter_names
from osquery_netutil.locations import FD_PATH_PREFIXES, WRITABLE_DIRS

class Probe:
    """The loaded probe: start() attaches, stop() detaches, on_exec gets each record.

    on_exec runs on the probe's poll thread, soon after the exec: the process is usually
    still alive, which is when /proc can still tell about it.
    """

    def __init__(
        self,
        comm_names: Iterable[str],
        on_exec: Callable[[ExecRecord], None],
        forward_prefixes: Iterable[str] = WRITABLE_DIRS,
        poll_ms: int = 100,
        mode: str = "auto",
        btf_offsets: dict[str, int] | None = None,
        interpreters: Iterable[str] = interpreter_names(),
        content_verdicts: bool = False,
        on_socket: Callable[[SockRecord], None] | None = None,
        on_tick: Callable[[], None] = lambda: None,
        on_attached: Callable[[], None] = lambda: None,
    ) -> None:
        """comm_names: forwarded by name. interpreters: their script argument is judged by
        its place (an origin). mode: one of MODES. btf_offsets: the struct offsets btf
        mode uses, instead of the kernel's (to prove that wrong ones are caught).
        content_verdicts: btf mode forwards every image once (F_UNJUDGED) until on_exec's
        owner gives its verdict (remember_verdict); a bare probe leaves them off.
        on_socket: gets each socket event of a tracked process (the socket programs are
        attached only then: network_mode says whether they are); on_tick: called on the
        poll thread after each poll, records or not; on_attached: once attached, before
        the poll thread starts (what the build reads is known then)."""
        if mode not in MODES:
            raise ProbeError(f"unknown probe mode {mode!r}: use one of {', '.join(MODES)}")
        self._requested = mode
        self._btf_offsets = btf_offsets
        self._content_verdicts = content_verdicts
        self._verdicts: Any = None   # the kernel's map, in btf mode with content verdicts
        self.mode = ""        # the mode in force once started: btf or tracepoint
        self.mode_note = ""   # why btf mode was refused, or what it cannot see on this kernel
        self._check_pid = 0
        self._check_record: ExecRecord | None = None
        self._names: dict[bytes, int] = {}   # comm -> N_* bits
        for names, bits in ((comm_names, N_CATALOG), (interpreters, N_INTERPRETER)):
            for name in names:
                self._names[comm_key(name)] = self._names.get(comm_key(name), 0) | bits
        self._prefixes = tuple(dict.fromkeys([*forward_prefixes, *FD_PATH_PREFIXES]))
        self._on_exec = on_exec
        self._on_socket = on_socket
        self._on_tick = on_tick
        self._on_attached = on_attached
        self._links: CgroupLinks | None = None
        self._sends_at_syscall = False   # built to read sends at sock:sock_send_length (else at egress)
        self.outcomes_at_tracepoints = False   # built to read TCP outcomes at tracepoints (else sock_ops)
        self.network_mode = ""   # cgroup once the socket programs are attached
        self.network_note = "" if on_socket is not None else "socket events not asked for"
        self._poll_ms = poll_ms
        self._bpf: Any = None   # bcc's BPF object (bcc has no type information)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wall_offset = time.time() - time.monotonic()
        self.callback_errors = 0
        self.last_callback_error: str = ""
        for prefix in self._prefixes:
            if not prefix.startswith("/") or not prefix.endswith("/") or len(prefix.encode()) > SIZES["PREFIX_LEN"]:
                raise ProbeError(
                    f"forward prefix {prefix!r} must be absolute, end with '/' and be at most {SIZES['PREFIX_LEN']} bytes"
                )

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Compile, load and attach the program in the best mode this kernel allows, fill
        the filter maps, start polling."""
        preflight()
        if self._requested != "tracepoint":
            try:
                self._load_btf()
            except BtfRefused as exc:
                if self._requested == "btf":
                    raise ProbeError(f"btf mode refused: {exc}; run with --probe-mode tracepoint") from exc
                self.mode_note = f"btf mode refused: {exc}"
        if not self.mode:
            tracepoint_preflight()
            self._bpf = compile_program({"PROBE_BTF": 0})
            self._prepare()
            self.mode = "tracepoint"
        self._attach_sockets()
        self._on_attached()
        self._thread = threading.Thread(target=self._poll, name="netutil-probe", daemon=True)
        self._thread.start()

    def _load_btf(self) -> None:
        """Load btf mode and check it on a real exec; BtfRefused says why it cannot be used."""
        try:
            btf = Btf.load(VMLINUX)
            offsets = self._btf_offsets or btf_offsets(btf)
        except BtfError as exc:
            raise BtfRefused(str(exc)) from exc
        no_fentry = fentry_problem(btf)
        try:
            defines = btf_defines(btf, offsets, fentry=no_fentry is None, verdicts=self._content_verdicts,
                                  machine=platform.machine())
            self._bpf = compile_program(defines)
        except (ProbeError, BtfError) as exc:
            raise BtfRefused(str(exc)) from exc
        no_fentry = no_fentry or self._bpf.fentry_error
        if no_fentry:
            self.mode_note = f"{NOT_NAMED_WITHOUT_FENTRY} ({no_fentry})"
        try:
            self._prepare()
            if self._content_verdicts:
                self._verdicts = self._bpf[b"verdicts"]
            self._self_check()
        except BtfRefused:
            self._bpf.cleanup()
            self._bpf = None
            raise
        self.mode = "btf"
        self._sends_at_syscall = bool(defines.get("SENDS_AT_SYSCALL"))
        self.outcomes_at_tracepoints = bool(defines.get("OUTCOMES_AT_TRACEPOINTS"))

    def _prepare(self) -> None:
        """Fill the filter and open the ring buffer of the loaded program."""
        self._fill_filter()
        self._procs = self._bpf[b"procs"]
        self._event_type = self._bpf[b"event_heap"].Leaf._type_   # per-CPU: an array of them
        self._args_offset = self._event_type.args.offset
        self._bpf[b"events"].open_ring_buffer(self._on_sample)

    def _attach_sockets(self) -> None:
        """Link the socket programs to the cgroup v2 root and read their ring buffer; where
        that is refused, exec events go on and network_note says why."""
        if self._on_socket is None:
            return
        try:
            self._links = CgroupLinks(self._bpf, sends_at_syscall=self._sends_at_syscall,
                                      outcomes_at_tracepoints=self.outcomes_at_tracepoints)
        except SocketsRefused as exc:
            self.network_note = str(exc)
            return
        self._sock_type = self._bpf[b"dns_heap"].Leaf._type_   # per-CPU: an array of them
        self._bpf[b"sock_events"].open_ring_buffer(self._on_sock_sample)
        self.network_mode = "cgroup"

    def _self_check(self, timeout_s: float = 2.0) -> None:
        """Exec known programs by a path the filter forwards (/dev/fd/N) and compare what
        btf mode reports with what ran. Each offset shows in a field: the parent (the
        task's pid), argv and the ancestry head (mm and its arg range), argc, the file and
        the script flag (bprm's), the image's device and inode (bprm->file's inode and
        superblock), and the origin (an fd exec is one). An ELF and a #! script, so that
        bprm's filename and interp, equal for the one, differ for the other."""
        true = os.path.realpath(shutil.which("true") or "/bin/true").encode()
        image = os.stat(true)   # for the script too: the exec runs its interpreter
        args = (b"netutil-selfcheck", os.urandom(6).hex().encode(), b"x" * 40)
        binary = os.open(true, os.O_RDONLY)
        script = os.memfd_create("netutil-selfcheck")
        try:
            os.write(script, b"#!" + true + b"\n")
            fd_path = f"/dev/fd/{script}".encode()
            for fd, argv, flag in ((binary, args, 0), (script, (true, fd_path, *args[1:]), F_SCRIPT)):
                rec, slot = self._check_exec(fd, args, timeout_s)
                wrong = [
                    f"{what} {got!r}, expected {want!r}"
                    for what, got, want in (
                        ("parent", rec.ppid, os.getpid()),
                        ("argv", rec.argv, argv),
                        ("argc", rec.argc, len(argv)),
                        ("file", rec.filename, f"/dev/fd/{fd}".encode()),
                        ("script flag", rec.flags & F_SCRIPT, flag),
                        ("ancestry head", slot.head if slot else None, argv),
                        ("inode", rec.ino, image.st_ino),
                        ("device", rec.dev, image.st_dev),
                        ("change time", rec.ctime_ns, image.st_ctime_ns),
                        ("origin", (rec.origin_pid, rec.origin_ktime_ns), (rec.pid, rec.ktime_ns)),
                    )
                    if got != want
                ]
                if wrong:
                    raise BtfRefused("the self-check exec read " + "; ".join(wrong) + ": the BTF offsets do not fit this kernel")
        finally:
            os.close(binary)
            os.close(script)

    def _check_exec(self, fd: int, argv: tuple[bytes, ...], timeout_s: float) -> tuple[ExecRecord, AncestryEntry | None]:
        """Run /dev/fd/fd with argv; its record (kept from on_exec) and ancestry entry."""
        self._check_record = None
        try:
            child = subprocess.Popen(argv, executable=f"/dev/fd/{fd}", pass_fds=(fd,))
            self._check_pid = child.pid
            child.wait(timeout=timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BtfRefused(f"the self-check exec failed: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while self._check_record is None and time.monotonic() < deadline:
            self._bpf.ring_buffer_poll(50)
        rec, self._check_pid = self._check_record, 0
        if rec is None:
            raise BtfRefused(f"the self-check exec (pid {child.pid}) was not reported")
        return rec, self.ancestry(child.pid)

    def stop(self) -> None:
        """Stop polling (draining what is queued) and detach. Safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._verdicts = None
        if self._links is not None:
            self._links.close()
            self._links = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "Probe":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries ----------------------------------------------------------------------
    def counters(self) -> Counters:
        table = self._bpf[b"counters"]
        values = [sum(table[ctypes.c_int(i)]) for i in range(len(COUNTERS))]
        return Counters(*values)

    def remember_verdict(self, rec: ExecRecord, utility: bool) -> None:
        """The content verdict on rec's image (F_UNJUDGED), for the change time the kernel
        saw: its later execs are forwarded only when it is a utility, until the file
        changes. The caller judged that very content (ContentMatcher.decided). Nothing
        to do without the map (tracepoint mode, a bare probe) or the image."""
        verdicts = self._verdicts   # stop() may clear it meanwhile
        if verdicts is None or not rec.image_sb:
            return
        seconds, nanoseconds = divmod(rec.ctime_ns, 1_000_000_000)
        slot = (rec.ino ^ (rec.image_sb >> 8)) & (SIZES["VERDICTS_MAX"] - 1)   # verdict_match's
        leaf = verdicts.Leaf()
        leaf.key.ino, leaf.key.sb = rec.ino, rec.image_sb
        leaf.v.ctime_sec, leaf.v.ctime_nsec, leaf.v.utility = seconds, nanoseconds, int(utility)
        verdicts[ctypes.c_uint32(slot)] = leaf

    def judge_track(self, rec: ExecRecord, keep: bool) -> None:
        """User space's verdict on the track an exec forwarded only to be judged began
        (F_TRACK_PENDING): kept (it became a row: a renamed utility, matched by content;
        or it replaced a pending track that was kept), ended when not. The kernel reads it
        at the socket calls of the processes that carry the track (netutil_sock.bpf.c,
        still_tracked). Nothing to do for any other exec."""
        bpf = self._bpf   # stop() may clear it meanwhile
        if bpf is None or not rec.flags & F_TRACK_PENDING:
            return
        table = bpf[b"track_verdicts"]
        key = table.Key()
        key.ktime_ns, key.pid = rec.track[1], rec.track[0]
        table[key] = ctypes.c_uint32(TRACK_KEEP if keep else TRACK_END)

    def listen_port(self, netns: int, port: int, listening: bool) -> None:
        """A tracked listener on port in the network namespace netns (its inode number)
        was found (listening) or is gone: the kernel hands over the connections that end
        on a port and namespace while any tracked listener has them
        (OUTCOMES_AT_TRACEPOINTS: netutil_tcp_destroy). Counted, as listeners may share
        them (listen_ports: by port, and in all at port 0, which no listener can have;
        listen_at: by namespace and port)."""
        bpf = self._bpf   # stop() may clear it meanwhile
        if bpf is None or not self.outcomes_at_tracepoints:
            return
        step = 1 if listening else -1
        ports, at = bpf[b"listen_ports"], bpf[b"listen_at"]
        for key in (ctypes.c_uint32(port & 0xFFFF), ctypes.c_uint32(0)):
            ports[key] = ctypes.c_uint32(max(0, ports[key].value + step))
        key = at.Key(netns & 0xFFFFFFFF, port & 0xFFFF)
        count = (at[key].value if key in at else 0) + step
        if count > 0:
            at[key] = ctypes.c_uint32(count)
        elif key in at:
            del at[key]

    def forget_verdicts(self) -> None:
        """Void every verdict given (zeroed slots match no image): each is judged again."""
        verdicts = self._verdicts
        if verdicts is not None:
            verdicts.clear()

    def ancestry(self, pid: int) -> AncestryEntry | None:
        """What the kernel remembers of pid, alive or exited; None if never seen/evicted.

        A process that has not exec'd since its fork runs its parent's image: that image
        is reported (flag A_FORKED) if the parent had it when the fork happened.
        """
        proc = self._lookup(pid)
        if proc is None:
            return None
        image: ctypes.Structure | None = proc
        flags = 0
        if proc.ktime_ns == 0:
            # No exec since its fork: it runs its parent's image, if the parent had it
            # when the fork happened.
            image = None
            parent = self._lookup(proc.ppid) if proc.ppid else None
            if parent is not None and 0 < parent.ktime_ns <= proc.fork_ktime_ns:
                image, flags = parent, A_FORKED
        if image is None:
            return AncestryEntry(pid, proc.ppid, 0, b"", b"", (), proc.fork_ktime_ns, 0)
        return AncestryEntry(
            pid=pid,
            ppid=proc.ppid,
            uid=image.uid,
            comm=cstr(field_bytes(image, "comm")),
            file=cstr(field_bytes(image, "file")),
            head=split_args(image_head(image)),
            ktime_ns=image.ktime_ns,
            flags=flags | image.flags,
        )

    def _lookup(self, pid: int) -> ctypes.Structure | None:
        """pid's slot, if a newer process has not claimed it."""
        proc = self._procs[ctypes.c_uint32(pid & (SIZES["ANCESTRY_MAX"] - 1))]
        return proc if proc.pid == pid and pid else None

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Per program: (runs, total ns), from the kernel's BPF stats.

        The kernel counts only while sysctl kernel.bpf_stats_enabled is 1.
        """
        return run_stats(self._bpf)

    def drain(self) -> None:
        """Consume whatever the ring buffer holds now (on the caller's thread)."""
        self._bpf.ring_buffer_consume()

    # -- internals --------------------------------------------------------------------
    def _fill_filter(self) -> None:
        comms, name_heads = self._bpf[b"catalog_comms"], self._bpf[b"name_heads"]
        heads: dict[int, int] = {}
        for name, bits in self._names.items():
            key = comms.Key()
            key.name = name
            comms[key] = ctypes.c_ubyte(bits)
            two = name[0] | (name[1] if len(name) > 1 else 0) << 8
            heads[two] = heads.get(two, 0) | bits
        for two, bits in heads.items():
            name_heads[ctypes.c_int(two)] = ctypes.c_ubyte(bits)
        prefixes, prefix_heads = self._bpf[b"forward_prefixes"], self._bpf[b"prefix_heads"]
        for prefix in self._prefixes:
            raw = prefix.encode()
            key = prefixes.Key()
            key.prefixlen = len(raw) * 8
            key.path = raw
            prefixes[key] = ctypes.c_ubyte(1)
            for second in [raw[1]] if len(raw) > 1 else range(256):   # "/" forwards every path
                prefix_heads[ctypes.c_int(second)] = ctypes.c_ubyte(1)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._bpf.ring_buffer_poll(self._poll_ms)
            self._tick()
        self._bpf.ring_buffer_consume()
        self._tick()

    def _tick(self) -> None:
        try:
            self._on_tick()
        except Exception as exc:  # a consumer bug must not kill the poll thread
            self.callback_errors += 1
            self.last_callback_error = f"{type(exc).__name__}: {exc}"

    def _on_sock_sample(self, _ctx: object, data: int, size: int) -> None:
        assert self._on_socket is not None   # the ring is read only then
        try:
            self._on_socket(parse_sock(ctypes.string_at(data, size), self._sock_type, self._wall_offset))
        except Exception as exc:  # a consumer bug must not kill the poll thread
            self.callback_errors += 1
            self.last_callback_error = f"{type(exc).__name__}: {exc}"

    def _on_sample(self, _ctx: object, data: int, size: int) -> None:
        try:
            rec = self._parse(ctypes.string_at(data, size))
            if rec.pid == self._check_pid:
                self._check_record = rec   # the self-check's own exec: not the host's
                return
            self._on_exec(rec)
        except Exception as exc:  # a consumer bug must not kill the poll thread
            self.callback_errors += 1
            self.last_callback_error = f"{type(exc).__name__}: {exc}"

    def _parse(self, raw: bytes) -> ExecRecord:
        ev = self._event_type.from_buffer_copy(raw[: self._args_offset].ljust(ctypes.sizeof(self._event_type), b"\0"))
        argv = split_args(raw[self._args_offset : self._args_offset + ev.args_size])
        # The same limits in both modes: btf mode reads argv in one block, so the count
        # and per-argument caps that tracepoint mode applies in the kernel apply here.
        cut = SIZES["ARG_MAX_LEN"] - 1
        argv = tuple(a[:cut] for a in argv[: SIZES["MAX_ARGS"]])
        flags = ev.flags
        if len(argv) < ev.argc or any(len(a) >= cut for a in argv):
            flags |= F_ARGS_TRUNCATED   # the kernel leaves this part of the check to us
        return ExecRecord(
            time=self._wall_offset + ev.ktime_ns / 1e9,
            ktime_ns=ev.ktime_ns,
            pid=ev.pid,
            tid=ev.old_tid,
            ppid=ev.ppid,
            uid=ev.uid,
            gid=ev.gid,
            cgroup_id=ev.cgroup_id,
            comm=cstr(field_bytes(ev, "comm")),
            filename=cstr(field_bytes(ev, "filename")),
            argv=argv,
            argc=ev.argc,
            flags=flags,
            origin_pid=ev.origin_pid,
            origin_ktime_ns=ev.origin_ktime_ns,
            track=(ev.track_pid, ev.track_ktime_ns) if ev.track_ktime_ns else (0, 0),
            track_before=(ev.track_prev_pid, ev.track_prev_ktime_ns) if ev.track_prev_ktime_ns else (0, 0),
            dev=user_dev(ev.dev) if ev.ino else 0,
            ino=ev.ino,
            image_sb=ev.image_sb,
            ctime_ns=ev.ctime_sec * 1_000_000_000 + ev.ctime_nsec if ev.ino else 0,
        )
