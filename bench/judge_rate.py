"""8. Detection throughput: rows per second that `watch`'s rounds judge with every detection.

watch judges each stored row once, by eid (runner.Cursor). This fills a store with rows
shaped like a ping sweep run by a script in /tmp under a web server (every location and
hunting detection has work to do on each), then judges them all, batch by batch, as watch
does, and prints rows/s. Compare with the probe's own maximum (bench/storm.py, about
7,000 catalog execs/s on 2 cores): below it, a storm builds a backlog that drains after.

Prints figures and writes bench/results/judge_rate.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import save

from osquery_netutil.packs import source as packs
from osquery_netutil.host.database import Host
from osquery_netutil.packs.runner import PackRunner
from osquery_netutil.store.cursor import Cursor
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import stored_tables
from osquery_netutil.events.scripts import with_script
from testkit.rows import make_row

ANCESTORS = json.dumps([with_script(a) for a in (
    {"pid": 2200, "path": "/tmp/.x/stage.sh", "cmdline": "/tmp/.x/stage.sh", "uid": 33},
    {"pid": 2100, "path": "/usr/bin/dash", "cmdline": "sh -c cd /tmp/.x && ./stage.sh", "uid": 33},
    {"pid": 150, "path": "/usr/sbin/apache2", "cmdline": "/usr/sbin/apache2 -k start", "uid": 33},
    {"pid": 1, "path": "/sbin/init", "cmdline": "/sbin/init", "uid": 0, "base": True},
)])   # as enrichment writes them


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    queries = packs.load_each(by_cursor=True)[0]
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp, Store(Path(tmp) / "events.db", max_rows=10 * args.rows) as store:
        store.add_many(make_row(utility="ping", category="recon", path="/usr/bin/ping", parent_path="/tmp/.x/stage.sh",
                                cmdline=f"ping -c1 -W1 10.0.{i // 256 % 256}.{i % 256}", ip_args=f"10.0.{i // 256 % 256}.{i % 256}",
                                ancestors=ANCESTORS) for i in range(args.rows))
        store.flush()
        cursor = Cursor(Path(tmp) / "judged", lambda: store.stats()[2], store.eid_before, store.time_after, first_s=10**9)
        runner = PackRunner(Host(stored_tables(lambda: store)), queries, cursor=cursor)
        started, lines = time.perf_counter(), 0
        while cursor.progress()["judge_backlog"]:
            lines += len(runner.run_due()[0])
        took = time.perf_counter() - started
    rate = args.rows / took
    print(f"judge rate: {args.rows:,} rows judged by {len(queries)} detections in {took:.1f} s: {rate:,.0f} rows/s "
          f"({lines:,} detection lines)")
    print(f"  written to {save('judge_rate', {'rows': args.rows, 'detections': len(queries), 'seconds': took, 'rows_per_s': rate, 'lines': lines})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
