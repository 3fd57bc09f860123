"""10. Content verdicts: what judging every executable once costs a host, cold and steady.

btf mode forwards the first exec of each image with no verdict; user space compares it
with the installed utilities (by size, then sha256) and writes the verdict back. A host's
first minute pays that for each program it runs; afterwards, each exec costs one lookup.
This runs N distinct copies of a static binary (N images, as a host's working set of
programs) twice under the sensor's probe and enrichment, and once with no probe:

  cold     the first pass: every image forwarded and judged
  steady   the second pass: every image known to the kernel
  none     no probe attached, on other copies, twice (the baselines of the first and
           the second exec of a file, in the same script)

and prints the exec rate of each pass against the baseline, the kernel's ns per exec
(bpf_stats) and the user-space CPU per judged image (this process: the probe's reader and
enrichment; the spawners are processes of their own). Run as root after set-up; writes
bench/results/verdicts.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from common import WORK, process_cpu, save, static_binary

from osquery_netutil.catalog import Catalog
from osquery_netutil.events.enrich import Enricher
from osquery_netutil.kernel.probe import Probe
from osquery_netutil.kernel.records import F_UNJUDGED, ExecRecord

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def copies(count: int) -> list[str]:
    """count distinct images (copies, not links: each its own inode)."""
    folder = WORK / "verdicts"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = static_binary("bench-true")
    paths = []
    for i in range(count):
        path = folder / f"prog-{i}"
        shutil.copy(source, path)
        paths.append(str(path))
    return paths


def _spawn_each(paths: list[str]) -> None:
    for path in paths:
        os.waitpid(os.posix_spawn(path, [path], {}), 0)


def run_all(paths: list[str]) -> float:
    """Wall seconds to fork+exec each path once, split over one spawner process per core
    (not this process: its probe thread must not share the spawners' interpreter)."""
    workers = os.cpu_count() or 1
    procs = [multiprocessing.Process(target=_spawn_each, args=(paths[i::workers],)) for i in range(workers)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - start


def kernel_ns(probe: Probe) -> int:
    return sum(ns for _, ns in probe.program_stats().values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    catalog = Catalog.load()
    previous = STATS.read_text().strip()
    STATS.write_text("1")
    rounds: dict[str, list[float]] = {"none": [], "none_again": [], "cold": [], "steady": [], "cold_ns": [], "steady_ns": [],
                                      "cold_cpu_ms": [], "judged": []}
    try:
        for _ in range(args.rounds):
            paths = copies(args.images)
            time.sleep(2.5)                          # as the probe's copies below
            rounds["none"].append(run_all(paths))    # first execs, as the cold pass
            rounds["none_again"].append(run_all(paths))   # second execs, as the steady pass
            paths = copies(args.images)              # new inodes: no verdicts yet
            time.sleep(2.5)                          # older than enrich._SETTLED_S: verdicts are given
            judged: list[int] = []
            probe: Probe

            def on_exec(rec: ExecRecord) -> None:
                if rec.flags & F_UNJUDGED:
                    judged.append(1)
                enricher.row(rec)

            probe = Probe(catalog.kernel_names(), on_exec, mode="btf", content_verdicts=True)
            enricher = Enricher(catalog, probe.ancestry, verdict=probe.remember_verdict)
            probe.start()
            try:
                for phase in ("cold", "steady"):
                    ns, cpu = kernel_ns(probe), process_cpu(os.getpid())
                    wall = run_all(paths)
                    probe.drain()
                    rounds[phase].append(wall)
                    rounds[f"{phase}_ns"].append((kernel_ns(probe) - ns) / len(paths))
                    if phase == "cold":
                        rounds["cold_cpu_ms"].append((process_cpu(os.getpid()) - cpu) * 1e3 / len(paths))   # the sensor's share
                        rounds["judged"].append(len(judged))
            finally:
                probe.stop()
    finally:
        STATS.write_text(previous)
    med = {k: sorted(v)[len(v) // 2] for k, v in rounds.items()}
    result = {
        "images": args.images, "rounds": args.rounds,
        "cold_exec_ratio": med["none"] / med["cold"], "steady_exec_ratio": med["none_again"] / med["steady"],
        "cold_kernel_ns_per_exec": med["cold_ns"], "steady_kernel_ns_per_exec": med["steady_ns"],
        "cold_cpu_ms_per_image": med["cold_cpu_ms"], "judged_per_round": med["judged"],
        "seconds": {k: rounds[k] for k in ("none", "none_again", "cold", "steady")},
    }
    print(f"{args.images} distinct images, each exec'd once per pass (median of {args.rounds} rounds):")
    print(f"  cold   (first exec, judged): exec rate {result['cold_exec_ratio']:.3f} of no probe, "
          f"{med['cold_ns']:.0f} ns in the kernel per exec, {med['cold_cpu_ms']:.2f} ms of the sensor's CPU per image, "
          f"{med['judged']:.0f} forwarded to be judged")
    print(f"  steady (known to the kernel): exec rate {result['steady_exec_ratio']:.3f} of no probe, "
          f"{med['steady_ns']:.0f} ns in the kernel per exec")
    print(f"  written to {save('verdicts', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
