"""The two tables' schemas, declared once (like osquery's specs/*.table).

The store creates its SQLite table from EXECS, the TablePlugins announce these columns to
osquery, the embedded host declares its virtual tables with them, the README's column
reference is generated from them and the tests check rows against them. Change a column
here and everything follows.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str            # osquery type: BIGINT, INTEGER or TEXT
    description: str
    indexed: bool = False   # the store keeps an index and the tables push constraints down

    @property
    def python_type(self) -> builtins.type[str] | builtins.type[int]:   # `type` is the field here
        return str if self.type == "TEXT" else int


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def empty_row(self) -> dict[str, str | int]:
        """Every column at its empty value: '' for TEXT, 0 for the integers."""
        return {c.name: c.python_type() for c in self.columns}

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


# Integer columns that SQL compares with < or > are BIGINT: osquery never pushes range
# constraints on TEXT columns.
EXECS = Table(
    "network_utility_execs",
    "One row per exec of a network utility (nc, curl, nslookup, nmap, ...), seen by the eBPF probe.",
    (
        Column("eid", "BIGINT", "Event id: strictly increasing, never reused, also across restarts", indexed=True),
        Column("time", "BIGINT", "Unix time (seconds) of the exec", indexed=True),
        Column("pid", "BIGINT", "Process id after the exec", indexed=True),
        Column("parent", "BIGINT", "Parent process id, recorded by the probe at fork", indexed=True),
        Column("uid", "BIGINT", "User id of the exec'ing task", indexed=True),
        Column("gid", "BIGINT", "Group id of the exec'ing task"),
        Column("username", "TEXT", "User name of uid on this host ('' if unknown)"),
        Column("utility", "TEXT", "Canonical name from the catalog: netcat, curl, nslookup, ...", indexed=True),
        Column("category", "TEXT", "dns, transfer, remote_shell, scanner, sniffer, tunnel, recon or discovery (ip, ss, netstat, iptables -L: rows only, alerts only from writable directories, memfds and containers)", indexed=True),
        Column("technique", "TEXT", "MITRE ATT&CK technique of the catalog entry"),
        Column("matched_by", "TEXT", "'name' (comm or file name), 'content' (a renamed copy of an installed utility) or 'loader' (run through the dynamic loader, ld.so PROGRAM: path is PROGRAM)"),
        Column("comm", "TEXT", "Kernel comm after the exec (first 15 bytes of the file name)"),
        Column("path", "TEXT", "Executed file, absolute when the cwd could be applied, else as given; /dev/fd/N for fd execs"),
        Column("cmdline", "TEXT", "Arguments joined by spaces (argv[0] first); for a #! script in btf mode, as the kernel rewrote them, interpreter first (`/bin/sh /tmp/x.sh arg`, as ps shows it)"),
        Column("json_cmdline", "TEXT", "Arguments as a JSON array, exact (non-UTF-8 bytes as \\xNN)"),
        Column("argc", "BIGINT", "Real argument count, including those not kept"),
        Column("args_truncated", "INTEGER", "1 when argv was cut (more than 64 arguments, 8 KiB in all (9 KiB in btf mode), or 1 KiB in one)"),
        Column("cwd", "TEXT", "Working directory at exec ('' when the process was gone before it could be read)"),
        Column("ip_args", "TEXT", "Comma-separated IP literals in the arguments, normalised (v4, v6, URLs, user@host, host:port, 127.1-style)"),
        Column("public_ip_args", "TEXT", "The subset of ip_args that is globally routable"),
        Column("parent_path", "TEXT", "The parent's executed file (a script's own path), captured at exec time"),
        Column("parent_cmdline", "TEXT", "The parent's arguments, captured at exec time"),
        Column("ancestors", "TEXT", "JSON array, parent first, of {pid, path, cmdline, uid, script} up to init or 32 levels (script: the script an interpreter was started on, as in sh /tmp/x.sh, when there is one); \"base\": true on the host's own ancestors (those the sensor also descends from: init, osqueryd, a supervisor), which the packs do not count as evidence"),
        Column("origin", "TEXT", "JSON {pid, path, cmdline, uid, time, script} of the lineage's origin: the nearest exec suspicious by its place (a writable directory, an fd or memfd, a relative path) among this process's own earlier images and all its ancestors, however deep, marked in the kernel and inherited at fork; path '' when its details were lost; '' when there is none or it is the host's base"),
        Column("stdin", "TEXT", "What fd 0 was right after the exec: tty:PATH, pipe, fifo:PATH, socket, file:PATH, null or other:TARGET; '' when the process had already exited"),
        Column("stdout", "TEXT", "What fd 1 was, as stdin"),
        Column("stderr", "TEXT", "What fd 2 was, as stdin"),
        Column("pipe_peers", "TEXT", "JSON array of {fd, pid, path, cmdline, forked, script}: the processes holding the other end of the pipe or fifo on stdin (fd 0) or stdout (fd 1), among the siblings and the parent, where a shell pipeline puts them (nc ADDR PORT < f | sh -i > f); forked: true when the peer had not exec'd (a subshell running its parent's image); script as in ancestors"),
        Column("container_id", "TEXT", "Container id (docker, containerd/CRI, cri-o, podman) from the cgroup; '' on the host", indexed=True),
        Column("cgroup_path", "TEXT", "cgroup path of the process (the container's one on hybrid hosts)"),
    ),
)

SOCKETS = Table(
    "network_utility_socket_events",
    "One row per socket action of a tracked process (a network utility's, or anything run from a writable "
    "directory, an fd or memfd, and their descendants), seen by the probe's cgroup socket programs: JOIN it to "
    "network_utility_execs ON exec_eid = eid.",
    (
        Column("eid", "BIGINT", "Event id of this row: strictly increasing, never reused", indexed=True),
        Column("exec_eid", "BIGINT", "eid of the network_utility_execs row of the exec that made this process tracked (its own, or its nearest ancestor's that is a row); 0 when that exec is no row (a script from /tmp: see origin)", indexed=True),
        Column("time", "BIGINT", "Unix time (seconds) of the action (of the first, when count > 1)", indexed=True),
        Column("action", "TEXT", "connect, send (an unconnected UDP datagram), bind, listen, accept (a peer connected to this process's listener) or dns_query (a question sent to port 53, UDP or TCP, read from what the process sent)", indexed=True),
        Column("status", "TEXT", "Of a TCP connect: succeeded (answered; also a connection still open and idle), refused, timed out, unreachable (no packet could leave: no route; or an ICMP error) or in progress (no answer within 3 s, or closed by the process before one); '' otherwise"),
        Column("pid", "BIGINT", "Process id (of an accept: the listener's)", indexed=True),
        Column("uid", "BIGINT", "User id of the process"),
        Column("comm", "TEXT", "Kernel comm of the process"),
        Column("path", "TEXT", "The file the process exec'd (a script's own path), as the kernel recorded it; '' when unknown"),
        Column("family", "INTEGER", "2 (AF_INET) or 10 (AF_INET6)"),
        Column("protocol", "INTEGER", "6 (TCP) or 17 (UDP)"),
        Column("local_address", "TEXT", "Local address (bind, listen, accept); '' when not known at the action"),
        Column("local_port", "INTEGER", "Local port (bind, listen, accept); 0 otherwise"),
        Column("remote_address", "TEXT", "Remote address (connect, send, accept), as the process gave it: an IPv4-mapped IPv6 address as its IPv4", indexed=True),
        Column("remote_port", "INTEGER", "Remote port (connect, send, accept)"),
        Column("remote_public", "INTEGER", "1 when remote_address is globally routable (not loopback, private, link-local, CGNAT or documentation)"),
        Column("dns_name", "TEXT", "Of a dns_query: the name asked, without the final dot (bytes outside printable ASCII as \\DDD); '' otherwise"),
        Column("dns_type", "TEXT", "Of a dns_query: the type asked (A, AAAA, TXT, NULL, ... or TYPEnnn)"),
        Column("count", "BIGINT", "Identical actions of this process folded into this row (within a second)"),
        Column("origin", "TEXT", "JSON {pid, path, cmdline, uid, time, script} of the lineage's origin, as in network_utility_execs (the exec from a writable directory, fd or memfd this process descends from); '' when none"),
        Column("container_id", "TEXT", "Container id from the cgroup; '' on the host", indexed=True),
    ),
)

STATUS = Table(
    "network_utility_probe_status",
    "One row: the state of the eBPF probe and the event store behind network_utility_execs.",
    (
        Column("state", "TEXT", "running; starting (the probe is loading); degraded (works, but see error); failed (not collecting: see error)"),
        Column("error", "TEXT", "What is wrong and how to fix it ('' when running)"),
        Column("source", "TEXT", "Where rows come from: ebpf, or store (probe not running)"),
        Column("kernel", "TEXT", "Kernel release"),
        Column("start_time", "BIGINT", "Unix time this run started and took the store (0 when no run holds it)"),
        Column("attached_time", "BIGINT", "Unix time the probe was attached and its reader polling: execs from then on are recorded (0 while starting)"),
        Column("restarted", "TEXT", "'' for the first run since boot; else how the previous run on this store ended: stopped, or killed (it never said it stopped)"),
        Column("startup_ms", "BIGINT", "Milliseconds from start_time to attached_time: what start-up took (0 while starting)"),
        Column("probe_mode", "TEXT", "btf (raw tracepoints on exec and fork, struct offsets from the kernel's BTF: no syscall is taxed) or tracepoint (the fallback: exec syscall tracepoints, which slow every syscall on the host); '' when not attached"),
        Column("probe_mode_note", "TEXT", "Why btf mode was refused (the failed check), or what it cannot see on this kernel; '' otherwise"),
        Column("execs_seen", "BIGINT", "Successful execs on the host since the probe was attached"),
        Column("events_matched", "BIGINT", "Execs reported as network utility rows since start"),
        Column("events_lost", "BIGINT", "Execs the kernel could not hand over (ring buffer full) since start"),
        Column("network_mode", "TEXT", "cgroup (socket events of tracked processes: cgroup v2 socket programs, attached with BPF links) or '' when socket events are off (see network_note)"),
        Column("network_note", "TEXT", "Why socket events are off ('' when on)"),
        Column("socket_events", "BIGINT", "Socket events of tracked processes the kernel handed over since start"),
        Column("socket_events_lost", "BIGINT", "Socket events dropped since start: their ring buffer was full, the process had spent its budget of socket events, or what a send carried (its destination, a DNS question) could not be read from its syscall (io_uring, sendfile, a 32-bit process)"),
        Column("judge_backlog", "BIGINT", "watch: rows stored that the detections have not judged yet (0 elsewhere: osquery schedules the packs)"),
        Column("judge_delay_s", "BIGINT", "watch: seconds since the oldest row not judged yet was executed (0 when none waits)"),
        Column("rows_evicted", "BIGINT", "Rows the store evicted since start (over --max-rows or --max-age; plain rows first, never one not judged yet)"),
        Column("rows_retained", "BIGINT", "Rows held in the store"),
        Column("oldest_time", "BIGINT", "Time of the oldest retained row (0 if none)"),
        Column("store_path", "TEXT", "SQLite file of the store"),
        Column("catalog_size", "BIGINT", "Utilities in the catalog in force"),
        Column("version", "TEXT", "osquery-netutil version"),
    ),
)


def cell(text: str) -> str:
    """text as one cell of a Markdown table: its pipes (nc … | sh) escaped."""
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The README's column reference (a test keeps the README equal to this)."""
    parts = []
    for table in (EXECS, SOCKETS, STATUS):
        parts.append(f"### `{table.name}`\n\n{table.description}\n\n| column | type | meaning |\n|---|---|---|")
        parts.extend(f"| `{c.name}` | {c.type} | {cell(c.description)} |" for c in table.columns)
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
