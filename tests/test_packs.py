"""The detection packs: every query against its positive and negative fixtures through
the embedded host, the pack tooling and its generated formats, and the runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from osquery_netutil import packs
from osquery_netutil.cli import main
from osquery_netutil.host import Host
from osquery_netutil.locations import WRITABLE_DIRS
from osquery_netutil.runner import PackRunner
from osquery_netutil.store import Store
from osquery_netutil.tables import ExecsTable, StatusTable

QUERIES = packs.load()
REQUIRED = {
    "netutil_host_suspicious_location", "netutil_container_suspicious_location", "netutil_public_ip_argument",
    "netutil_ip_argument_hunt", "netutil_backdoor_arguments", "netutil_ingress_tool_transfer",
    "netutil_dns_exfiltration", "netutil_scanner_or_sniffer", "netutil_tunnel", "netutil_renamed_utility",
    "netutil_probe_health", "netutil_every_execution", "netutil_container_service_shell", "netutil_cloud_metadata_access",
}


def test_every_detection_the_issue_asks_for_exists() -> None:
    assert REQUIRED <= {q.name for q in QUERIES}


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_detection_reports_its_positives_and_none_of_its_negatives(query: packs.Query) -> None:
    folder = packs.PACKS_DIR / "fixtures" / query.name
    for kind in ("positive", "negative"):
        lines = [line for line in (folder / f"{kind}.jsonl").read_text().splitlines() if line.strip()]
        assert lines, f"{query.name} has no {kind} fixtures"
    assert packs.check_fixtures(query) == []


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_detection_results_carry_what_a_triager_needs(query: packs.Query, tmp_path: Path) -> None:
    folder = packs.PACKS_DIR / "fixtures" / query.name
    if "FROM network_utility_execs" not in query.sql:
        return   # the health query reads the status table; its columns are checked by its fixtures
    rows = packs.jsonl.read((folder / "positive.jsonl").read_text().splitlines()).rows
    tmp_path.chmod(0o700)
    with Store(tmp_path / "events.db") as store:
        store.add_many(rows)
        store.flush()
        columns, results = Host([ExecsTable(lambda: store)]).query(query.sql)
    assert {"eid", "time", "username", "pid", "utility", "cmdline", "chain", "container_id", "ip_args", "message"} <= set(columns)
    chain, message = columns.index("chain"), columns.index("message")
    assert all(" > " in r[chain] or r[chain].startswith("/") for r in results)
    assert all(r[message] and "None" not in r[message] for r in results)


def test_the_repository_packs_verify_and_generated_files_are_fresh() -> None:
    assert packs.verify() == []
    assert packs.stale() == [], "run 'osquery-netutil packs build' and commit packs/generated/"


def test_the_writable_directories_are_written_once() -> None:
    for path in [*packs.PACKS_DIR.glob("*.sql"), *packs.PACKS_DIR.glob("lib/*.sql")]:
        text = path.read_text()
        assert not [d for d in WRITABLE_DIRS if f"'{d}" in text], f"{path} pastes the list: use {{{{writable_dirs}}}}"
    assert all(f"('{d}')" in q.sql for q in QUERIES if "{{common}}" in q.source for d in WRITABLE_DIRS)


def test_generated_formats_load_as_osquery_and_fleet_expect() -> None:
    files = packs.generated(QUERIES)
    pack = json.loads(files["netutil-pack.json"])
    assert pack["platform"] == "linux" and "network_utility_execs" in pack["discovery"][0]
    for q in QUERIES:
        entry = pack["queries"][q.name]
        assert entry["query"] == q.sql and entry["interval"] == q.interval and entry["snapshot"] == (q.logging == "snapshot")
        assert not q.name.startswith(("query", "cache")) and "\n#" not in entry["query"] and "\n//" not in entry["query"]

# The fields of fleetctl's query/report spec (fleet's QuerySpec: the same before and after
# the rename of queries to reports), and their types; name and query are required.
FLEET_FIELDS = {"name": str, "query": str, "description": str, "interval": int, "platform": str, "logging": str,
                "observer_can_run": bool, "automations_enabled": bool, "min_osquery_version": str, "discard_data": bool}


def _check_fleet_items(items: list[dict], file: str) -> None:
    assert [i["name"] for i in items] == [q.name for q in QUERIES], file
    for item, q in zip(items, QUERIES):
        assert set(item) <= set(FLEET_FIELDS) and {"name", "query"} <= set(item), (file, sorted(set(item) - set(FLEET_FIELDS)))
        assert all(isinstance(item[k], FLEET_FIELDS[k]) for k in item), (file, item["name"])
        assert item["query"] == q.sql and item["interval"] == q.interval and item["logging"] in packs.LOGGING
        assert item["platform"] == "linux" and item["automations_enabled"] == (q.severity in ("high", "critical"))


@pytest.mark.parametrize(("file", "key", "since_rename"), [
    ("fleet-reports.yml", "reports", True), ("fleet-queries.yml", "queries", False),
    ("fleetctl-apply.yml", "report", True), ("fleetctl-apply-queries.yml", "query", False)])
def test_fleet_files_hold_what_each_fleet_generation_reads(file: str, key: str, since_rename: bool) -> None:
    text = packs.generated(QUERIES)[file]
    assert ("since queries were renamed to reports" if since_rename else "from before queries were renamed") in text
    if file.startswith("fleetctl"):
        docs = list(yaml.safe_load_all(text))
        assert {d["kind"] for d in docs} == {key} and {d["apiVersion"] for d in docs} == {"v1"}
        assert all(set(d) == {"apiVersion", "kind", "spec"} for d in docs)
        _check_fleet_items([d["spec"] for d in docs], file)
    else:
        loaded = yaml.safe_load(text)
        assert list(loaded) == [key]   # GitOps: `reports:` on a renamed Fleet, `queries:` before
        _check_fleet_items(loaded[key], file)


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
    problems = packs.verify(directory)
    assert any(message in p for p in problems), problems


def test_sql_errors_and_missing_fixtures_are_reported_and_the_cli_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _copy_packs(tmp_path)
    (directory / "broken.sql").write_text(GOOD_HEADER + "WITH {{common}}\nSELECT r.* FROM report r WHERE r.nope = 1;\n")
    (directory / "fixtures" / "broken").mkdir()
    (directory / "fixtures" / "broken" / "positive.jsonl").write_text('{"utility": "curl"}\n')
    (directory / "nofix.sql").write_text(GOOD_HEADER + "SELECT eid FROM network_utility_execs;\n")
    (directory / "typo.sql").write_text(GOOD_HEADER + "WITH {{comon}}\nSELECT 1;\n")
    problems = packs.verify(directory)
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
    problems = packs.verify(directory)
    assert any(p.startswith(f"{directory / 'lookbehind.sql'}:7: osquery refuses the regex '(?<=-e )/bin/sh'")
               and "lookbehind" in p for p in problems), problems
    assert packs.regex_literals("SELECT regex_split(x, 'a''b', 0), regex_match(f(a, ')'), '[,)]', 1)") == ["a'b", "[,)]"]


def _copy_packs(tmp_path: Path) -> Path:
    directory = tmp_path / "packs"
    shutil.copytree(packs.PACKS_DIR, directory)
    return directory


def test_the_runner_is_differential_and_keeps_going_after_a_broken_query(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    queries = [q for q in QUERIES if q.name in ("netutil_every_execution", "netutil_public_ip_argument")]
    broken = packs.Query(**{**queries[0].__dict__, "name": "netutil_broken", "sql": "SELECT nope FROM network_utility_execs"})
    with Store(tmp_path / "events.db") as store:
        runner = PackRunner(Host([ExecsTable(lambda: store)]), [broken, *queries], every_s=0, host_identifier="h1")
        store.add(packs.jsonl.parse_line('{"utility": "netcat", "cmdline": "nc 8.8.8.8 4444", "path": "/usr/bin/nc"}'))
        store.flush()
        lines, errors = runner.run_due()
        assert len(errors) == 1 and "netutil_broken" in errors[0] and "no such column: nope" in errors[0]
        assert sorted(line["name"] for line in lines) == ["pack_netutil_netutil_every_execution", "pack_netutil_netutil_public_ip_argument"]
        line = lines[0]
        assert set(line) == {"name", "hostIdentifier", "calendarTime", "unixTime", "epoch", "counter", "numerics", "columns", "action"}
        assert line["hostIdentifier"] == "h1" and line["action"] == "added" and line["counter"] == 0 and line["numerics"] is False
        assert all(isinstance(v, str) for v in line["columns"].values())
        assert runner.run_due()[0] == []                         # nothing new: nothing logged
        store.add(packs.jsonl.parse_line('{"utility": "curl", "cmdline": "curl https://example.test/", "path": "/usr/bin/curl"}'))
        store.flush()
        (added,) = runner.run_due()[0]
        assert added["name"] == "pack_netutil_netutil_every_execution" and added["columns"]["utility"] == "curl" and added["counter"] == 2


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_each_detection_reads_the_table_once(query: packs.Query, tmp_path: Path) -> None:
    """In osquery every read of an extension table is a thrift call: a query that reads it
    once per row (an unmaterialized CTE in a correlated subquery) would never finish."""
    tmp_path.chmod(0o700)
    folder = packs.PACKS_DIR / "fixtures" / query.name
    calls = []

    class Counting(ExecsTable):
        def generate(self, context):  # type: ignore[no-untyped-def]
            calls.append(context)
            return super().generate(context)

    with Store(tmp_path / "events.db") as store:
        if "FROM network_utility_execs" in query.sql:
            store.add_many(packs.jsonl.read((folder / "positive.jsonl").read_text().splitlines()).rows * 5)
            store.flush()
        Host([Counting(lambda: store), StatusTable(lambda: {"state": "running", "events_lost": 0, "error": ""})]).query(query.sql)
    assert len(calls) <= 1, f"{query.name} reads network_utility_execs {len(calls)} times"
