"""Probe figures: loss under an exec storm, and what the probe adds to fork+exec.

Run as root after set-up: `make bench`. Prints figures; asserts nothing about speed.

1. Storm: N catalog execs (a tiny static ELF named `nc`, which exits at once) from one
   spawner process per core at full speed; execs forwarded and lost.
2. Pipeline storm: the same through the whole sensor (probe, enrichment, store): rows
   stored, lost, and the CPU time user space spent per 1,000 rows.
3. Overhead: wall time of N fork+exec of the same tiny binary under a name and directory
   the kernel filter drops, without and with the probe, interleaved (A B A B ...) in this
   one run, reported as medians and their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from osquery_netutil.catalog import Catalog  # noqa: E402
from osquery_netutil.probe import Probe  # noqa: E402
from osquery_netutil.sensor import Sensor  # noqa: E402
from osquery_netutil.store import Store  # noqa: E402
from tests.support import tiny_elf, write_executable  # noqa: E402


def spawn_loop(path: str, count: int) -> None:
    """fork+exec+wait `count` times, as fast as one process can."""
    for _ in range(count):
        pid = os.posix_spawn(path, [path], {})
        os.waitpid(pid, 0)


def timed_spawns(path: str, count: int, workers: int) -> float:
    per = count // workers
    procs = [multiprocessing.Process(target=spawn_loop, args=(path, per)) for _ in range(workers)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - start


def storm(catalog: Catalog, count: int, workers: int) -> None:
    received = 0
    lock = threading.Lock()

    def on_exec(rec: object) -> None:
        nonlocal received
        with lock:
            received += 1

    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as d:
        nc = str(write_executable(Path(d) / "nc", tiny_elf()))
        probe = Probe(catalog.basenames(), on_exec)
        probe.start()
        try:
            before = probe.counters()
            wall = timed_spawns(nc, count, workers)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with lock:
                    if received >= count:
                        break
                time.sleep(0.05)
            after = probe.counters()
        finally:
            probe.stop()
    rate = count / wall
    print(f"storm: {count} catalog execs from {workers} spawners in {wall:.2f} s ({rate:,.0f} execs/s)")
    print(f"  forwarded by the kernel {after.forwarded - before.forwarded}, lost {after.lost - before.lost}, "
          f"received in user space {received}")


def sensor_storm(catalog: Catalog, count: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as d:
        nc = str(write_executable(Path(d) / "nc", tiny_elf()))
        store = Store(Path(d) / "events.db", max_rows=10 * count)
        sensor = Sensor(catalog, store)
        sensor.start()
        try:
            before = sensor.status()
            cpu0 = time.process_time()
            wall = timed_spawns(nc, count, workers)
            deadline = time.monotonic() + 60
            while sensor.rows_made - before["events_matched"] < count and time.monotonic() < deadline:
                time.sleep(0.05)
            store.flush()
            cpu = time.process_time() - cpu0
            after = sensor.status()
        finally:
            sensor.stop()
            store.close()
        with Store(Path(d) / "events.db", readonly=True) as kept:
            stored = len(kept.select([("path", "=", nc)]))
    made = after["events_matched"] - before["events_matched"]
    print(f"pipeline storm: {count} catalog execs from {workers} spawners in {wall:.2f} s ({count / wall:,.0f} execs/s)")
    print(f"  rows made {made}, stored {stored}, lost {after['events_lost'] - before['events_lost']}, "
          f"user-space CPU {cpu / max(made, 1) * 1e6:,.0f} us per row ({cpu:.2f} s, both threads)")


def unfiltered_binary() -> str:
    """The tiny ELF under a name and directory that the kernel filter drops."""
    workdir = Path(__file__).resolve().parent / ".work"    # not a forwarded prefix
    workdir.mkdir(exist_ok=True)
    return str(write_executable(workdir / "bench-true", tiny_elf()))


def overhead(catalog: Catalog, count: int, rounds: int, workers: int) -> None:
    binary = unfiltered_binary()
    timed_spawns(binary, 500, workers)                      # warm up caches
    off, on = [], []
    for _ in range(rounds):
        off.append(timed_spawns(binary, count, workers))
        probe = Probe(catalog.basenames(), lambda rec: None)
        probe.start()
        try:
            on.append(timed_spawns(binary, count, workers))
        finally:
            probe.stop()
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"overhead: {count} fork+exec of a static binary, {rounds} interleaved rounds, {workers} spawners")
    print(f"  without probe: median {m_off * 1e3:.1f} ms (min {min(off) * 1e3:.1f}, max {max(off) * 1e3:.1f}), "
          f"{m_off / count * 1e6:.1f} us/exec")
    print(f"  with probe:    median {m_on * 1e3:.1f} ms (min {min(on) * 1e3:.1f}, max {max(on) * 1e3:.1f}), "
          f"{m_on / count * 1e6:.1f} us/exec")
    print(f"  ratio with/without: {m_on / m_off:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", type=int, default=5000)
    parser.add_argument("--execs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if platform.machine() != "x86_64":
        print("bench: the tiny test binary is x86_64 code; nothing measured", file=sys.stderr)
        return 1
    workers = os.cpu_count() or 1
    catalog = Catalog.load()
    print(f"machine: {platform.node()} kernel {platform.release()} cores {workers} python {platform.python_version()}")
    storm(catalog, args.storm, workers)
    sensor_storm(catalog, args.storm, workers)
    overhead(catalog, args.execs, args.rounds, workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
