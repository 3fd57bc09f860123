"""Rows shaped like `network_utility_execs`' own, for tests and benchmarks that fill a store
without running the probe."""

from __future__ import annotations

import time

from osquery_netutil.schema import EXECS


def make_row(**values: object) -> dict[str, object]:
    """Every data column set (empty text, zero numbers, now as `time`), then `values` on top."""
    row: dict[str, object] = {c.name: "" if c.type == "TEXT" else 0 for c in EXECS.columns if c.name != "eid"}
    row["time"] = int(time.time())
    row.update(values)
    return row
