"""Rows as JSON Lines: `record` writes them, `replay` loads them into a store.

One JSON object per line, keyed by column name (schema.EXECS). `eid` is the recording's
number: the store that replays the lines numbers them anew, and socket events name their
exec by it. A line may carry the socket events (schema.SOCKETS) of its process under
"sockets"; a line of socket events alone names its exec by their `exec_eid` (0: none, a
tracked process that is no row). So that detection fixtures stay short and
true to what enrichment would produce, a line may leave columns out and write
`ancestors` and `json_cmdline` as JSON arrays rather than strings:

* `time`: the replay time; `category`, `technique`: the catalog's for `utility`;
* `json_cmdline`: the cmdline split on spaces; `argc`: its length;
* `ip_args`, `public_ip_args`: computed from the arguments, as enrichment does;
* `ancestors`: []; each ancestor's `script`: as enrichment finds it; `parent_path`, `parent_cmdline`, `parent`: from the first ancestor;
* any other text '', any other number 0 (`matched_by`: 'name').

A broken line is skipped and reported with its line number; the rest is loaded.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO

from osquery_netutil.catalog import Catalog
from osquery_netutil.events.scripts import with_script
from osquery_netutil.events.ipargs import ip_columns, is_public_address
from osquery_netutil.schema import EXECS, SOCKETS
from osquery_netutil.store.rows import data_columns

Row = dict[str, Any]
_DATA_COLUMNS = tuple(c for c in EXECS.columns if c.name != "eid")
_ERRORS_KEPT = 20


def dumps(row: Row) -> str:
    """One line for an exec row, with the eid the recording gave it."""
    return json.dumps({"eid": row.get("eid", 0), **{c.name: row[c.name] for c in _DATA_COLUMNS}}, ensure_ascii=False)


def socket_line(row: Row) -> str:
    """One line for a socket event row: its exec named by the recording's eid."""
    return json.dumps({"sockets": [{name: row[name] for name in data_columns(SOCKETS)}]}, ensure_ascii=False)


