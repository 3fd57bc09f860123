"""The query packs: read packs/*.sql, check them, and build what osquery and Fleet load.

Each detection is one file, `packs/<name>.sql`: a header of `-- key: value` lines, then
one SQL statement. The statement may start `WITH {{common}}` to use the shared CTEs in
`packs/lib/common.sql` (the suspicious-location test, the ancestry walk, the exceptions,
the triage columns), `{{writable_dirs}}` and `{{shells}}` stand for the lists in locations.py and catalog.py,
`{{settled_s}}` for the seconds after an exec by which its first socket events have come, and
`{{recent}}` for the rows of network_utility_execs a run looks at (`{{recent_sockets}}`,
of network_utility_socket_events): each is written once and inlined here, never pasted
into the queries.

Fixtures: packs/fixtures/<name>/positive.jsonl and negative.jsonl, rows (as `record`
writes them, columns may be left out) that the detection must and must not report.
`verify` checks every header, runs every query through the embedded host and checks the
fixtures.

Generated (committed, and a test fails when they are stale): the files osquery and Fleet
load, packs/generated/, as formats.py lists them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from osquery_netutil import faults

from osquery_netutil.catalog import SHELLS
from osquery_netutil.events.sockets import SETTLED_S
from osquery_netutil.locations import WRITABLE_DIRS
from osquery_netutil.schema import EXECS, SOCKETS

# The checkout's packs/, else where the Debian package installs them (the .ext is a zip).
_CHECKOUT_PACKS = Path(__file__).resolve().parents[3] / "packs"
INSTALLED_PACKS = Path("/usr/share/osquery-netutil/packs")
PACKS_DIR = _CHECKOUT_PACKS if _CHECKOUT_PACKS.is_dir() else INSTALLED_PACKS
WINDOW_RUNS = 5                # a scheduled run looks at the rows of its last five intervals (packs.window_s)
# Plain watch judges the rows of each table after its cursor: between the eids bound to
# these names; the placeholder that stands for them in a detection.
BOUNDS = {EXECS.name: ("after", "upto"), SOCKETS.name: ("sockets_after", "sockets_upto")}
PLACEHOLDERS = {EXECS.name: "recent", SOCKETS.name: "recent_sockets"}
BY_CURSOR = {table: f"eid > :{low} AND eid <= :{high}" for table, (low, high) in BOUNDS.items()}

FIELDS = {"description", "interval", "platform", "technique", "logging", "severity"}
LOGGING = ("differential", "differential_ignore_removals", "snapshot")
SEVERITIES = ("info", "low", "medium", "high", "critical")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TECHNIQUE = re.compile(r"^T\d{4}(\.\d{3})?$")
# What is not SQL syntax: string literals, quoted names and comments (a ';' there ends nothing).
NOT_SYNTAX = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|$)", re.S)


class PackError(ValueError):
    """A pack file is wrong: the message starts with file:line and says the fix."""


@dataclass(frozen=True)
class Query:
    name: str
    path: Path
    description: str
    interval: int
    platform: str
    technique: str
    logging: str
    severity: str
    source: str        # the SQL as written (placeholders kept)
    body_line: int     # line of the file where the SQL starts
    sql: str           # expanded, ready for osquery
    judged: str = EXECS.name   # the table whose recent rows it judges: {{recent_sockets}}' or {{recent}}'s

    @property
    def where(self) -> str:
        return f"{self.path}:{self.body_line}"

    @property
    def judges_rows(self) -> bool:
        """Whether the query judges rows of the event store (not only the status)."""
        return re.search(rf"\bFROM\s+({EXECS.name}|{SOCKETS.name})\b", self.sql) is not None

    @property
    def by_cursor(self) -> bool:
        """Whether the query judges the rows between the eids of a cursor (plain watch)."""
        return any(condition in self.sql for condition in BY_CURSOR.values())


def window(table: str, interval: int) -> str:
    """The rows of table a scheduled run judges: those of its window_s. Exec rows only
    once the socket events their lines name (those of their first SETTLED_S seconds) are
    stored, each up to SETTLED_S after it happened: a line judged sooner would change as
    they come, and osquery's differential log would report the exec again."""
    now = "CAST(strftime('%s', 'now') AS INTEGER)"
    settled = f" AND time <= {now} - {2 * SETTLED_S}" if table == EXECS.name else ""
    return f"time > {now} - {window_s(interval)}{settled}"


def window_s(interval: int) -> int:
    """Seconds of rows a scheduled run looks at: five intervals. osquery logs only the rows
    that are new since the previous run (differential), so one interval would be enough
    when every run happens; five survive up to four missed or late runs (a restart of
    osqueryd, the schedule's splay, a run the watchdog stopped) and keep each run's cost
    to five intervals of rows, not the whole store (bench/pack_cost.py)."""
    return WINDOW_RUNS * interval


def _values(items: Iterable[str]) -> str:
    return ", ".join("('" + d.replace("'", "''") + "')" for d in items)


def writable_values() -> str:
    """`{{writable_dirs}}`: the VALUES rows of locations.WRITABLE_DIRS."""
    return _values(WRITABLE_DIRS)


# The lists a detection names by placeholder: each written once, in Python, for the
# kernel filter, enrichment and the packs alike.
LISTS: dict[str, Callable[[], str]] = {
    "writable_dirs": writable_values,
    "shells": lambda: _values(SHELLS),   # catalog.SHELLS: the shells, by file name
    "settled_s": lambda: str(SETTLED_S),   # events.sockets.SETTLED_S: an exec's first socket events have come
}


