"""Kernel time per run of each probe program (kernel.bpf_stats_enabled), for N execs of a
non-catalog static binary. Run as root after set-up; prints figures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.probe_bench import timed_spawns, unfiltered_binary  # noqa: E402
from osquery_netutil.catalog import Catalog  # noqa: E402
from osquery_netutil.probe import Probe  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def main(count: int = 5000) -> int:
    binary = unfiltered_binary()
    probe = Probe(Catalog.load().basenames(), lambda rec: None)
    probe.start()
    previous = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        before = probe.program_stats()
        timed_spawns(binary, count, os.cpu_count() or 1)
        after = probe.program_stats()
    finally:
        STATS.write_text(previous)
        probe.stop()
    total = 0.0
    print(f"kernel cost per run, {count} fork+exec of a non-catalog static binary:")
    for name, (runs, ns) in after.items():
        r, t = runs - before[name][0], ns - before[name][1]
        per_exec = t / count
        total += per_exec
        print(f"  {name:32s} runs {r:6d}  {t / max(r, 1):7.0f} ns/run  {per_exec:7.0f} ns/exec")
    print(f"  {'all programs':32s} {'':24s} {total:7.0f} ns/exec")
    return 0


if __name__ == "__main__":
    sys.exit(main())
