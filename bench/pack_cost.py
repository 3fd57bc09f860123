"""9. What the scheduled packs cost: each detection's run time, and the CPU an hour of the
schedule takes, against osquery's watchdog.

osqueryd runs each pack query at its interval over the rows of its window (packs.window_s:
five intervals) and kills a worker that goes over --watchdog_utilization_limit (10 % of a
core by default), then denylists the query for a day: a storm of execs must not silence
the detections. For 1,000, 10,000 and 100,000 rows in the window, the rows a real host
makes (the packs' own fixture rows, positive and negative, repeated with new pids), each
detection is timed three ways:

* embedded: the packs' SQL in the embedded host (`watch --pack-intervals`, `query`): the
  table read from the store through the plugin, osquery's functions in Python;
* osqueryd: the same SQL in plain SQLite (APSW's, C) over a table already in SQLite, with
  regex_match in C++ as osquery has it (bench/osquery_functions.cpp, built here): the
  osqueryd worker's share, the one its watchdog measures;
* extension: the plugin answering osquery's generate for the window (store read, rows
  encoded in thrift's binary protocol as the extension sends them): the extension's share
  per query.

Then the CPU per hour of the whole schedule at 1,000 / 10,000 / 100,000 rows an hour:
each query's runs per hour times its cost at the rows its window then holds (linear
between the measured sizes), as a share of one core, against 10 %.

Prints figures and writes bench/results/pack_cost.json. Needs g++ and sqlite3ext.h
(`scripts/setup.sh --bench`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import apsw
from common import ROOT, WORK, save

from osquery_netutil.events.sockets import SETTLED_S
from osquery_netutil.packs import source as packs
from osquery_netutil.packs.verify import fixture_rows, store_entry
from osquery_netutil.tables.thrift import write_call_result
from osquery_netutil.host.database import Host
from osquery_netutil.schema import EXECS, SOCKETS
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import ExecsTable, SocketsTable

SIZES = (1_000, 10_000, 100_000)
WATCHDOG_LIMIT = 0.10   # osquery's --watchdog_utilization_limit default: 10 % of a core


def functions_library() -> Path:
    """bench/osquery_functions.cpp built as a SQLite extension (rebuilt when changed)."""
    source = ROOT / "bench" / "osquery_functions.cpp"
    library = WORK / "osquery_functions.so"
    WORK.mkdir(parents=True, exist_ok=True)
    if not library.exists() or library.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


SPREAD_S = 20   # the workload's rows lie this many seconds apart at most


def workload(count: int, now: int) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """count exec rows from the packs' fixtures, in turn, each with its own pid, and the
    socket events of its process. Their times are SPREAD_S apart at most and end twice
    SETTLED_S before now: a scheduled run judges exec rows only once they are that old (packs.source.window),
    and every window holds them until it moves past the oldest (measure checks it did not)."""
    folders = [packs.PACKS_DIR / "fixtures" / q.name for q in packs.load() if q.judges_rows]   # not the status query's
    fixtures = [(row, events) for folder in folders for path in sorted(folder.glob("*.jsonl"))
                for row, events in fixture_rows(path) if row is not None]
    newest = now - 2 * SETTLED_S - 1
    return [(dict(row, pid=10_000 + i, time=newest - i * SPREAD_S // count),
             [dict(e, time=newest - i * SPREAD_S // count) for e in events])
            for i, (row, events) in ((i, fixtures[i % len(fixtures)]) for i in range(count))]


def best(run: Callable[[], Any], repeat: int) -> float:
    """Fastest of `repeat` runs, in seconds (the least disturbed by the rest of the host)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def serialized(table: ExecsTable, context: dict[str, Any]) -> int:
    """The extension's answer to one generate, encoded as the extension sends it over
    thrift (write_call_result, streamed from the store); its size."""
    response = table.call({"action": "generate", "context": json.dumps(context)})
    sent = []
    write_call_result(response, lambda piece: sent.append(len(piece)))
    return sum(sent)


