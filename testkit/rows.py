"""Rows shaped like the tables' own (`network_utility_execs`, `network_utility_socket_events`),
for tests and benchmarks that fill a store without running the probe."""

from __future__ import annotations

import time

from osquery_netutil.schema import EXECS, SOCKETS, Table


def make_row(**values: object) -> dict[str, object]:
    """An exec row: every data column set (empty text, zero numbers, now as `time`), then `values` on top."""
    return _row(EXECS, values)


def make_socket_row(**values: object) -> dict[str, object]:
    """A socket event row, as make_row (count 1, a TCP connect over IPv4)."""
    return _row(SOCKETS, {"count": 1, "action": "connect", "protocol": 6, "family": 2, **values})


def _row(table: Table, values: dict[str, object]) -> dict[str, object]:
    row: dict[str, object] = {c.name: "" if c.type == "TEXT" else 0 for c in table.columns if c.name != "eid"}
    row["time"] = int(time.time())
    row.update(values)
    return row
