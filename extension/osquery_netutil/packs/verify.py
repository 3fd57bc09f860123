"""`packs verify`: every problem in the packs, each as 'file:line: what and the fix'.

Headers and SQL (each query run through the embedded host, with osquery's functions),
regex patterns (as osquery's std::regex reads them), the fixtures (positive rows a
detection must report, negative rows it must not) and the generated files (stale ones).
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from osquery_netutil.host.database import Host

from osquery_netutil.host.errors import QueryError
from osquery_netutil.host.stdregex import RegexError, compile_ecmascript
from osquery_netutil.packs import jsonl
from osquery_netutil.packs.formats import stale
from osquery_netutil.packs.source import NOT_SYNTAX, PACKS_DIR, PackError, Query, load_each
from osquery_netutil.schema import SOCKETS, STATUS
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import StatusTable, stored_tables

_REGEX_CALL = re.compile(r"\bregex_(?:match|split)\s*\(", re.I)
_LITERAL = re.compile(r"\s*'((?:[^']|'')*)'\s*", re.S)

Row = dict[str, Any]


def fixture_rows(path: Path) -> list[tuple[Row | None, list[Row]]]:
    """Each fixture line: an exec row (None for a line that holds only socket events: a
    tracked process that is no row, like a /tmp script's python) and the socket events of
    its process, under "sockets"."""
    entries: list[tuple[Row | None, list[Row]]] = []
    now = int(time.time()) - 60   # a minute ago: settled (packs.source.window), in every window
    for number, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row, _, events = jsonl.parse_entry(line, now)
        except ValueError as exc:
            raise PackError(f"{path}:{number}: {exc}") from None
        entries.append((row, events))
    return entries


def _status_rows(path: Path) -> list[dict[str, Any]]:
    """Status fixtures: JSON objects keyed by status column, defaults for the rest; a time
    given as "now-N" is N seconds before the check runs."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
        if line.strip() and not line.startswith("#"):
            try:
                given = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PackError(f"{path}:{number}: not JSON ({exc.msg})") from None
            row = STATUS.empty_row()
            row.update({k: int(time.time()) - int(v[4:]) if isinstance(v, str) and v.startswith("now-") else v
                        for k, v in given.items()})
            rows.append(row)
    return rows


def store_entry(store: Store, exec_row: Row | None, events: list[Row]) -> int:
    """Add a fixture line to store: its exec row, then its socket events joined to it.
    Returns the exec row's eid (0 for a line of socket events alone)."""
    exec_eid = store.add(exec_row) if exec_row is not None else 0
    for event in events:
        store.add_socket({**event, "exec_eid": exec_eid})
    return exec_eid


def check_fixtures(query: Query, directory: Path = PACKS_DIR) -> list[str]:
    """Problems with query against its fixtures: a positive row it does not report, a
    negative row it reports, or an SQL error. [] when all is well."""
    folder = directory / "fixtures" / query.name
    positive, negative = folder / "positive.jsonl", folder / "negative.jsonl"
    if not positive.is_file():
        return [f"{query.path}:1: no fixtures: add {positive} (rows it must report) and {negative} (rows it must not)"]
    if not query.judges_rows:   # a status query
        problems = []
        for expected, path in ((1, positive), (0, negative)):
            for row in _status_rows(path):
                host = Host([StatusTable(functools.partial(dict, row))])
                try:
                    got = len(host.query(query.sql)[1])
                except QueryError as exc:
                    return [f"{query.where}: {exc}"]
                if (got > 0) != bool(expected):
                    problems.append(f"{path}: status {row.get('state')!r} lost {row.get('events_lost')}: "
                                    f"{'not reported' if expected else 'reported'} by {query.name}")
        return problems
    try:
        rows = fixture_rows(positive), fixture_rows(negative)
    except PackError as exc:
        return [str(exc)]
    # Each entry's eids, as the store gives them: its exec row's, and its socket events'.
    owners: dict[tuple[str, int], int] = {}
    sockets_added = 0
    with tempfile.TemporaryDirectory(prefix="netutil-fixtures-") as tmp, Store(Path(tmp) / "events.db") as store:
        for index, (exec_row, events) in enumerate([*rows[0], *rows[1]]):
            owners[("exec", store_entry(store, exec_row, events))] = index
            for _ in events:   # socket rows take their eids in the order added
                sockets_added += 1
                owners[("socket", sockets_added)] = index
        store.flush()
        host = Host(stored_tables(lambda: store))
        try:
            columns, results = host.query(query.sql)
        except QueryError as exc:
            return [f"{query.where}: {exc}"]
    if results and "eid" not in columns:
        return [f"{query.where}: the results need an eid column (fixtures are matched by it)"]
    kind = "socket" if query.judged == SOCKETS.name else "exec"
    reported = {owners.get((kind, row[columns.index("eid")])) for row in results}
    problems = []
    for index, (exec_row, events) in enumerate([*rows[0], *rows[1]]):
        path, number = (positive, index + 1) if index < len(rows[0]) else (negative, index + 1 - len(rows[0]))
        what = exec_row.get("cmdline", "") if exec_row is not None else \
            "socket events: " + ", ".join(f"{e['comm']} {e['action']} {e['remote_address'] or e['local_address']}" for e in events)
        if (index in reported) != (path is positive):
            problems.append(f"{path}: row {number} ({what!r}) is {'not ' if path is positive else ''}reported by {query.name}")
    return problems


def regex_literals(sql: str) -> list[str]:
    """The pattern of every regex_match/regex_split call in sql whose pattern is a string
    literal: osquery refuses a query whose pattern std::regex refuses, whatever the rows."""
    found = []
    for call in _REGEX_CALL.finditer(sql):
        args, depth, start, i = [], 0, call.end(), call.end()
        while i < len(sql) and depth >= 0:
            skipped = NOT_SYNTAX.match(sql, i)
            if skipped:   # a string, quoted name or comment: no comma or parenthesis in it counts
                i = skipped.end()
                continue
            if sql[i] == "(":
                depth += 1
            elif sql[i] == ")":
                depth -= 1
            if (sql[i] == "," and depth == 0) or depth < 0:
                args.append(sql[start:i])
                start = i + 1
            i += 1
        literal = _LITERAL.fullmatch(args[1]) if len(args) >= 2 else None
        if literal:
            found.append(literal[1].replace("''", "'"))
    return found


def check_regexes(query: Query) -> list[str]:
    """The query's regex patterns that osquery's std::regex (ECMAScript) would refuse."""
    problems = []
    for pattern in regex_literals(query.sql):
        try:
            compile_ecmascript(pattern)
        except RegexError as exc:
            problems.append(f"{query.where}: osquery refuses the regex {pattern!r} ({exc}): "
                            "write it in std::regex's ECMAScript grammar")
    return problems


def verify(directory: Path = PACKS_DIR) -> list[str]:
    """Every problem in the packs: headers, SQL (run through the embedded host, with
    osquery's functions), regex patterns (as osquery's std::regex reads them) and
    fixtures, each as 'file:line: what and the fix'."""
    queries, problems = load_each(directory)
    for query in queries:
        problems += check_regexes(query) + check_fixtures(query, directory)
    problems += [f"{directory / 'generated' / name}: stale: run 'osquery-netutil packs build'"
                 for name in (stale(directory) if not problems else [])]
    return problems
