"""The status row tells the truth across restarts: a run that takes the store shows its own
'starting' row, 'running' only once its probe records, and never an earlier run's row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from osquery_netutil.packs import source as packs
from osquery_netutil.catalog import Catalog
from osquery_netutil.host.database import Host
from osquery_netutil.events.sensor import stored_status
from osquery_netutil.store.errors import StoreError
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import StatusTable

from tests.conftest import need, probe_unavailable

pytestmark = pytest.mark.probe

RESTARTS = 20
POLL_S = 0.05


def _watch(store: Path) -> subprocess.Popen:
    """watch on store; its stderr in a file beside it (`_why` shows it when it exits)."""
    with open(f"{store}.watch-stderr", "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "osquery_netutil", "watch", "--store", str(store), "--every", "30"],
                                stdout=subprocess.DEVNULL, stderr=err)


def _why(store: Path) -> str:
    return Path(f"{store}.watch-stderr").read_text(errors="replace")[-2000:]


def _status(store: Path, catalog: Catalog) -> dict:
    """What `query` shows: the status as a process that only reads the store sees it."""
    try:
        with Store(store, readonly=True) as reader:
            return stored_status(reader, catalog)
    except StoreError:
        return {"state": "absent", "start_time": 0, "attached_time": 0}


def _health_sql() -> str:
    (query,) = [q for q in packs.load() if q.name == "netutil_probe_health"]
    return query.sql


def _recorded(store: Path, mark: str, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with Store(store, readonly=True) as reader:
            if any(mark in row["cmdline"] for row in reader.select()):
                return True
        time.sleep(0.1)
    return False


def test_a_restarted_sensor_is_never_shown_running_before_its_probe_records(catalog: Catalog, place: Path) -> None:
    """kill -9 the sensor, start another, poll the status every 50 ms: no 'running' before
    the new probe is attached, never the old start_time; an exec made right after the
    first 'running' is recorded. 20 times in a row."""
    need(probe_unavailable())
    store = place / "events.db"
    old_start, startups, launches = None, [], []
    current = _watch(store)
    try:
        for attempt in range(RESTARTS + 1):
            launched = time.time()
            seen = []
            deadline = time.monotonic() + 30
            while True:
                status = _status(store, catalog)
                seen.append(status["state"])
                if status["state"] == "running":
                    break
                assert current.poll() is None, f"watch exited with {current.returncode}: {_why(store)}"
                assert time.monotonic() < deadline, f"never running; states seen: {sorted(set(seen))}"
                time.sleep(POLL_S)
            assert status["start_time"] != old_start and status["start_time"] >= int(launched) - 1, status
            assert status["attached_time"] >= status["start_time"] and status["startup_ms"] > 0, status
            assert set(seen[:-1]) <= {"absent", "failed", "starting"}, seen
            # The first run on a fresh store is no restart; every other followed a kill -9.
            assert ("was killed" in status["restarted"]) == (attempt > 0), status["restarted"]
            startups.append(status["startup_ms"])
            launches.append(round((time.time() - launched) * 1000))
            mark = f"restart-{uuid.uuid4().hex[:8]}"
            subprocess.run(["nc", "-z", "-w", "1", "127.0.0.1", "9", mark], capture_output=True, timeout=10)
            assert _recorded(store, mark), f"attempt {attempt}: an exec right after 'running' was not recorded"
            if attempt == RESTARTS:
                break
            old_start = status["start_time"]
            current.send_signal(signal.SIGKILL)
            current.wait(timeout=10)
            current = _watch(store)
        # A clean stop is a restart too, said as such, and the health pack reports it.
        current.send_signal(signal.SIGINT)
        assert current.wait(timeout=30) == 0
        current = _watch(store)
        deadline = time.monotonic() + 30
        while (status := _status(store, catalog))["state"] != "running":
            assert time.monotonic() < deadline, status
            time.sleep(POLL_S)
        assert status["restarted"].endswith("which stopped"), status["restarted"]
        health = Host([StatusTable(lambda: status)]).query(_health_sql())[1]
        assert len(health) == 1 and "the sensor restarted at" in health[0][-1]
    finally:
        current.send_signal(signal.SIGKILL)
        current.wait(timeout=10)

    def median(values: list[int]) -> int:
        return sorted(values)[len(values) // 2]

    print(f"\nstart-up over {len(startups)} starts: store taken to 'running' median {median(startups)} ms "
          f"(max {max(startups)}); process launched to 'running' seen, median {median(launches)} ms (max {max(launches)})")


def test_a_status_file_left_by_a_dead_run_is_not_shown_as_live(catalog: Catalog, place: Path) -> None:
    store = place / "events.db"
    with Store(store) as writer:
        writer.publish_status({"state": "running", "start_time": 1, "error": ""})
        assert stored_status(writer, catalog)["state"] == "running"
    # The writer is gone; its file stays behind and says 'running'.
    assert (place / "events.db.status").exists()
    with Store(store, readonly=True) as reader:
        status = stored_status(reader, catalog)
    assert status["state"] == "failed" and "no osquery-netutil is collecting" in status["error"]
    # A new writer takes the store: until it publishes, it is 'starting', not the old row.
    with Store(store) as writer, Store(store, readonly=True) as reader:
        status = stored_status(reader, catalog)
        assert status["state"] == "starting" and f"pid {os.getpid()}" in status["error"]
        assert status["start_time"] == 0
