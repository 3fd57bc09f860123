"""11. Socket side: what watching tracked processes' sockets costs everyone else, and a
tracked scan.

A C loop (compiled here) times three loopback workloads, each in a process of its own:

  connect   a TCP connect() to a local listener, accepted and closed (the connect4 program
            and the tcp_destroy_sock tracepoint run; sock_ops in tracepoint mode)
  udp       a 64-byte UDP sendto() and its recv() (the send tracepoint: an unconnected datagram)
  tcp_rr    a 64-byte request and response over one TCP connection (the send tracepoint per write)

under each condition, interleaved round by round:

  none          no socket hook linked (the sensor's exec probe stays attached throughout)
  sensor        the sensor's socket programs (btf mode: linked to the cgroup v2 root, the
                raw tracepoint on sock:sock_send_length that reads what tracked processes
                send, and those on sock:inet_sk_error_report and tcp:tcp_destroy_sock that
                read TCP outcomes); the loop is untracked (run from bench/.work, no catalog name)
  tracked       the same, the loop run from /tmp (tracked: its events are reported until
                its budget of SOCK_BUDGET is spent, then counted)
  skb_floor     only a cgroup_skb egress program that does one array lookup: the fixed
                cost of the hook tracepoint mode reads sends at (it runs per packet)
  sendlen_floor only a raw tracepoint on sock:sock_send_length that does one array lookup:
                the fixed cost of the hook btf mode reads sends at (per send, in the sender)
  connect4_floor, destroy_floor, sockops_floor
                only a connect4 program doing one array lookup, only a raw tracepoint on
                tcp:tcp_destroy_sock reading a socket's cookie, or only a sock_ops program
                that returns: the fixed cost of the hooks a connect passes (btf mode's
                outcomes at tcp_destroy_sock; sock_ops, which tracepoint mode reads them
                at, is called about ten times for each TCP connection, tracked or not)

The hooks are loaded once and linked or detached between runs (microseconds), so that the
conditions alternate run by run, in an order shuffled every round (a fixed order would
charge any drift within a round to the conditions that run last), and every run is
pinned to one core (--cpu): this VM's two cores differ in speed by up to 45 %.
Reported: medians over the rounds (min-max) of ns per operation, and the ratio to `none` as
the median of each round's own ratio (a round's runs are milliseconds apart). Then the udp
loop alone for --send-rounds more rounds (none, sensor, sendlen_floor, and sendlen_empty: an
empty program on sock:sock_send_length, the hook's own cost), with the 95 % interval of the
median ratio; kernel ns per run and runs per operation of each program (bpf_stats, in a
pass of its own) under `sensor` and the floors; and a tracked `nmap -sT` of 10,000
loopback ports with exec rows made at the same time: none of those may be lost; socket
events are folded or counted. Run as root after `scripts/setup.sh --bench`. Writes
bench/results/sockets.json.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BPF_STATS, WORK, ratio_table, save

from osquery_netutil.catalog import Catalog
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.events.sockets import SETTLED_S
from osquery_netutil.kernel.btf import VMLINUX, Btf
from osquery_netutil.kernel.fields import OUTCOME_FIELDS
from osquery_netutil.kernel.program import run_stats
from osquery_netutil.kernel.sockets import CgroupLinks, cgroup2_root, link_create
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


CPU = 0   # every run on one core: this VM's two cores differ by up to 45 % (bench/sockets.py --cpu)


def ns_per_op(binary: str, loop: str, ops: int) -> float:
    return float(subprocess.run([binary, loop, str(ops)], capture_output=True, text=True, check=True, timeout=300,
                                preexec_fn=lambda: os.sched_setaffinity(0, {CPU})).stdout)


class Hooks:
    """Every hook the conditions need, loaded once and linked or detached in microseconds
    between runs, so that conditions alternate run by run: this VM's speed drifts by tens
    of percent over seconds, far more than what is measured. Loaded: the sensor (btf
    mode; its exec probe stays attached throughout, its socket programs are linked only
    for `sensor` and `tracked`), a cgroup_skb egress program and a raw tracepoint on
    sock:sock_send_length, each doing one array lookup (the two hooks DNS questions could
    be read at)."""

    FLOOR_C = """
BPF_ARRAY(slots, u64, 1024);
int floor_egress(struct __sk_buff *skb) { u32 k = skb->len & 1023; u64 *v = slots.lookup(&k); return v && *v == 7 ? 1 : 1; }
int floor_sendlen_empty(void *ctx) { return 0; }
int floor_sendlen(void *ctx) { u32 k = (bpf_get_current_pid_tgid() >> 32) & 1023; u64 *v = slots.lookup(&k); return v && *v == 7; }
int floor_connect4(struct bpf_sock_addr *ctx) { u32 k = (bpf_get_current_pid_tgid() >> 32) & 1023; u64 *v = slots.lookup(&k); return 1; }
int floor_sockops(struct bpf_sock_ops *skops) { return skops->op == 99 ? 0 : 1; }
int floor_destroy(struct bpf_raw_tracepoint_args *ctx) {
    u64 c = 0; bpf_probe_read_kernel(&c, 8, (void *)ctx->args[0] + OFF_SKC_COOKIE);
    u32 k = c & 1023; u64 *v = slots.lookup(&k); return v && *v == 7; }
