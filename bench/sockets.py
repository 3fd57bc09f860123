"""11. Socket side: what watching tracked processes' sockets costs everyone else, and a
tracked scan.

A C loop (compiled here) times three loopback workloads, each in a process of its own:

  connect   a TCP connect() to a local listener, accepted and closed (the connect4,
            sock_ops and egress programs all run)
  udp       a 64-byte UDP sendto() and its recv() (sendmsg4 and egress)
  tcp_rr    a 64-byte request and response over one TCP connection (egress per segment)

under each condition, interleaved round by round:

  none          nothing attached
  sensor        the sensor as `watch` runs it (btf mode, socket programs on the cgroup v2
                root); the loop is untracked (run from bench/.work, no catalog name)
  tracked       the same, the loop run from /tmp (tracked: its events are reported until
                its budget of SOCK_BUDGET is spent, then counted)
  skb_floor     only a cgroup_skb egress program that does one array lookup: the fixed
                cost of the hook the DNS questions are read at
  sendlen_floor only a raw tracepoint on sock:sock_send_length that does one array lookup:
                the other candidate (it fires per send in the sender's context, but the
                payload would have to be found through the syscall's arguments)

A measurement is the fastest of --repeat runs; reported: medians over the rounds
(min-max) of ns per operation and the ratio to `none`; kernel ns per run of each socket
program (bpf_stats) under `sensor`. Then a tracked `nmap -sT` of 10,000 loopback ports with
exec rows made at the same time: none of those may be lost; socket events are folded or
counted. Run as root after `scripts/setup.sh --bench`. Writes bench/results/sockets.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from common import WORK, save, summary

from osquery_netutil.catalog import Catalog
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.kernel.sockets import cgroup2_root, link_create
from osquery_netutil.schema import SOCKETS
from osquery_netutil.store.store import Store

LOOP_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* socket_loop connect|udp|tcp_rr N: ns per operation, on stdout. */
static struct sockaddr_in bound(int fd)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || getsockname(fd, (struct sockaddr *)&a, &len))
        exit(3);
    return a;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long n = atol(argv[2]);
    char buf[64] = {0};
    struct timespec t0, t1;
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in at = bound(listener);
    listen(listener, 1024);
    int udp_in = socket(AF_INET, SOCK_DGRAM, 0), udp_out = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in udp_at = bound(udp_in);
    int a = -1, b = -1;
    if (strcmp(argv[1], "tcp_rr") == 0) {
        a = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(a, (struct sockaddr *)&at, sizeof(at)) || (b = accept(listener, 0, 0)) < 0)
            return 4;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        if (argv[1][0] == 'c') {
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(c, (struct sockaddr *)&at, sizeof(at)))
                return 5;
            close(accept(listener, 0, 0));
            close(c);
        } else if (argv[1][0] == 'u') {
            if (sendto(udp_out, buf, sizeof(buf), 0, (struct sockaddr *)&udp_at, sizeof(udp_at)) != sizeof(buf)
                || recv(udp_in, buf, sizeof(buf), 0) != sizeof(buf))
                return 6;
        } else {
            if (write(a, buf, sizeof(buf)) != sizeof(buf) || read(b, buf, sizeof(buf)) != sizeof(buf)
                || write(b, buf, sizeof(buf)) != sizeof(buf) || read(a, buf, sizeof(buf)) != sizeof(buf))
                return 7;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
"""
LOOPS = ("connect", "udp", "tcp_rr")


def loop_binary(where: Path) -> str:
    """The C loop compiled into where (gcc -O2), unless already built from this source."""
    where.mkdir(parents=True, exist_ok=True)
    source, binary = where / "socket_loop.c", where / "socket_loop"
    if not (binary.exists() and source.exists() and source.read_text() == LOOP_C):
        source.write_text(LOOP_C)
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)


def ns_per_op(binary: str, loop: str, ops: int) -> float:
    return float(subprocess.run([binary, loop, str(ops)], capture_output=True, text=True, check=True, timeout=300).stdout)


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def sensor(stats: dict[str, list[float]] | None = None) -> Iterator[None]:
    """The whole sensor (btf mode, socket programs attached); with stats, bpf_stats of its
    socket programs over the block: kernel ns per run, by program."""
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp, Store(Path(tmp) / "events.db") as store:
        s = Sensor(Catalog.load(), store, probe_mode="btf")
        s.start()
        assert s.status()["network_mode"] == "cgroup", s.status()["network_note"]
        probe = s._probe   # noqa: SLF001 (the bench reads the kernel's own figures)
        assert probe is not None
        before = probe.program_stats()
        try:
            yield
        finally:
            if stats is not None:
                after = probe.program_stats()
                for name, (runs, ns) in after.items():
                    d_runs, d_ns = runs - before[name][0], ns - before[name][1]
                    if name.startswith("netutil_") and d_runs:
                        stats.setdefault(name, []).append(d_ns / d_runs)
            s.stop()


FLOOR_C = "BPF_ARRAY(slots, u64, 1024);\n"


@contextlib.contextmanager
def skb_floor() -> Iterator[None]:
    """A cgroup_skb egress program doing one array lookup, linked to the v2 root."""
    from bcc import BPF
    bpf = BPF(text=FLOOR_C + "int floor_egress(struct __sk_buff *skb) { u32 k = skb->len & 1023; "
                             "u64 *v = slots.lookup(&k); return v && *v == 7 ? 1 : 1; }\n")
    fn = bpf.load_func(b"floor_egress", BPF.CGROUP_SKB, attach_type=1)
    root = os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    link = link_create(fn.fd, root, 1)
    os.close(root)
    try:
        yield
    finally:
        os.close(link)
        bpf.cleanup()


