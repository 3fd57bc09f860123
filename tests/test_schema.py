"""Declared once: the store, the tables and the README follow the schema and the packs."""

from __future__ import annotations

from pathlib import Path

from osquery_netutil.packs import formats
from osquery_netutil.schema import EXECS, SOCKETS, STATUS, reference_markdown
from osquery_netutil.store.layout import ddl


def test_the_readme_column_reference_is_the_schema() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert reference_markdown() in readme, "README is stale: paste `python -m osquery_netutil.schema` into it"


def test_range_columns_are_bigint_and_types_are_osquery_types() -> None:
    # osquery never pushes <, > on TEXT: every column a pack compares by range is BIGINT.
    for name in ("eid", "time", "pid", "parent", "uid", "gid", "argc"):
        assert EXECS.column(name).type == "BIGINT"
    for name in ("eid", "exec_eid", "time", "pid", "uid", "count"):
        assert SOCKETS.column(name).type == "BIGINT"
    assert {c.type for t in (EXECS, SOCKETS, STATUS) for c in t.columns} <= {"BIGINT", "INTEGER", "TEXT"}
    statements = " ".join(ddl())
    assert all(f"events_{c.name} " in statements for c in EXECS.columns if c.indexed and c.name != "eid")
    assert all(f"sockets_{c.name} " in statements for c in SOCKETS.columns if c.indexed and c.name != "eid")


def test_the_readme_lists_the_detections() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert formats.reference_markdown() in readme, "README is stale: paste formats.reference_markdown() into it"
