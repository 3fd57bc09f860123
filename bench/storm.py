"""3. No loss under a storm, and 4. what user space spends per exec.

Storm: catalog execs (a 129-byte static ELF named `nc`, which exits after three
instructions, so that execs come as fast as the kernel can make them) from one spawner
per core at full speed, through the whole sensor (probe, enrichment, store) as `watch`
and the extension run it. Rows in the table must equal execs spawned, with the lost
counter at 0. Then the storm doubles until events are lost, and the report says at which
rate, and why.

User-space cost: CPU seconds the sensor's process spends per 1,000 non-catalog execs
(the kernel drops them: expected ~0), per 1,000 execs the kernel forwards by name and
user space drops by the catalog's args (openssl without s_client), and per 1,000 catalog
execs.

Run as root after set-up. Prints figures and writes bench/results/storm.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import WORK, save, spawn, static_binary

from osquery_netutil.catalog import Catalog
from osquery_netutil.kernel.records import SIZES
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.store.store import Store
from testkit.support import tiny_elf, write_executable


def run_storm(sensor: Sensor, store: Store, binary: str, count: int) -> dict[str, float]:
    before = sensor.status()
    last_eid = store.stats()[2]
    cpu0 = time.process_time()
    wall, _ = spawn(binary, count)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        made = sensor.rows_made - before["events_matched"]
        lost = sensor.status()["events_lost"] - before["events_lost"]
        if made + lost >= count:
            break
        time.sleep(0.05)
    store.flush()
    cpu = time.process_time() - cpu0
    after = sensor.status()
    stored = len(store.select([("eid", ">", last_eid), ("path", "=", binary)], text=True))
    return {"execs": count, "wall_s": wall, "rate": count / wall, "rows": after["events_matched"] - before["events_matched"],
            "stored": stored, "lost": after["events_lost"] - before["events_lost"], "cpu_s": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", type=int, default=20_000)
    parser.add_argument("--max", type=int, default=320_000, help="stop doubling here")
    parser.add_argument("--execs", type=int, default=10_000, help="execs for the user-space cost figures")
    args = parser.parse_args()
    catalog = Catalog.load()
    nc = str(write_executable(WORK / "nc", tiny_elf()))   # a catalog name (by comm), outside forwarded dirs
    other = static_binary("bench-true")
    result: dict[str, object] = {"ring_buffer_bytes": SIZES["RINGBUF_PAGES"] * 4096}
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp:
        store = Store(Path(tmp) / "events.db", max_rows=2 * args.max)
        sensor = Sensor(catalog, store)
        sensor.start()
        try:
            cpu0 = time.process_time()
            spawn(other, args.execs)
            time.sleep(0.5)
            result["cpu_per_1000_non_catalog_s"] = (time.process_time() - cpu0) / args.execs * 1000
            # Forwarded by name, dropped by the catalog's args (openssl without s_client).
            dropped = str(write_executable(WORK / "openssl", tiny_elf()))
            cpu0 = time.process_time()
            spawn(dropped, args.execs)
            time.sleep(2.0)
            result["cpu_per_1000_dropped_s"] = (time.process_time() - cpu0) / args.execs * 1000
            cost = run_storm(sensor, store, nc, args.execs)
            result["cpu_per_1000_catalog_s"] = cost["cpu_s"] / args.execs * 1000
            storms = []
            count = args.storm
            while count <= args.max:
                storms.append(run_storm(sensor, store, nc, count))
                if storms[-1]["lost"]:
                    break
                count *= 2
            result["storms"] = storms
        finally:
            sensor.stop()
            store.close()
    print(f"user space: {result['cpu_per_1000_non_catalog_s'] * 1e3:.1f} ms CPU per 1,000 non-catalog execs, "
          f"{result['cpu_per_1000_dropped_s'] * 1e3:.1f} ms per 1,000 argv-conditioned execs dropped (openssl version), "
          f"{result['cpu_per_1000_catalog_s'] * 1e3:.0f} ms per 1,000 catalog execs "
          f"({result['cpu_per_1000_catalog_s']:.2f} ms per row)")
    print("storm: catalog execs from one spawner per core, through probe, enrichment and store")
    for s in result["storms"]:
        print(f"  {s['execs']:>7,} execs at {s['rate']:>6,.0f}/s: rows {s['rows']:,}, stored {s['stored']:,}, lost {s['lost']:,}")
    last = result["storms"][-1]
    if last["lost"]:
        per_row = result["cpu_per_1000_catalog_s"] / 1000
        result["why"] = (f"loss began at {last['execs']:,} execs spawned at {last['rate']:,.0f}/s: user space enriches "
                         f"about {1 / per_row:,.0f} rows/s on one core, so the {result['ring_buffer_bytes'] >> 20} MiB ring buffer "
                         f"fills when a burst outruns it by more than it holds")
        print(f"  {result['why']}")
    else:
        result["why"] = f"no loss up to {last['execs']:,} execs"
        print(f"  {result['why']}")
    print(f"  written to {save('storm', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
