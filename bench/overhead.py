"""1. Exec overhead: what each way of watching execs costs a busy host.

N fork+exec of a static binary compiled from C, from one spawner per core at full speed,
under four conditions, interleaved (A B C D A B C D ...) so that the machine's drift hits
all alike:

  none       nothing attached
  floor      the same tracepoints as ours with empty programs: the cost of attaching alone
  sched-floor  only the two sched/task tracepoints, empty: what a probe without syscall
             tracepoints costs at least
  netutil-btf  this project's sensor (probe, enrichment and store), as `watch` runs it,
             in btf mode (raw tracepoints on exec and fork only)
  netutil-tracepoint  the same in tracepoint mode (the fallback)
  bpftrace   a bpftrace one-liner on sys_enter_execve printing each exec to a file (the
             bare-eBPF baseline)
  auditd     an auditd execve rule (what osquery's process_events relies on)

Reported: medians (min-max) of wall time, the spawners' CPU, and the CPU of the tool's
own process, with the ratio of wall time to `none`. Run as root after `scripts/setup.sh
--bench`. Prints figures and writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from common import WORK, process_cpu, save, spawn, static_binary, summary

from osquery_netutil.catalog import Catalog
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.store.store import Store

BPFTRACE = 'tracepoint:syscalls:sys_enter_execve { printf("%d %s %s\\n", pid, comm, str(args->filename)); }'
AUDIT_KEY = "netutil_bench"


@contextlib.contextmanager
def nothing() -> Iterator[int | None]:
    yield None


@contextlib.contextmanager
def netutil(mode: str = "auto") -> Iterator[int | None]:
    """The whole sensor, as `watch` runs it, in the given probe mode."""
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp, Store(Path(tmp) / "events.db") as store:
        sensor = Sensor(Catalog.load(), store, probe_mode=mode)
        sensor.start()
        assert mode == "auto" or sensor.status()["probe_mode"] == mode
        try:
            yield None   # runs in this process: its CPU is this process's
        finally:
            sensor.stop()


EMPTY_SCHED_PROGRAMS = """
TRACEPOINT_PROBE(sched, sched_process_exec) { return 0; }
TRACEPOINT_PROBE(task, task_newtask) { return 0; }
"""
EMPTY_PROGRAMS = EMPTY_SCHED_PROGRAMS + """
TRACEPOINT_PROBE(syscalls, sys_enter_execve) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_execveat) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_execve) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_execveat) { return 0; }
"""


@contextlib.contextmanager
def floor(programs: str = EMPTY_PROGRAMS) -> Iterator[int | None]:
    """Tracepoints with programs that do nothing: what attaching them costs by itself
    (a syscall tracepoint sends every syscall of every process down the slow path)."""
    from bcc import BPF
    bpf = BPF(text=programs.encode())
    try:
        yield None
    finally:
        bpf.cleanup()


@contextlib.contextmanager
def bpftrace(marker: str) -> Iterator[int | None]:
    out = WORK / "bpftrace.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(["bpftrace", "-e", BPFTRACE], stdout=sink, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while marker not in out.read_text(errors="replace"):   # attached once it prints our exec
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bpftrace did not attach")
            subprocess.run([marker], check=False)
            time.sleep(0.2)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def _auditd_pid() -> int | None:
    pidfile = Path("/var/run/auditd.pid")
    text = pidfile.read_text().strip() if pidfile.exists() else ""
    return int(text) if text.isdigit() and Path(f"/proc/{text}").exists() else None


@contextlib.contextmanager
def auditd() -> Iterator[int | None]:
    """auditd with an execve rule; started here unless it runs already (then left running)."""
    running = _auditd_pid()
    if running is None:
        subprocess.run(["auditd"], check=True)
    pid = running
    for _ in range(50):
        pid = pid or _auditd_pid()
        if pid:
            break
        time.sleep(0.1)
    subprocess.run(["auditctl", "-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", AUDIT_KEY],
                   check=True, capture_output=True)
    try:
        yield pid
    finally:
        subprocess.run(["auditctl", "-d", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", AUDIT_KEY],
                       check=False, capture_output=True)
        if pid and running is None:
            subprocess.run(["kill", str(pid)], check=False)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary = static_binary("bench-true")
    marker = static_binary("bench-marker")
    tools = {"none": nothing, "sched-floor": lambda: floor(EMPTY_SCHED_PROGRAMS), "floor": floor,
             "netutil-btf": lambda: netutil("btf"), "netutil-tracepoint": lambda: netutil("tracepoint"),
             "bpftrace": lambda: bpftrace(marker), "auditd": auditd}
    missing = [t for t in ("bpftrace", "auditd", "auditctl") if shutil.which(t) is None]
    for name in list(tools):
        if (name == "bpftrace" and "bpftrace" in missing) or (name == "auditd" and {"auditd", "auditctl"} & set(missing)):
            print(f"overhead: {name} is not installed (run scripts/setup.sh --bench): left out", file=sys.stderr)
            del tools[name]
    spawn(binary, 1000)   # warm caches
    runs: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": [], "tool_cpu": []} for name in tools}
    for _ in range(args.rounds):
        for name, tool in tools.items():
            with tool() as pid:
                own = time.process_time()
                tool_before = process_cpu(pid) if pid else 0.0
                wall, cpu = spawn(binary, args.execs)
                time.sleep(0.5)   # let the tool finish writing what it was handed
                tool_cpu = (process_cpu(pid) - tool_before) if pid else (time.process_time() - own)
            runs[name]["wall"].append(wall)
            runs[name]["cpu"].append(cpu)
            runs[name]["tool_cpu"].append(tool_cpu)
    base = summary(runs["none"]["wall"])["median"]
    result = {"execs": args.execs, "rounds": args.rounds, "tools": {}}
    print(f"overhead: {args.execs} fork+exec of a static binary per run, {args.rounds} interleaved rounds")
    print(f"  {'':10} {'wall ms (min-max)':>24} {'ratio':>7} {'us/exec':>8} {'spawner CPU s':>14} {'tool CPU s':>11}")
    for name, r in runs.items():
        wall, cpu, tool_cpu = summary(r["wall"]), summary(r["cpu"]), summary(r["tool_cpu"])
        ratio = wall["median"] / base
        result["tools"][name] = {"wall": wall, "cpu": cpu, "tool_cpu": tool_cpu, "ratio": ratio,
                                 "us_per_exec": wall["median"] / args.execs * 1e6}
        print(f"  {name:10} {wall['median'] * 1e3:8.0f} ({wall['min'] * 1e3:.0f}-{wall['max'] * 1e3:.0f}) "
              f"{ratio:7.3f} {wall['median'] / args.execs * 1e6:8.1f} {cpu['median']:14.2f} {tool_cpu['median']:11.2f}")
    print(f"  written to {save('overhead', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