def _fragment(directory: Path, name: str) -> str:
    path = directory / "lib" / f"{name}.sql"
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def expand(source: str, directory: Path = PACKS_DIR, where: str = "", recent: dict[str, str] | None = None) -> str:
    """source with every {{placeholder}} replaced; comment lines of fragments dropped.
    recent: the condition on the rows a run judges, by placeholder (recent, recent_sockets);
    the cursor's by default."""
    conditions = recent or {PLACEHOLDERS[table]: condition for table, condition in BY_CURSOR.items()}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in LISTS:
            return LISTS[name]()
        if name in conditions:
            return conditions[name]
        if (directory / "lib" / f"{name}.sql").is_file():
            return expand(_fragment(directory, name), directory, where, conditions)
        known = sorted(p.stem for p in (directory / "lib").glob("*.sql"))
        raise PackError(f"{where}: unknown placeholder {{{{{name}}}}}: use {', '.join([*LISTS, *conditions])} "
                        f"or one of {', '.join(known)}")
    return _PLACEHOLDER.sub(replace, source)


def parse(path: Path, directory: Path = PACKS_DIR, by_cursor: bool = False) -> Query:
    """One detection file, its SQL judging the rows of its window (as osquery schedules
    it), or by_cursor those between the eids :after and :upto (plain `watch`). Raises
    PackError naming file:line and the fix."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PackError(f"{path}: cannot read the detection ({faults.cause(exc)}): {faults.fix(exc)}") from None
    meta: dict[str, tuple[str, int]] = {}
    body_start = len(lines)
    for number, line in enumerate(lines, 1):
        m = re.match(r"^--\s*([a-z_]+)\s*:\s*(.*)$", line)
        if m is None:
            body_start = number
            break
        key, value = m.group(1), m.group(2).strip()
        if key not in FIELDS:
            raise PackError(f"{path}:{number}: unknown header key {key!r}: the header holds {', '.join(sorted(FIELDS))}")
        meta[key] = (value, number)
    missing = sorted(FIELDS - set(meta))
    if missing:
        raise PackError(f"{path}:1: header misses {', '.join(missing)}: add '-- {missing[0]}: ...' lines at the top")
    name = path.stem
    if not _NAME.match(name) or name.startswith(("query", "cache", "config_views")) or name.endswith(("epoch", "counter")):
        raise PackError(f"{path}:1: query name {name!r} is not usable by osquery: lower-case letters, digits and _, "
                        "not starting with query/cache/config_views nor ending with epoch/counter")

    def field(key: str, check: Callable[[str], bool], fix: str) -> str:
        value, number = meta[key]
        if not check(value):
            raise PackError(f"{path}:{number}: {key} {value!r} is not valid: {fix}")
        return value

    description = field("description", bool, "write one line saying what the detection finds")
    interval = field("interval", lambda v: v.isdigit() and 1 <= int(v) <= 604800, "seconds, from 1 to 604800")
    platform = field("platform", lambda v: v == "linux", "the table exists on linux only")
    technique = field("technique", lambda v: bool(_TECHNIQUE.match(v)), "a MITRE ATT&CK id like T1105 or T1048.003")
    logging = field("logging", lambda v: v in LOGGING, f"one of {', '.join(LOGGING)}")
    severity = field("severity", lambda v: v in SEVERITIES, f"one of {', '.join(SEVERITIES)}")
    source = "\n".join(lines[body_start - 1:]).strip()
    if not source:
        raise PackError(f"{path}:{body_start}: no SQL after the header")
    if NOT_SYNTAX.sub(" ", source).strip().rstrip(";").count(";"):
        raise PackError(f"{path}:{body_start}: one statement per file (osquery runs one query per name)")
    recent = {PLACEHOLDERS[table]: BY_CURSOR[table] if by_cursor else window(table, int(interval)) for table in BY_CURSOR}
    sql = expand(source, directory, f"{path}:{body_start}", recent)
    judged = SOCKETS if BY_CURSOR[SOCKETS.name] in expand(source, directory, f"{path}:{body_start}") else EXECS
    return Query(name, path, description, int(interval), platform, technique, logging, severity, source, body_start, sql,
                 judged.name)


def sources(directory: Path) -> list[Path]:
    """The .sql files of a pack directory. Raises PackError when it cannot be read."""
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    except OSError as exc:
        raise PackError(f"{directory}: cannot read the pack directory ({faults.cause(exc)}): {faults.fix(exc)}") from None


def load(directory: Path = PACKS_DIR) -> list[Query]:
    """Every detection in directory, by name. Raises PackError on the first bad file."""
    return [parse(p, directory) for p in sources(directory)]


def load_each(directory: Path = PACKS_DIR, by_cursor: bool = False) -> tuple[list[Query], list[str]]:
    """Every good detection, and an error line (file:line: why) for each bad file: one
    broken file must not stop the others."""
    queries, errors = [], []
    try:
        paths = sources(directory)
    except PackError as exc:
        return [], [str(exc)]
    for path in paths:
        try:
            queries.append(parse(path, directory, by_cursor))
        except (PackError, OSError) as exc:
            errors.append(str(exc))
    return queries, errors