def measure(count: int, queries: list[packs.Query], library: Path) -> dict[str, dict[str, float]]:
    """Seconds per run of each query, three ways, with count rows in the window."""
    now = int(time.time())
    rows = workload(count, now)
    repeat = 3 if count <= 10_000 else 1
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp, \
            Store(Path(tmp) / "events.db", max_rows=count) as store:
        for row, events in rows:
            store_entry(store, row, events)
        store.flush()
        table = ExecsTable(lambda: store)
        host = Host([table, SocketsTable(lambda: store)])
        plain = apsw.Connection(":memory:")
        plain.enable_load_extension(True)
        plain.load_extension(str(library), "sqlite3_osqueryfunctions_init")
        for schema in (EXECS, SOCKETS):
            columns = ", ".join(f"{c.name} {c.type}" for c in schema.columns)
            plain.execute(f"CREATE TABLE {schema.name} ({columns})")
            with plain:
                plain.executemany(f"INSERT INTO {schema.name} VALUES ({', '.join('?' * len(schema.columns))})",
                                  [tuple(r[c] for c in schema.names) for r in store.select(table=schema)])
        results = {}
        for q in queries:
            since = now - packs.window_s(q.interval)   # what osquery sends for the window
            context = {"constraints": [{"name": "time", "list": [{"op": 4, "expr": str(since)}], "affinity": "BIGINT"}]}
            found = len(host.query(q.sql)[1])
            assert found == len(list(plain.execute(q.sql))), f"{q.name}: the two hosts disagree"
            results[q.name] = {
                "embedded_s": best(lambda: host.query(q.sql), repeat),
                "osqueryd_s": best(lambda: list(plain.execute(q.sql)), repeat),
                "extension_s": best(lambda: serialized(table, context), repeat),
                "rows_reported": found,
            }
        host.close()
        plain.close()
    took = time.time() - now
    shortest = min(packs.window_s(q.interval) for q in queries)
    if took > shortest - SPREAD_S - 2 * SETTLED_S - 1:
        raise SystemExit(f"pack_cost: the runs at {count:,} rows took {took:.0f} s: the oldest rows left a "
                         f"{shortest} s window before the last run, so its figures are not comparable")
    return results


def per_hour(costs: dict[int, dict[str, dict[str, float]]], queries: list[packs.Query], rate: int, key: str) -> float:
    """CPU seconds an hour of the schedule takes at `rate` rows an hour: each query's runs
    times its cost at the rows in its window, linear between the measured sizes."""
    total = 0.0
    for q in queries:
        in_window = rate * packs.window_s(q.interval) / 3600
        points = sorted((n, costs[n][q.name][key]) for n in costs)
        (n0, c0), (n1, c1) = next(((a, b) for a, b in zip(points, points[1:]) if in_window <= b[0]), points[-2:])
        cost = c0 + (c1 - c0) * (in_window - n0) / (n1 - n0)
        total += 3600 / q.interval * max(cost, 0.0)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    queries = [q for q in packs.load() if q.judges_rows]
    library = functions_library()
    costs = {n: measure(n, queries, library) for n in sorted(args.sizes)}
    print(f"pack cost: seconds per run, rows in the window; windows {sorted({packs.window_s(q.interval) for q in queries})} s")
    header = "".join(f"{n:>10,} rows     " for n in costs)
    print(f"  {'detection':<40}{header}")
    print(f"  {'':<40}" + "".join(f"{'embedded':>10}{'osqueryd':>9}" for _ in costs) + "   extension at the largest")
    for q in queries:
        cells = "".join(f"{costs[n][q.name]['embedded_s']:>10.3f}{costs[n][q.name]['osqueryd_s']:>9.4f}" for n in costs)
        print(f"  {q.name:<40}{cells}   {costs[max(costs)][q.name]['extension_s']:.3f}")
    totals = {n: {k: sum(c[k] for c in costs[n].values()) for k in ("embedded_s", "osqueryd_s", "extension_s")} for n in costs}
    print(f"  {'all ' + str(len(queries)) + ' together':<40}"
          + "".join(f"{totals[n]['embedded_s']:>10.3f}{totals[n]['osqueryd_s']:>9.4f}" for n in costs))
    hourly = {}
    if len(costs) >= 2:
        print(f"  CPU an hour of the schedule, share of one core (osquery's watchdog stops a worker above {WATCHDOG_LIMIT:.0%}):")
        for rate in SIZES:
            hourly[rate] = {key: per_hour(costs, queries, rate, key) / 3600 for key in ("osqueryd_s", "extension_s", "embedded_s")}
            print(f"    {rate:>7,} rows/h: osqueryd {hourly[rate]['osqueryd_s']:.3%}, extension {hourly[rate]['extension_s']:.3%}"
                  f" (embedded host {hourly[rate]['embedded_s']:.3%})")
    path = save("pack_cost", {"costs": {str(n): c for n, c in costs.items()}, "totals": {str(n): t for n, t in totals.items()},
                              "cpu_share_per_hour": {str(r): h for r, h in hourly.items()},
                              "windows_s": {q.name: packs.window_s(q.interval) for q in queries}})
    print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
