"""The detection packs: every query against its positive and negative fixtures through
the embedded host, the pack tooling and its generated formats, and the runner."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from osquery_netutil.packs import formats, jsonl, resultlog, source as packs, verify
from osquery_netutil.app.cli import main
from osquery_netutil.host.database import Host
from osquery_netutil.locations import WRITABLE_DIRS
from osquery_netutil.packs.runner import PackRunner, Result
from osquery_netutil.schema import EXECS, SOCKETS, STATUS
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import ExecsTable, SocketsTable, StatusTable, StoredTable, stored_tables

QUERIES = packs.load()
REQUIRED = {
    "netutil_host_suspicious_location", "netutil_container_suspicious_location", "netutil_public_ip_argument",
    "netutil_ip_argument_hunt", "netutil_backdoor_arguments", "netutil_ingress_tool_transfer",
    "netutil_dns_exfiltration", "netutil_scanner_or_sniffer", "netutil_tunnel", "netutil_renamed_utility",
    "netutil_probe_health", "netutil_every_execution", "netutil_container_service_shell", "netutil_cloud_metadata_access",
    # issue 23: judged on what was contacted
    "netutil_contacted_public_destination", "netutil_dns_questions_exfiltration", "netutil_listener_accepted",
    "netutil_metadata_contacted",
}


def test_every_detection_the_issue_asks_for_exists() -> None:
    assert REQUIRED <= {q.name for q in QUERIES}


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_detection_reports_its_positives_and_none_of_its_negatives(query: packs.Query) -> None:
    folder = packs.PACKS_DIR / "fixtures" / query.name
    for kind in ("positive", "negative"):
        lines = [line for line in (folder / f"{kind}.jsonl").read_text().splitlines() if line.strip()]
        assert lines, f"{query.name} has no {kind} fixtures"
    assert verify.check_fixtures(query) == []


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_detection_results_carry_what_a_triager_needs(query: packs.Query, tmp_path: Path) -> None:
    folder = packs.PACKS_DIR / "fixtures" / query.name
    if not query.judges_rows:
        return   # the health query reads the status table; its columns are checked by its fixtures
    tmp_path.chmod(0o700)
    with Store(tmp_path / "events.db") as store:
        for exec_row, events in verify.fixture_rows(folder / "positive.jsonl"):
            verify.store_entry(store, exec_row, events)
        store.flush()
        columns, results = Host(stored_tables(lambda: store)).query(query.sql)
    assert results
    if query.judged == SOCKETS.name:   # an event, the process it is of, the exec row it joins
        assert {"eid", "exec_eid", "time", "action", "pid", "comm", "path", "remote_address", "remote_port", "origin",
                "container_id", "cmdline", "message"} <= set(columns)
    else:
        assert {"eid", "time", "username", "pid", "utility", "cmdline", "chain", "container_id", "ip_args", "message"} <= set(columns)
        chain = columns.index("chain")
        assert all(" > " in r[chain] or r[chain].startswith("/") for r in results)
    message = columns.index("message")
    assert all(r[message] and "None" not in r[message] for r in results)


def test_the_repository_packs_verify_and_generated_files_are_fresh() -> None:
    assert verify.verify() == []
    assert formats.stale() == [], "run 'osquery-netutil packs build' and commit packs/generated/"


def test_the_writable_directories_are_written_once() -> None:
    for path in [*packs.PACKS_DIR.glob("*.sql"), *packs.PACKS_DIR.glob("lib/*.sql")]:
        text = path.read_text()
        assert not [d for d in WRITABLE_DIRS if f"'{d}" in text], f"{path} pastes the list: use {{{{writable_dirs}}}}"
    assert all(f"('{d}')" in q.sql for q in QUERIES if "{{common}}" in q.source for d in WRITABLE_DIRS)


GOOD_HEADER = "-- description: x\n-- interval: 60\n-- platform: linux\n-- technique: T1105\n-- logging: snapshot\n-- severity: high\n"


@pytest.mark.parametrize(
    ("body", "one"),
    [
        ("SELECT eid FROM network_utility_execs WHERE cmdline LIKE '%;%'; -- the end; really\n", True),
        ("SELECT eid /* a; b */ FROM network_utility_execs WHERE cmdline <> 'it''s; x';\n", True),
        ("SELECT 1 AS eid; SELECT 2 AS eid;\n", False),
        ("SELECT ';' AS eid; DELETE FROM x\n", False),
    ],
)
def test_one_statement_per_file_and_semicolons_in_strings_are_data(tmp_path: Path, body: str, one: bool) -> None:
    (tmp_path / "q.sql").write_text(GOOD_HEADER + body)
    if one:
        assert packs.parse(tmp_path / "q.sql").source == body.strip()
    else:
        with pytest.raises(packs.PackError, match="q.sql:7: one statement per file"):
            packs.parse(tmp_path / "q.sql")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("-- description: x\n-- interval: 0\n-- platform: linux\n-- technique: T1105\n-- logging: snapshot\n-- severity: high\n",
         "bad.sql:2: interval '0' is not valid: seconds, from 1 to 604800"),
        ("-- description: x\n-- interval: 60\n-- platform: linux\n-- technique: 1105\n-- logging: snapshot\n-- severity: high\n",
         "bad.sql:4: technique '1105' is not valid"),
        ("-- description: x\n-- interval: 60\n-- platform: linux\n-- technique: T1105\n-- logging: snapshot\n-- severity: high\n-- owner: me\n",
         "bad.sql:7: unknown header key 'owner'"),
        ("-- interval: 60\n-- platform: linux\n-- technique: T1105\n-- logging: snapshot\n-- severity: high\n",
         "bad.sql:1: header misses description"),
    ],
)
def test_a_bad_header_is_reported_with_file_and_line(tmp_path: Path, header: str, message: str) -> None:
    directory = _copy_packs(tmp_path)
    (directory / "bad.sql").write_text(header + "SELECT 1 AS eid;\n")
    problems = verify.verify(directory)
    assert any(message in p for p in problems), problems


def test_sql_errors_and_missing_fixtures_are_reported_and_the_cli_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _copy_packs(tmp_path)
    (directory / "broken.sql").write_text(GOOD_HEADER + "WITH {{common}}\nSELECT r.* FROM report r WHERE r.nope = 1;\n")
    (directory / "fixtures" / "broken").mkdir()
    (directory / "fixtures" / "broken" / "positive.jsonl").write_text('{"utility": "curl"}\n')
    (directory / "nofix.sql").write_text(GOOD_HEADER + "SELECT eid FROM network_utility_execs;\n")
    (directory / "typo.sql").write_text(GOOD_HEADER + "WITH {{comon}}\nSELECT 1;\n")
    problems = verify.verify(directory)
    assert any(p.startswith(f"{directory / 'broken.sql'}:7: ") and "no such column: r.nope" in p for p in problems), problems
    assert any(p.startswith(f"{directory / 'nofix.sql'}:1: no fixtures") for p in problems), problems
    assert any(f"{directory / 'typo.sql'}:7: unknown placeholder {{{{comon}}}}" in p for p in problems), problems
    assert main(["packs", "verify", "--packs", str(directory)]) == 1
    assert "problems" in capsys.readouterr().out


def test_a_regex_osquery_refuses_fails_verify_even_where_no_row_reaches_it(tmp_path: Path) -> None:
    """std::regex has no lookbehind: osquery would refuse the query, so verify does, from
    the SQL itself (the fixtures' rows never reach this pattern)."""
    directory = _copy_packs(tmp_path)
    body = ("SELECT eid FROM network_utility_execs\n"
            "WHERE utility = 'none' AND regex_match(concat(cmdline, ','), '(?<=-e )/bin/sh', 0) IS NOT NULL;\n")
    (directory / "lookbehind.sql").write_text(GOOD_HEADER + body)
    fixtures = directory / "fixtures" / "lookbehind"
    fixtures.mkdir()
    (fixtures / "negative.jsonl").write_text('{"utility": "curl", "cmdline": "curl -e /bin/sh"}\n')
    problems = verify.verify(directory)
    assert any(p.startswith(f"{directory / 'lookbehind.sql'}:7: osquery refuses the regex '(?<=-e )/bin/sh'")
               and "lookbehind" in p for p in problems), problems
    assert verify.regex_literals("SELECT regex_split(x, 'a''b', 0), regex_match(f(a, ')'), '[,)]', 1)") == ["a'b", "[,)]"]


def _copy_packs(tmp_path: Path) -> Path:
    directory = tmp_path / "packs"
    shutil.copytree(packs.PACKS_DIR, directory)
    return directory


def test_the_runner_is_differential_and_keeps_going_after_a_broken_query(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    queries = [q for q in QUERIES if q.name in ("netutil_every_execution", "netutil_public_ip_argument")]
    broken = packs.Query(**{**queries[0].__dict__, "name": "netutil_broken", "sql": "SELECT nope FROM network_utility_execs"})
    with Store(tmp_path / "events.db") as store:
        runner = PackRunner(Host(stored_tables(lambda: store)), [broken, *queries], every_s=0)
        # A row settled (a scheduled run judges exec rows once SETTLED_S old).
        store.add(jsonl.parse_line('{"utility": "netcat", "cmdline": "nc 8.8.8.8 4444", "path": "/usr/bin/nc"}',
                                   int(time.time()) - 60))
        store.flush()
        results, errors = runner.run_due()
        assert len(errors) == 1 and "netutil_broken" in errors[0] and "no such column: nope" in errors[0]
        assert sorted(r.name for r in results) == ["pack_netutil_netutil_every_execution", "pack_netutil_netutil_public_ip_argument"]
        assert all(r.action == "added" and r.counter == 0 and len(r.rows) == 1 for r in results)
        assert isinstance(results[0].rows[0]["eid"], int)   # typed until a logger writes it
        (line,) = resultlog.log_lines(results[0], "h1")
        assert list(line) == ["name", "hostIdentifier", "calendarTime", "unixTime", "epoch", "counter", "numerics",
                              "columns", "action"]
        assert line["hostIdentifier"] == "h1" and line["numerics"] is False and list(line["columns"]) == sorted(line["columns"])
        assert all(isinstance(v, str) for v in line["columns"].values())
        assert runner.run_due()[0] == []                         # nothing new: nothing logged, the counter stays
        store.add(jsonl.parse_line('{"utility": "curl", "cmdline": "curl https://example.test/", "path": "/usr/bin/curl"}',
                                   int(time.time()) - 60))
        store.flush()
        (added,) = runner.run_due()[0]
        # osquery's counter: 0 for the first run, then one more for each run whose results changed
        assert added.name == "pack_netutil_netutil_every_execution" and added.rows[0]["utility"] == "curl" and added.counter == 1


def test_result_lines_are_osquerys() -> None:
    """calendarTime as osquery's getAsciiTime (asctime: the day padded with a space), REAL as
    its CastVisitor (15 significant digits, '.0' when there is no point), NULL as ''."""
    assert resultlog.calendar_time(1796321980) == "Thu Dec  3 18:19:40 2026 UTC"
    assert [resultlog.cast(v) for v in (0.1, 1.0, 2.5, 1e20, 1 / 3, 1e-5, None, 7, "x")] == [
        "0.1", "1.0", "2.5", "1e+20.0", "0.333333333333333", "1e-05.0", "", "7", "x"]
    health = next(q for q in QUERIES if q.name == "netutil_probe_health")
    (line,) = resultlog.log_lines(Result(health, "snapshot", (), 1796321980, 0), "h1")
    assert list(line) == ["snapshot", "action", "name", "hostIdentifier", "calendarTime", "unixTime", "epoch", "counter",
                          "numerics"] and line["snapshot"] == []
    assert resultlog.dumps(line).startswith('{"snapshot":[],"action":"snapshot","name":"pack_netutil_netutil_probe_health"')
    assert resultlog.snapshots_path(Path("/var/log/x/results.log")) == Path("/var/log/x/snapshots.log")
    assert resultlog.snapshots_path(Path("/srv/netutil.log")) == Path("/srv/netutil.snapshots.log")


def _health_runner(status: dict, snapshots: str) -> PackRunner:
    health = next(q for q in QUERIES if q.name == "netutil_probe_health")
    return PackRunner(Host([StatusTable(lambda: status)]), [health], every_s=2.0, snapshots=snapshots)


def test_a_snapshot_query_logs_every_run_at_its_interval_as_osqueryd_does() -> None:
    status = {**STATUS.empty_row(), "state": "running"}
    runner = _health_runner(status, "log")
    (first,) = runner.run_due(1000.0)[0]
    assert first.action == "snapshot" and first.rows == () and first.counter == 0   # logged with no row too
    assert runner.run_due(1002.0)[0] == []                                        # not due: 300 s
    status.update(state="failed", error="probe gone")
    (later,) = runner.run_due(1300.0)[0]
    assert later.rows[0]["error"] == "probe gone" and later.counter == 0


def test_a_health_condition_is_shown_when_it_starts_changes_and_ends_not_every_round() -> None:
    """A restart shown once, not 30 times a minute (issue 20): the lost count moving is the same
    condition; a new error is a new one."""
    status = {**STATUS.empty_row(), "state": "running", "restarted": "killed", "start_time": int(time.time()),
              "events_lost": 0}
    runner = _health_runner(status, "changes")
    shown = []
    for second in range(0, 60, 2):
        status["events_lost"] = 5 + second * 10    # figures move every round
        shown += runner.run_due(1000.0 + second)[0]
    assert [r.action for r in shown] == ["added"] and "restarted" in shown[0].rows[0]["message"]
    status.update(state="degraded", error="bad catalog")
    (removed, added) = runner.run_due(1100.0)[0]
    assert (removed.action, added.action) == ("removed", "added") and added.rows[0]["error"] == "bad catalog"
    status.update(state="running", error="", restarted="", events_lost=0)
    (ended,) = runner.run_due(1102.0)[0]
    assert ended.action == "removed" and runner.run_due(1104.0)[0] == []


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_each_detection_reads_the_table_once(query: packs.Query, tmp_path: Path) -> None:
    """In osquery every read of an extension table is a thrift call: a query that reads it
    once per row (an unmaterialized CTE in a correlated subquery) would never finish. Each
    read written in the SQL runs once."""
    tmp_path.chmod(0o700)
    folder = packs.PACKS_DIR / "fixtures" / query.name
    calls: dict[str, list[object]] = {EXECS.name: [], SOCKETS.name: []}

    def counting(table: type[StoredTable]) -> type[StoredTable]:
        class Counting(table):  # type: ignore[valid-type,misc]
            def generate(self, context):  # type: ignore[no-untyped-def]
                calls[self.table.name].append(context)
                return super().generate(context)
        return Counting

    with Store(tmp_path / "events.db") as store:
        if query.judges_rows:   # five times the positive fixtures: each row and each socket event of them
            for _ in range(5):
                for exec_row, events in verify.fixture_rows(folder / "positive.jsonl"):
                    verify.store_entry(store, exec_row, events)
            store.flush()
        status = StatusTable(lambda: {"state": "running", "events_lost": 0, "error": ""})
        Host([counting(ExecsTable)(lambda: store), counting(SocketsTable)(lambda: store), status]).query(query.sql)
    for table, made in calls.items():
        reads = query.sql.count(f"FROM {table}")   # the window's rows, a spread's neighbours, the execs events join
        assert len(made) <= reads, f"{query.name} reads {table} {len(made)} times, its SQL {reads}"
    assert calls[query.judged] or not query.judges_rows, f"{query.name} read no row of {query.judged}"