def parse_line(line: str, now: int | None = None) -> Row:
    """A complete row from one line. Raises ValueError saying what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object keyed by column name")
    obj.pop("eid", None)
    unknown = sorted(set(obj) - {c.name for c in _DATA_COLUMNS})
    if unknown:
        raise ValueError(f"unknown column {unknown[0]!r}")
    for name, shape in (("ancestors", list), ("json_cmdline", list), ("origin", dict), ("pipe_peers", list)):
        if isinstance(obj.get(name), shape):
            obj[name] = json.dumps(obj[name])
    row: Row = {}
    for c in _DATA_COLUMNS:
        value = obj.get(c.name)
        if value is not None and c.python_type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"column {c.name!r} must be an integer, not {value!r}")
        if value is not None and c.python_type is str and not isinstance(value, str):
            raise ValueError(f"column {c.name!r} must be a string, not {value!r}")
        row[c.name] = value
    _fill_defaults(row, now)
    return row


def socket_row(obj: Any, now: int | None = None) -> Row:
    """A network_utility_socket_events row from a JSON object keyed by its columns (eid and
    exec_eid are the store's): the rest default to their empty values, time to now, count
    to 1 and remote_public to what remote_address is. Raises ValueError."""
    if not isinstance(obj, dict):
        raise ValueError("a socket event must be a JSON object keyed by column name")
    columns = data_columns(SOCKETS)
    unknown = sorted(set(obj) - set(columns) - {"eid"})
    if unknown:
        raise ValueError(f"unknown socket event column {unknown[0]!r}")
    if isinstance(obj.get("origin"), dict):
        obj = {**obj, "origin": json.dumps(with_script(obj["origin"]))}
    row: Row = {**SOCKETS.empty_row(), "time": int(time.time()) if now is None else now, "count": 1}
    row.pop("eid")
    for name in columns:
        if name in obj:
            kind = SOCKETS.column(name).python_type
            if not isinstance(obj[name], kind) or isinstance(obj[name], bool):
                raise ValueError(f"socket event column {name!r} must be {'an integer' if kind is int else 'a string'}")
            row[name] = obj[name]
    if "remote_public" not in obj:
        row["remote_public"] = int(is_public_address(row["remote_address"]))
    return row


def _fill_defaults(row: Row, now: int | None) -> None:
    """The columns a line left out, derived as enrichment would derive them."""
    def default(name: str, value: Any) -> None:
        if row[name] is None:
            row[name] = value

    default("time", int(time.time()) if now is None else now)
    default("json_cmdline", json.dumps((row["cmdline"] or "").split()))
    try:
        argv = json.loads(row["json_cmdline"])
    except ValueError:
        raise ValueError("column 'json_cmdline' must hold a JSON array of strings") from None
    default("cmdline", " ".join(map(str, argv)))
    default("argc", len(argv))
    utility = _catalog().by_name(row["utility"] or "")
    default("category", utility.category if utility else "")
    default("technique", utility.technique if utility else "")
    ip_args, public_ip_args = ip_columns(row["utility"] or "", [str(a) for a in argv])
    default("ip_args", ip_args)
    default("public_ip_args", public_ip_args)
    default("ancestors", "[]")
    chain = _with_scripts(row, "ancestors")
    parent = chain[0] if chain and isinstance(chain[0], dict) else {}
    default("parent_path", str(parent.get("path", "")))
    default("parent_cmdline", str(parent.get("cmdline", "")))
    default("parent", int(parent.get("pid", 0) or 0))
    default("matched_by", "name")
    if row["origin"]:
        origin = _decoded(row, "origin", dict)
        if "script" not in origin:
            row["origin"] = json.dumps(with_script(origin))
    default("pipe_peers", "[]")
    if row["pipe_peers"]:   # '' in rows stored before the column existed
        _with_scripts(row, "pipe_peers")
    for c in _DATA_COLUMNS:
        default(c.name, "" if c.python_type is str else 0)


def _with_scripts(row: Row, name: str) -> list[Any]:
    """Column name's JSON array of processes (ancestors, pipe_peers), each given the
    "script" enrichment would have found from its command line; the array as it was read."""
    nodes = _decoded(row, name, list)
    derived = [with_script(n) if isinstance(n, dict) and "script" not in n else n for n in nodes]
    if derived != nodes:
        row[name] = json.dumps(derived)
    return nodes


def _decoded(row: Row, name: str, shape: type) -> Any:
    """Column name's JSON, which must be a `shape` (list or dict). Raises ValueError."""
    what = "a JSON array" if shape is list else "a JSON object"
    try:
        value = json.loads(row[name])
    except ValueError:
        raise ValueError(f"column {name!r} must hold {what}") from None
    if not isinstance(value, shape):
        raise ValueError(f"column {name!r} must hold {what}")
    return value


@lru_cache(maxsize=1)
def _catalog() -> Catalog:
    return Catalog.load()


@dataclass
class ReplayResult:
    rows: list[Row] = field(default_factory=list)
    recorded_eids: list[int] = field(default_factory=list)   # each row's eid in the recording (0: none)
    sockets: list[Row] = field(default_factory=list)         # exec_eid: the recording's
    skipped: int = 0
    errors: list[str] = field(default_factory=list)   # the first few, as "line N: why"

    def store_into(self, store: Any) -> None:
        """Add the rows to a store, then the socket events, joined to the rows the store
        numbered (an exec_eid the file has no row for becomes 0)."""
        renumbered = {recorded: store.add(row) for row, recorded in zip(self.rows, self.recorded_eids)}
        renumbered.pop(0, None)
        for event in self.sockets:
            store.add_socket({**event, "exec_eid": renumbered.get(event["exec_eid"], 0)})


def parse_entry(line: str, now: int | None = None) -> tuple[Row | None, int, list[Row]]:
    """One line of exec row and socket events: the row (None for a line of socket events
    alone), its eid in the recording (0: none given) and the events, under "sockets".
    Raises ValueError saying what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    events = obj.pop("sockets", []) if isinstance(obj, dict) else []
    if not isinstance(events, list):
        raise ValueError('"sockets" must be a JSON array of socket events')
    recorded = obj.get("eid", 0) if isinstance(obj, dict) else 0
    if not isinstance(recorded, int) or isinstance(recorded, bool):
        raise ValueError("eid must be an integer")
    row = parse_line(json.dumps(obj), now) if obj else None
    return row, recorded, [socket_row(event, now) for event in events]


def read(lines: Iterable[str], source: str = "<stdin>") -> ReplayResult:
    """Parse lines; blank lines and lines starting with '#' are ignored."""
    result = ReplayResult()
    now = int(time.time())
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row, recorded, parsed = parse_entry(line, now)
        except ValueError as exc:
            result.skipped += 1
            if len(result.errors) < _ERRORS_KEPT:
                result.errors.append(f"{source}:{number}: {exc}")
            continue
        if row is not None:
            recorded = recorded or -number   # a line's own events name it by its line
            result.rows.append(row)
            result.recorded_eids.append(recorded)
            for event in parsed:
                event["exec_eid"] = recorded
        result.sockets.extend(parsed)
    return result


def write(rows: Iterable[Row], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(dumps(row) + "\n")
        count += 1
    out.flush()
    return count