@contextlib.contextmanager
def sendlen_floor() -> Iterator[None]:
    """A raw tracepoint on sock:sock_send_length doing one array lookup (by pid)."""
    from bcc import BPF
    bpf = BPF(text=FLOOR_C + "RAW_TRACEPOINT_PROBE(sock_send_length) { u32 k = (bpf_get_current_pid_tgid() >> 32) & 1023; "
                             "u64 *v = slots.lookup(&k); return v && *v == 7; }\n")
    try:
        yield
    finally:
        bpf.cleanup()


def scan(ports: int, execs: int) -> dict[str, Any]:
    """A tracked nmap connect scan of `ports` loopback ports while a /tmp script makes
    `execs` exec rows: what was kept, folded and lost."""
    nmap = shutil.which("nmap")
    if nmap is None:
        return {"skipped": "nmap is not installed (scripts/setup.sh installs it)"}
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp, Store(Path(tmp) / "events.db") as store, \
            tempfile.TemporaryDirectory(prefix="netutil-scan-", dir="/tmp") as work:
        s = Sensor(Catalog.load(), store, probe_mode="btf")
        s.start()
        script = Path(work) / "scan.sh"
        tag = os.urandom(4).hex()
        script.write_text(f"#!/bin/sh\n{nmap} -n -sT -Pn -T5 --max-retries 0 -p1-{ports} 127.0.0.1 >/dev/null &\n"
                          f"i=0\nwhile [ $i -lt {execs} ]; do curl --version {tag}-$i >/dev/null; i=$((i+1)); done\nwait\n")
        script.chmod(0o755)
        started = time.monotonic()
        subprocess.run([str(script)], check=True, timeout=600)
        took = time.monotonic() - started
        time.sleep(ANSWER_SETTLE_S)
        s.stop()
        status = s.status()
        execs_kept = len([r for r in store.select([("utility", "=", "curl")]) if tag in r["cmdline"]])
        sockets = store.select(table=SOCKETS)
        scan_rows = [r for r in sockets if r["comm"] == "nmap"]
    return {
        "ports": ports, "seconds": round(took, 2), "exec_rows_expected": execs, "exec_rows_kept": execs_kept,
        "events_lost": status["events_lost"], "socket_events": status["socket_events"],
        "socket_events_lost": status["socket_events_lost"], "socket_rows": len(scan_rows),
        "socket_rows_count_sum": sum(r["count"] for r in scan_rows),
    }


ANSWER_SETTLE_S = 4.0   # a connect's outcome is waited for 3 s
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, the fastest kept")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ports", type=int, default=10_000)
    args = parser.parse_args()
    previous = STATS.read_text()
    STATS.write_text("1\n")   # the kernel counts program runs and time only while this is on
    try:
        return measure(args)
    finally:
        STATS.write_text(previous)


def measure(args: argparse.Namespace) -> int:
    untracked = loop_binary(WORK)
    tracked_dir = Path(tempfile.mkdtemp(prefix="netutil-bench-", dir="/tmp"))
    tracked = loop_binary(tracked_dir)
    stats: dict[str, list[float]] = {}
    conditions: dict[str, tuple[Callable[[], ContextManager[None]], str]] = {
        "none": (nothing, untracked), "sensor": (lambda: sensor(stats), untracked), "tracked": (sensor, tracked),
        "skb_floor": (skb_floor, untracked), "sendlen_floor": (sendlen_floor, untracked),
    }
    for loop in LOOPS:
        ns_per_op(untracked, loop, args.ops)   # warm caches
    runs: dict[str, dict[str, list[float]]] = {name: {loop: [] for loop in LOOPS} for name in conditions}
    try:
        for _ in range(args.rounds):
            for name, (condition, binary) in conditions.items():
                with condition():
                    for loop in LOOPS:
                        runs[name][loop].append(min(ns_per_op(binary, loop, args.ops) for _ in range(args.repeat)))
    finally:
        shutil.rmtree(tracked_dir, ignore_errors=True)
    result: dict[str, Any] = {"ops": args.ops, "repeat": args.repeat, "rounds": args.rounds, "conditions": {}}
    print(f"socket side: fastest of {args.repeat} runs of {args.ops:,} operations, {args.rounds} interleaved rounds, "
          "medians (min-max)")
    print(f"  {'':14}" + "".join(f"{loop + ' ns':>24} {'ratio':>6}" for loop in LOOPS))
    for name, by_loop in runs.items():
        entry = {}
        line = f"  {name:14}"
        for loop in LOOPS:
            s = summary(by_loop[loop])
            ratio = s["median"] / summary(runs["none"][loop])["median"]
            entry[loop] = {**s, "ratio": ratio}
            line += f"{s['median']:10.1f} ({s['min']:.1f}-{s['max']:.1f}) {ratio:6.3f}"
        result["conditions"][name] = entry
        print(line)
    result["kernel_ns_per_run"] = {name: summary(values) for name, values in sorted(stats.items())}
    print("  kernel ns per run (sensor, bpf_stats): " + ", ".join(
        f"{name.removeprefix('netutil_')} {v['median']:.0f}" for name, v in result["kernel_ns_per_run"].items()))
    result["scan"] = scan(args.ports, 300)
    print(f"  tracked scan: {result['scan']}")
    print(f"  written to {save('sockets', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
