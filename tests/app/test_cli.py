"""`osquery-netutil watch`, the README's main command, as a user runs it."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osquery_netutil.packs import source as packs
from osquery_netutil.app.cli import _file_flags, main
from osquery_netutil.schema import SOCKETS
from osquery_netutil.store.store import Store

from tests.conftest import need, probe_unavailable
from testkit.support import write_executable

pytestmark = pytest.mark.probe


class LineReader:
    """Whole lines from a pipe, waiting at most `timeout` for one that matches.

    Reads the raw fd (no Python buffering), so select() never misses lines that a
    buffered readline() had already swallowed.
    """

    def __init__(self, pipe) -> None:
        self.fd = pipe.fileno()
        self.pending = b""

    def until(self, pred, timeout: float = 20.0) -> list[str]:
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                lines.append(line.decode())
                if pred(lines[-1]):
                    return lines
            if sel.select(timeout=0.2):
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.pending += chunk
        raise AssertionError(f"no matching line within {timeout}s: {lines}")

    def collect(self, seconds: float) -> list[str]:
        """Every line that arrives within `seconds`."""
        lines: list[str] = []
        try:
            self.until(lambda line: lines.append(line) and False, seconds)   # never matches: reads till the end
        except AssertionError:
            pass
        return lines


def test_watch_prints_detections_as_osquery_result_lines(workdir: Path) -> None:
    need(probe_unavailable())
    bad_catalog = workdir / "bad.yaml"
    bad_catalog.write_text("utilities: [oops\n")
    pack_dir = workdir / "packs"
    shutil.copytree(packs.PACKS_DIR, pack_dir)
    (pack_dir / "netutil_broken.sql").write_text("-- description: broken on purpose\nSELECT 1;\n")
    store = workdir / "store" / "events.db"
    watch = subprocess.Popen(
        [sys.executable, "-m", "osquery_netutil", "watch", "--catalog", str(bad_catalog), "--store", str(store),
         "--packs", str(pack_dir), "--every", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = LineReader(watch.stdout), LineReader(watch.stderr)
    try:
        errors = err.until(lambda line: "watching execs" in line)
        assert any("bad.yaml:" in e and "keeping the built-in catalog" in e for e in errors), errors
        assert any(f"{pack_dir / 'netutil_broken.sql'}:1: header misses" in e and "the other packs keep running" in e
                   for e in errors), errors
        script = write_executable(workdir / "stage2.sh", "#!/bin/sh\nnc -h 2>/dev/null\ncurl --version 8.8.8.8 >/dev/null\n")
        subprocess.run([str(script)], timeout=30)
        lines = [json.loads(line) for line in out.until(lambda line: "netutil_public_ip_argument" in line)]
        by_name = {(line["name"], line["columns"].get("utility")): line for line in lines if "columns" in line}
        hit = by_name[("pack_netutil_netutil_host_suspicious_location", "netcat")]
        assert hit["action"] == "added" and hit["columns"]["suspicious_path"] == str(script)
        assert hit["columns"]["chain"].endswith(f"{script} > /usr/bin/nc") and "was executed by root" in hit["columns"]["message"]
        assert by_name[("pack_netutil_netutil_public_ip_argument", "curl")]["columns"]["public_ip_args"] == "8.8.8.8"
        assert list(hit) == ["name", "hostIdentifier", "calendarTime", "unixTime", "epoch", "counter", "numerics",
                             "columns", "action"]   # osquery's order
        # The bad --catalog makes the probe degraded, and the health detection says so, in
        # osqueryd's snapshot form (once per interval: 300 s, so once here).
        (health,) = [line for line in lines if line["name"] == "pack_netutil_netutil_probe_health"]
        assert health["action"] == "snapshot" and health["counter"] == 0 and "bad.yaml" in health["snapshot"][0]["error"]
    finally:
        watch.send_signal(signal.SIGINT)
    assert "lost 0" in err.until(lambda line: "execs seen" in line)[-1]
    assert watch.wait(timeout=20) == 0
    # What was detected was also stored, and a reader sees it after watch stopped.
    with Store(store, readonly=True) as kept:
        assert {"netcat", "curl"} <= {r["utility"] for r in kept.select()}
    assert store.stat().st_mode & 0o777 == 0o600


def test_watch_judges_where_a_utility_went_whatever_its_arguments_said(workdir: Path) -> None:
    """curl -K: the URL is in a config file, no address in argv; run in an empty network
    namespace, its connect to a public address fails at once (no packet leaves) and is
    what the socket detection judges."""
    need(probe_unavailable())
    (workdir / "cfg").write_text('url = "http://9.9.9.9:8443/stage3"\n')
    watch = subprocess.Popen(
        [sys.executable, "-m", "osquery_netutil", "watch", "--store", str(workdir / "store" / "events.db"), "--every", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = LineReader(watch.stdout), LineReader(watch.stderr)
    try:
        err.until(lambda line: "watching execs" in line)
        script = write_executable(workdir / "fetch.sh", f"#!/bin/sh\nunshare -n curl -s -K {workdir / 'cfg'}\n"
                                  "http_proxy=http://9.9.9.10:3128 unshare -n curl -s http://update.example.com/x\n")
        subprocess.run([str(script)], timeout=30)
        name = "pack_netutil_netutil_contacted_public_destination"
        lines = [json.loads(line) for line in out.until(lambda line: name in line and "9.9.9.10" in line)]
        lines += [json.loads(line) for line in out.collect(1.0)]
        hits = {line["columns"]["remote_address"]: line["columns"] for line in lines if line.get("name") == name}
        config, proxy = hits["9.9.9.9"], hits["9.9.9.10"]
        assert (config["remote_port"], config["status"], proxy["remote_port"]) == ("8443", "unreachable", "3128")
        assert config["cmdline"] == f"curl -s -K {workdir / 'cfg'}" and str(script) in config["reason"]
        assert f"contacted 9.9.9.9:8443 (unreachable), descends from {script}" in config["message"]
        assert proxy["cmdline"] == "curl -s http://update.example.com/x"   # argv names a host, the proxy is in the environment
    finally:
        watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=20) == 0


def test_on_a_terminal_watch_shows_alerts_and_a_restart_once(workdir: Path) -> None:
    """Text output (a person reading): medium and above only, and a health condition once
    when it starts, not every round (before: 30 lines a minute after one restart)."""
    need(probe_unavailable())
    store = workdir / "store" / "events.db"
    command = [sys.executable, "-m", "osquery_netutil", "watch", "--store", str(store), "--every", "0.2"]
    first = subprocess.Popen([*command, "--format", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    LineReader(first.stderr).until(lambda line: "watching execs" in line, 60)
    first.kill()   # the restart the health detection must report
    first.wait(timeout=20)
    watch = subprocess.Popen([*command, "--format", "text"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = LineReader(watch.stdout), LineReader(watch.stderr)
    try:
        said = err.until(lambda line: "watching execs" in line, 60)
        assert any("not running 2 queries below medium" in e and "netutil_every_execution" in e for e in said), said
        script = write_executable(workdir / "probe.sh", "#!/bin/sh\nnc -h 2>/dev/null\n")
        subprocess.run([str(script)], timeout=30)
        lines = out.until(lambda line: "netutil_host_suspicious_location" in line) + out.collect(4.0)   # 20 rounds
    finally:
        watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=20) == 0
    health = [line for line in lines if "netutil_probe_health" in line]
    assert len(health) == 1 and "restarted" in health[0] and "killed" in health[0], lines
    assert not [line for line in lines if "netutil_every_execution" in line or "netutil_ip_argument_hunt" in line]
    assert all(not line.startswith("{") for line in lines)


def test_record_appends_rows_that_replay_loads(workdir: Path) -> None:
    """Exec rows and the socket events of their processes (a refused connect): replay
    joins each event to its row again."""
    need(probe_unavailable())
    output = workdir / "incident.jsonl"
    with socket.socket() as probe:   # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    record = subprocess.Popen([sys.executable, "-m", "osquery_netutil", "record", str(output)],
                              stderr=subprocess.PIPE)
    err = LineReader(record.stderr)
    try:
        err.until(lambda line: "watching execs" in line)
        subprocess.run(["wget", "--version", "http://127.0.0.1:9/"], capture_output=True, timeout=10)
        subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/"], capture_output=True, timeout=10)
        deadline = time.monotonic() + 10
        while '"sockets"' not in (output.read_text() if output.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        record.send_signal(signal.SIGINT)
    assert record.wait(timeout=20) == 0
    (line,) = [line for line in output.read_text().splitlines() if '"wget"' in line]
    assert json.loads(line)["cmdline"] == "wget --version http://127.0.0.1:9/"
    store = workdir / "replayed" / "events.db"
    assert main(["replay", str(output), "--store", str(store)]) == 0
    with Store(store, readonly=True) as replayed:
        assert [r["ip_args"] for r in replayed.select([("utility", "=", "wget")])] == ["127.0.0.1"]
        (curl,) = replayed.select([("utility", "=", "curl")])
        connects = [r for r in replayed.select(table=SOCKETS) if r["remote_port"] == port]
    assert [(r["action"], r["status"], r["exec_eid"]) for r in connects] == [("connect", "refused", curl["eid"])]


def test_watch_without_root_exits_with_the_cause(capsys: pytest.CaptureFixture[str]) -> None:
    need(None if os.geteuid() == 0 else "needs root to drop to another user and back")
    importlib.import_module("importlib.readers")   # as nobody, Python could not read it under /root
    os.seteuid(65534)
    try:
        code = main(["watch"])
    finally:
        os.seteuid(0)
    assert code == 2
    assert "needs root: run as root" in capsys.readouterr().err


def test_watch_takes_the_shared_flag_file_and_the_command_line_wins(place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need(None if os.geteuid() == 0 else "watch needs root")
    flags = place / "netutil.flags"
    flags.write_text(f"# the extension's too\n--packs={place}/from-the-file\n--verbose\n--timeout 3\n--every 3\n")
    flags.chmod(0o600)
    assert main(["watch", "--flagfile", str(flags)]) == 2   # no detections there: stops before the probe
    err = capsys.readouterr().err
    assert f"{place}/from-the-file: cannot read the pack directory" in err
    assert "ignoring what watch does not take in the flag file: --verbose --timeout 3" in err
    assert _file_flags_kept(flags) == [f"--packs={place}/from-the-file", "--every", "3"]   # the other 3 stays
    assert main(["watch", "--flagfile", str(flags), "--packs", str(place / "from-the-command-line")]) == 2
    assert f"{place}/from-the-command-line: cannot read" in capsys.readouterr().err
    flags.chmod(0o666)   # anyone could choose where root writes: ignored, said
    assert main(["watch", "--flagfile", str(flags), "--packs", str(place / "x")]) == 2
    assert "ignoring the flag file" in capsys.readouterr().err


def test_the_one_file_build_is_the_command_under_its_name(ext_file: str, place: Path) -> None:
    command = place / "osquery-netutil"
    command.symlink_to(ext_file)
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("osquery-netutil 0.")
    query = subprocess.run([ext_file, "query", "SELECT 6 * 7 AS answer", "--store", str(place / "none.db")],
                           capture_output=True, text=True, timeout=60)
    assert query.returncode == 0 and "42" in query.stdout, query.stderr
    extension = subprocess.run([ext_file, "--help"], capture_output=True, text=True, timeout=60)
    assert extension.returncode == 0 and "--socket" in extension.stdout


def _file_flags_kept(flags: Path) -> list[str]:
    """The flags a parser that takes --packs and --every keeps from the file."""
    watch = argparse.ArgumentParser()
    watch.add_argument("--packs")
    watch.add_argument("--every")
    return _file_flags(watch, ["--flagfile", str(flags)])
