"""7. Syscall tax: what watching execs costs the syscalls that are not execs.

Attaching any `syscalls:*` tracepoint sets the syscall-tracepoint work flag on every
thread, so every syscall of every process takes the slow path, not only execs; exec-only
benchmarks cannot see it. A C loop (compiled here) times getppid() and one-byte read()s
from /dev/zero under each condition, interleaved round by round:

  none        nothing attached
  btf         the sensor as `watch` runs it, probe mode btf (raw tracepoints on exec and fork)
  tracepoint  the same sensor, probe mode tracepoint (the exec syscalls' tracepoints)
  bpftrace    `tracepoint:syscalls:sys_enter_execve` printing each exec
  auditd      an auditd execve rule

A measurement is the fastest of --repeat runs of --calls calls: on a VM, steal time and
neighbours only ever add, and back-to-back runs with nothing attached vary by ±15 % here.
Reported: medians over the rounds (min-max) of ns per syscall, and the ratio to `none`.
Run as root after `scripts/setup.sh --bench`. Prints figures and writes
bench/results/syscall_tax.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from typing import Callable, ContextManager

from common import WORK, ratio_table, save, static_binary
from overhead import auditd, bpftrace, netutil, nothing

LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* syscall_loop getppid|read N: ns per call, on stdout. */
int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long n = atol(argv[2]);
    int fd = open("/dev/zero", O_RDONLY);
    char byte;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (strcmp(argv[1], "getppid") == 0)
        for (long i = 0; i < n; i++)
            getppid();
    else
        for (long i = 0; i < n; i++)
            if (read(fd, &byte, 1) != 1)
                return 1;
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""
LOOPS = ("getppid", "read")


def loop_binary() -> str:
    """The C loop, compiled here (gcc -O2) unless already built from this source."""
    WORK.mkdir(parents=True, exist_ok=True)
    source, binary = WORK / "syscall_loop.c", WORK / "syscall_loop"
    if not (binary.exists() and source.exists() and source.read_text() == LOOP_C):
        source.write_text(LOOP_C)
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)


def ns_per_call(binary: str, loop: str, calls: int) -> float:
    return float(subprocess.run([binary, loop, str(calls)], capture_output=True, text=True, check=True, timeout=120).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement, the fastest kept")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    binary = loop_binary()
    marker = static_binary("bench-marker")
    tools: dict[str, Callable[[], ContextManager[int | None]]] = {
        "none": nothing, "btf": lambda: netutil("btf"), "tracepoint": lambda: netutil("tracepoint"),
        "bpftrace": lambda: bpftrace(marker), "auditd": auditd,
    }
    for name, needs in (("bpftrace", ("bpftrace",)), ("auditd", ("auditd", "auditctl"))):
        if any(shutil.which(t) is None for t in needs):
            print(f"syscall_tax: {name} is not installed (run scripts/setup.sh --bench): left out", file=sys.stderr)
            del tools[name]
    for loop in LOOPS:
        ns_per_call(binary, loop, args.calls)   # warm caches
    runs: dict[str, dict[str, list[float]]] = {name: {loop: [] for loop in LOOPS} for name in tools}
    for _ in range(args.rounds):
        for name, tool in tools.items():
            with tool():
                for loop in LOOPS:
                    runs[name][loop].append(min(ns_per_call(binary, loop, args.calls) for _ in range(args.repeat)))
    result: dict[str, object] = {"calls": args.calls, "repeat": args.repeat, "rounds": args.rounds, "tools": {}}
    print(f"syscall tax: fastest of {args.repeat} runs of {args.calls:,} calls per loop, {args.rounds} interleaved rounds, "
          "medians (min-max)")
    result["tools"] = ratio_table(runs, "ns")
    print(f"  written to {save('syscall_tax', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
