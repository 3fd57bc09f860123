"""What the benchmarks share: the machine's description, the static test binary built
from C, spawners that fork+exec at full speed, and where results are written."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = ROOT / "bench" / ".work"          # not a forwarded prefix: the kernel filter drops execs here
RESULTS = ROOT / "bench" / "results"
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")   # the kernel times programs only while this is 1
TRUE_C = "int main(void) { return 0; }\n"


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def static_binary(name: str) -> str:
    """A static binary that exits at once, compiled here from C (gcc -static -O2)."""
    WORK.mkdir(parents=True, exist_ok=True)
    source = WORK / "true.c"
    source.write_text(TRUE_C)
    binary = WORK / name
    stamp = WORK / f".{name}.{hashlib.sha256(TRUE_C.encode()).hexdigest()[:12]}"
    if not (binary.exists() and stamp.exists()):
        subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(source)], check=True)
        stamp.touch()
    return str(binary)


def _spawn_loop(path: str, count: int) -> None:
    for _ in range(count):
        pid = os.posix_spawn(path, [path], {})
        os.waitpid(pid, 0)


def spawn(path: str, count: int, workers: int | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the spawners and their children) for `count` fork+exec
    of path, split over one spawner process per core."""
    workers = workers or os.cpu_count() or 1
    procs = [multiprocessing.Process(target=_spawn_loop, args=(path, count // workers)) for _ in range(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio_table(runs: dict[str, dict[str, list[float]]], unit: str, paired: bool = False) -> dict[str, dict[str, Any]]:
    """Print, and return, each condition's runs per loop: median (min-max) and the ratio to
    the first condition, the baseline. The ratio of the medians; with paired, the median of
    each round's ratio to the baseline's run of the same round (when a round's runs are
    milliseconds apart and the machine drifts between rounds)."""
    baseline = next(iter(runs.values()))
    loops = list(baseline)
    width = max(len(name) for name in runs) + 1
    print(f"  {'':{width}}" + "".join(f"{loop + ' ' + unit:>24} {'ratio':>6}" for loop in loops))
    table: dict[str, dict[str, Any]] = {}
    for name, by_loop in runs.items():
        entry: dict[str, Any] = {}
        line = f"  {name:{width}}"
        for loop in loops:
            s = summary(by_loop[loop])
            ratio = (statistics.median(c / b for c, b in zip(by_loop[loop], baseline[loop])) if paired
                     else s["median"] / summary(baseline[loop])["median"])
            entry[loop] = {**s, "ratio": ratio, "runs": by_loop[loop]}
            line += f"{s['median']:10.1f} ({s['min']:.1f}-{s['max']:.1f}) {ratio:6.3f}"
        table[name] = entry
        print(line)
    return table


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path