"""

    def __init__(self, store: Store) -> None:
        from bcc import BPF
        self.sensor = Sensor(Catalog.load(), store, probe_mode="btf")
        self.sensor.start()
        self.probe = self.sensor._probe   # noqa: SLF001 (the bench toggles the probe's own links)
        assert self.probe is not None and self.probe.network_mode == "cgroup", self.probe and self.probe.network_note
        cookie = Btf.load(VMLINUX).offset(*OUTCOME_FIELDS["OFF_SKC_COOKIE"])
        self.floors = BPF(text=self.FLOOR_C, cflags=[f"-DOFF_SKC_COOKIE={cookie}"])
        # (condition, program fd, attach type) of the cgroup floors
        self._cgroup_floors = {
            "skb_floor": (self.floors.load_func(b"floor_egress", BPF.CGROUP_SKB, attach_type=1).fd, 1),
            "connect4_floor": (self.floors.load_func(b"floor_connect4", BPF.CGROUP_SOCK_ADDR, attach_type=10).fd, 10),
            "sockops_floor": (self.floors.load_func(b"floor_sockops", BPF.SOCK_OPS, attach_type=3).fd, 3),
        }
        self._tracepoint_floors = {"sendlen_floor": (b"sock_send_length", b"floor_sendlen"),
                                   "sendlen_empty": (b"sock_send_length", b"floor_sendlen_empty"),
                                   "destroy_floor": (b"tcp_destroy_sock", b"floor_destroy")}
        self._root = os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
        self._links: list[int] = []
        self.sockets(False)

    def sockets(self, on: bool) -> None:
        """The sensor's socket programs linked (on) or not."""
        assert self.probe is not None
        if self.probe._links is not None:   # noqa: SLF001
            self.probe._links.close()   # noqa: SLF001
            self.probe._links = None   # noqa: SLF001
        if on:   # bcc keeps the loaded programs
            self.probe._links = CgroupLinks(self.probe._bpf, sends_at_syscall=self.probe._sends_at_syscall,   # noqa: SLF001
                                            outcomes_at_tracepoints=self.probe.outcomes_at_tracepoints)

    def condition(self, name: str) -> None:
        self.sockets(name in ("sensor", "tracked"))
        for fd in self._links:
            os.close(fd)
        self._links = []
        if name in self._cgroup_floors:
            fd, attach_type = self._cgroup_floors[name]
            self._links.append(link_create(fd, self._root, attach_type))
        for tracepoint in list(self.floors.raw_tracepoint_fds):
            self.floors.detach_raw_tracepoint(tp=tracepoint)
        if name in self._tracepoint_floors:
            tracepoint, fn = self._tracepoint_floors[name]
            self.floors.attach_raw_tracepoint(tp=tracepoint, fn_name=fn)

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Runs and kernel ns of every program loaded (the sensor's and the floors'), by name."""
        assert self.probe is not None
        return {**self.probe.program_stats(), **run_stats(self.floors)}

    def close(self) -> None:
        self.condition("none")
        os.close(self._root)
        self.floors.cleanup()
        self.sensor.stop()


SEND_HOOK_CONDITIONS = ("none", "sensor", "sendlen_empty", "sendlen_floor")


def send_hook_pass(hooks: Hooks, binary: str, rounds: int, ops: int) -> dict[str, Any]:
    """The UDP loop alone, for many more rounds than the others: what the hook sends are
    read at costs by itself, an empty program on sock:sock_send_length against one doing
    the array lookup and against the sensor's (untracked), with the 95 % interval of the
    median ratio (bootstrap): whether any program there could meet a target."""
    runs: dict[str, dict[str, list[float]]] = {name: {"udp": []} for name in SEND_HOOK_CONDITIONS}
    order = list(SEND_HOOK_CONDITIONS)
    shuffle = random.Random(rounds)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            hooks.condition(name)
            runs[name]["udp"].append(ns_per_op(binary, "udp", ops))
    print(f"  the send hook alone: the udp loop, {rounds} rounds")
    table = ratio_table(runs, "ns", paired=True)
    for name, entry in table.items():
        ratios = [c / b for c, b in zip(runs[name]["udp"], runs["none"]["udp"])]
        medians = sorted(statistics.median(shuffle.choices(ratios, k=len(ratios))) for _ in range(2000))
        entry["udp"]["ratio_95"] = [medians[50], medians[1949]]
        print(f"    {name}: {entry['udp']['ratio']:.3f} (95 % {medians[50]:.3f}-{medians[1949]:.3f})")
    return table


KERNEL_CONDITIONS = ("sensor", "connect4_floor", "destroy_floor", "sockops_floor", "sendlen_floor")


def kernel_pass(hooks: Hooks, binary: str, loop: str, ops: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per condition of KERNEL_CONDITIONS, per program that ran in the loop (untracked):
    its runs per operation and kernel ns per run (bpf_stats must be on). Deterministic
    where the ratios are not: how often each hook runs, and what its program costs."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name in KERNEL_CONDITIONS:
        hooks.condition(name)
        before = hooks.program_stats()
        ns_per_op(binary, loop, ops)
        ran = {prog: (count - before[prog][0], ns - before[prog][1]) for prog, (count, ns) in hooks.program_stats().items()}
        found[name] = {prog.removeprefix("netutil_"): {"runs_per_op": runs / ops, "ns_per_run": ns / runs}
                       for prog, (runs, ns) in sorted(ran.items()) if runs >= ops / 100}
    return found


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
        time.sleep(SETTLED_S)   # the scan's last outcomes and folds are stored
        status = s.status()
        s.stop()
        execs_kept = len([r for r in store.select([("utility", "=", "curl")]) if tag in r["cmdline"]])
        sockets = store.select(table=SOCKETS)
        scan_rows = [r for r in sockets if r["comm"] == "nmap"]
    return {
        "ports": ports, "seconds": round(took, 2), "exec_rows_expected": execs, "exec_rows_kept": execs_kept,
        "events_lost": status["events_lost"], "socket_events": status["socket_events"],
        "socket_events_lost": status["socket_events_lost"], "socket_rows": len(scan_rows),
        "socket_rows_count_sum": sum(r["count"] for r in scan_rows),
    }




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--ports", type=int, default=10_000)
    parser.add_argument("--send-rounds", type=int, default=601, help="rounds of the send hook's own pass (udp only)")
    parser.add_argument("--cpu", type=int, default=0, help="the core every run is pinned to")
    args = parser.parse_args()
    global CPU
    CPU = args.cpu
    previous = BPF_STATS.read_text()   # the kernel counts program runs and time only while this is 1
    try:
        return measure(args)
    finally:
        BPF_STATS.write_text(previous)


def measure(args: argparse.Namespace) -> int:
    untracked = loop_binary(WORK)
    tracked_dir = Path(tempfile.mkdtemp(prefix="netutil-bench-", dir="/tmp"))
    tracked = loop_binary(tracked_dir)
    conditions = {"none": untracked, "sensor": untracked, "tracked": tracked, "skb_floor": untracked,
                  "sendlen_floor": untracked, "connect4_floor": untracked, "destroy_floor": untracked,
                  "sockops_floor": untracked}
    runs: dict[str, dict[str, list[float]]] = {name: {loop: [] for loop in LOOPS} for name in conditions}
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp, Store(Path(tmp) / "events.db") as store:
        hooks = Hooks(store)
        try:
            for loop in LOOPS:
                ns_per_op(untracked, loop, args.ops)   # warm caches
            order = list(conditions.items())
            shuffle = random.Random(args.rounds)
            for _ in range(args.rounds):
                for loop in LOOPS:
                    shuffle.shuffle(order)
                    for name, binary in order:
                        hooks.condition(name)
                        runs[name][loop].append(ns_per_op(binary, loop, args.ops))
            send_hook = send_hook_pass(hooks, untracked, args.send_rounds, args.ops)
            # The kernel's own figures, in a pass apart: counting costs each run two clock reads.
            BPF_STATS.write_text("1\n")
            try:
                kernel = {loop: kernel_pass(hooks, untracked, loop, args.ops) for loop in LOOPS}
            finally:
                BPF_STATS.write_text("0\n")
        finally:
            hooks.close()
            shutil.rmtree(tracked_dir, ignore_errors=True)
    result: dict[str, Any] = {"ops": args.ops, "rounds": args.rounds, }
    print(f"socket side: {args.rounds} rounds of {args.ops:,} operations, the conditions alternating run by run; "
          "ns per operation: median (min-max); ratio to none: the median of each round's ratio to its own none run")
    result["conditions"] = ratio_table(runs, "ns", paired=True)   # a round's runs are milliseconds apart
    result["send_hook"] = send_hook
    result["kernel"] = kernel
    for loop, conditions_seen in kernel.items():
        print(f"  kernel, {loop} loop (bpf_stats; runs per operation x ns per run): " + "; ".join(
            f"{name}: " + ", ".join(f"{prog} {v['runs_per_op']:.2f} x {v['ns_per_run']:.0f}" for prog, v in progs.items())
            for name, progs in conditions_seen.items()))
    result["scan"] = scan(args.ports, 300)
    print(f"  tracked scan: {result['scan']}")
    print(f"  written to {save('sockets', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
