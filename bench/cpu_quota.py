"""Under osqueryd's CPUQuota=20%: start-up and storms, against no quota, in one script.

osquery's packaged unit (tools/deployment/linux_packaging/deb/osqueryd.service) sets
`CPUQuota=20%`: osqueryd and every extension it autoloads share a fifth of one core. This
runs the built .ext as osqueryd starts it (`--socket S --timeout T --interval I`, against a
stand-in extension manager, testkit/manager.py) and `watch`, each once in a cgroup limited as systemd
limits that unit (v1 `cpu.cfs_quota_us` 20000 of `cpu.cfs_period_us` 100000, or v2
`cpu.max` "20000 100000") and once in a cgroup with no limit, and prints for each:

- the extension's registration time after launch (osqueryd waits `--extensions_timeout`,
  3 s by default, then goes on without it), and its probe's `startup_ms`;
- `watch`'s `startup_ms` (probe attached, from the status row);
- bursts of 20,000 and 100,000 catalog execs (a static binary named `nc`, one spawner per
  core, the spawners outside the quota as an attacker's are) and a steady 500 execs/s for
  20 s: rows made and events lost, as the status row counts them.

Run as root after set-up (`scripts/setup.sh --bench` for gcc's static libc). Prints
figures and writes bench/results/cpu_quota.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import WORK, save, spawn, static_binary

from osquery_netutil.store.errors import StoreError
from osquery_netutil.store.store import Store
from scripts.build_ext import build
from testkit.manager import Manager

QUOTA_US, PERIOD_US = 20_000, 100_000   # CPUQuota=20%
BURSTS = (20_000, 100_000)


class Cgroup:
    """A cgroup of the cpu controller, v1 where it is mounted there (hybrid hosts), else v2."""

    def __init__(self, name: str, quota: bool) -> None:
        v1 = Path("/sys/fs/cgroup/cpu")
        self.path = (v1 if (v1 / "cgroup.procs").exists() else Path("/sys/fs/cgroup")) / name
        self.path.mkdir(exist_ok=True)
        if (self.path / "cpu.cfs_quota_us").exists():
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(QUOTA_US) if quota else "-1")
        else:
            (self.path / "cpu.max").write_text(f"{QUOTA_US} {PERIOD_US}" if quota else f"max {PERIOD_US}")

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """argv started inside the cgroup (its whole tree, from its first instruction)."""
        procs = self.path / "cgroup.procs"
        return subprocess.Popen(["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *argv], **kwargs)

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def status(store_path: Path) -> dict[str, Any]:
    """The status row its writer last published ({} while it is creating the store)."""
    try:
        with Store(store_path, readonly=True) as store:
            return store.published_status() or {}
    except StoreError:
        return {}


def wait_running(store_path: Path, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store_path.exists() and status(store_path).get("state") == "running":
            return status(store_path)
        time.sleep(0.1)
    raise RuntimeError(f"no running status beside {store_path} within {timeout}s")


def storms(store_path: Path, nc: str) -> dict[str, Any]:
    """A burst, then a steady rate, each judged by the status row's counters (published
    every 2 s): rows made and events lost."""
    figures: dict[str, Any] = {}

    def settle(before: dict[str, Any], count: int) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        now = status(store_path)
        while time.monotonic() < deadline:
            time.sleep(2.5)
            now = status(store_path)
            made = now["events_matched"] - before["events_matched"]
            lost = now["events_lost"] - before["events_lost"]
            if made + lost >= count:
                break
        return {"execs": count, "rows": now["events_matched"] - before["events_matched"],
                "lost": now["events_lost"] - before["events_lost"]}

    for count in BURSTS:
        before = status(store_path)
        wall, _ = spawn(nc, count)
        figures[f"burst_{count}"] = {**settle(before, count), "rate": count / wall}
    before = status(store_path)
    for _ in range(20):   # 500 a second for 20 s
        started = time.monotonic()
        spawn(nc, 500, workers=1)
        time.sleep(max(1.0 - (time.monotonic() - started), 0))
    figures["steady_500_per_s"] = settle(before, 10_000)
    return figures


def run_extension(ext: str, cgroup: Cgroup, place: Path) -> dict[str, Any]:
    socket = place / "osquery.em"
    store = place / "ext.db"
    with Manager(socket) as manager:
        launched = time.monotonic()
        proc = cgroup.run([ext, "--socket", str(socket), "--timeout", "10", "--interval", "3", "--store", str(store)],
                          stderr=subprocess.DEVNULL)
        try:
            running = wait_running(store)
            registered = (manager.registered_at - launched) if manager.registered_at else None
            return {"registered_s": registered, "startup_ms": running["startup_ms"]}
        finally:
            manager.stop()   # the extension leaves within its interval when osquery goes
            proc.wait(timeout=30)
            for suffix in ("", "-wal", "-shm", ".status", ".lock", ".judged"):
                Path(str(store) + suffix).unlink(missing_ok=True)


def run_watch(cgroup: Cgroup, place: Path, nc: str | None) -> dict[str, Any]:
    store = place / "watch.db"
    proc = cgroup.run([sys.executable, "-m", "osquery_netutil", "watch", "--store", str(store), "--format", "json",
                       "--flagfile", "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result: dict[str, Any] = {"startup_ms": wait_running(store)["startup_ms"]}
        if nc is not None:
            result.update(storms(store, nc))
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        for suffix in ("", "-wal", "-shm", ".status", ".lock", ".judged"):
            Path(str(store) + suffix).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="start-ups measured per case")
    args = parser.parse_args()
    nc = static_binary("nc")   # comm "nc": a catalog utility, outside the forwarded directories
    result: dict[str, Any] = {"quota": f"{QUOTA_US} of {PERIOD_US} us"}
    with tempfile.TemporaryDirectory(prefix="netutil-quota-", dir=WORK) as tmp:
        place = Path(tmp)
        place.chmod(0o700)
        ext = str(build(place / "osquery-netutil.ext"))
        for case, quota in (("no quota", False), ("CPUQuota=20%", True)):
            cgroup = Cgroup(f"netutil-bench-{os.getpid()}-{int(quota)}", quota)
            try:
                starts = [run_extension(ext, cgroup, place) for _ in range(args.starts)]
                watches = [run_watch(cgroup, place, None) for _ in range(args.starts - 1)] + [run_watch(cgroup, place, nc)]
            finally:
                cgroup.remove()
            result[case] = {"extension": starts, "watch": watches}
            reg = sorted(s["registered_s"] for s in starts if s["registered_s"] is not None)
            print(f"{case}: extension registered {reg[0]:.2f}-{reg[-1]:.2f} s after launch, probe startup_ms "
                  f"{min(s['startup_ms'] for s in starts)}-{max(s['startup_ms'] for s in starts)}; "
                  f"watch startup_ms {min(w['startup_ms'] for w in watches)}-{max(w['startup_ms'] for w in watches)}")
            storm = watches[-1]
            for count in BURSTS:
                burst = storm[f"burst_{count}"]
                print(f"  burst of {count:,} execs at {burst['rate']:,.0f}/s: rows {burst['rows']:,}, lost {burst['lost']:,}")
            print(f"  steady 500/s for 20 s: rows {storm['steady_500_per_s']['rows']:,}, "
                  f"lost {storm['steady_500_per_s']['lost']:,}")
    print(f"  written to {save('cpu_quota', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
