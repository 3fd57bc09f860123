"""Enrichment on the real kernel: scripts run four ways, renamed copies, cwd, IPs,
/proc fallback and a docker-like container, each from real execs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from osquery_netutil.events.containers import CgroupResolver, v2_root
from osquery_netutil.events.content import ContentMatcher
from osquery_netutil.kernel.records import SIZES
from osquery_netutil.events.sensor import Sensor

from tests.conftest import Container, need
from testkit.support import Collector, write_executable

pytestmark = pytest.mark.probe

Row = dict[str, Any]
NC = os.path.realpath(shutil.which("nc") or "/usr/bin/nc")


def row_for(rows: Collector, mark: int, utility: str, pred=lambda r: True, timeout: float = 10.0) -> Row:
    hits = rows.wait_for(lambda r: r["utility"] == utility and pred(r), since=mark, timeout=timeout)
    assert hits, f"no {utility} row: {[r['cmdline'] for r in rows.since(mark)]}"
    return hits[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "how",
    ["./x.sh", "sh {script}", "bash -c 'cd {dir} && ./x.sh; true'", "{script}"],
    ids=["relative", "sh-script", "bash-c", "shebang"],
)
def test_the_script_stays_visible_in_the_chain(sensor: Sensor, rows: Collector, workdir: Path, how: str) -> None:
    tag = uuid.uuid4().hex[:8]
    script = write_executable(workdir / "x.sh", f"#!/bin/sh\ncurl --version http://0x7f.1/{tag} 8.8.8.8 >/dev/null\n")
    mark = rows.mark()
    command = how.format(script=script, dir=workdir)
    subprocess.run(["/bin/sh", "-c", command], cwd=workdir, check=True, timeout=30)
    row = row_for(rows, mark, "curl", lambda r: tag in r["cmdline"])
    chain = json.loads(row["ancestors"])
    assert any(a["path"] == str(script) or str(script) in a["cmdline"] for a in chain), chain
    if how == "sh {script}":   # the interpreter's script, found at exec time for the packs
        assert any(a.get("script") == str(script) and a["path"].endswith("sh") for a in chain), chain
    assert str(script) in (row["parent_path"], row["parent_cmdline"].split()[-1])
    assert chain[0]["pid"] == row["parent"] and chain[0]["path"] == row["parent_path"]
    assert row["path"] == shutil.which("curl") and row["matched_by"] == "name"
    assert row["ip_args"] == "127.0.0.1,8.8.8.8" and row["public_ip_args"] == "8.8.8.8"
    assert row["uid"] == os.getuid() and row["username"] == "root"
    assert row["container_id"] == "" and row["argc"] == 4 and row["args_truncated"] == 0
    assert json.loads(row["json_cmdline"]) == ["curl", "--version", f"http://0x7f.1/{tag}", "8.8.8.8"]
    # Above the script: this test process, older than the probe, named from /proc.
    me = next(a for a in chain if a["pid"] == os.getpid())
    assert me["path"] == os.path.realpath(f"/proc/{os.getpid()}/exe") and "pytest" in me["cmdline"]
    assert len(chain) <= 32 and chain[-1]["pid"] == 1


def test_relative_exec_gets_an_absolute_path_and_cwd(sensor: Sensor, rows: Collector) -> None:
    mark = rows.mark()
    port = free_port()
    listener = subprocess.Popen(["./nc", "-l", "127.0.0.1", str(port)], cwd=os.path.dirname(shutil.which("nc")))
    try:
        row = row_for(rows, mark, "netcat", lambda r: r["pid"] == listener.pid)
    finally:
        listener.kill()
        listener.wait(timeout=10)
    assert row["path"] == shutil.which("nc") and row["cwd"] == os.path.dirname(shutil.which("nc"))
    assert row["cmdline"] == f"./nc -l 127.0.0.1 {port}" and row["ip_args"] == "127.0.0.1"


def test_renamed_copies_are_reported_by_content(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    copy = workdir / "upd"
    shutil.copy(NC, copy)
    link = workdir / "lnk"
    link.symlink_to(shutil.which("nc"))
    mark = rows.mark()
    for exe in (copy, link):
        subprocess.run([str(exe), "-h"], capture_output=True, timeout=10)
    for exe in (copy, link):
        row = row_for(rows, mark, "netcat", lambda r: r["path"] == str(exe))
        assert row["matched_by"] == "content" and row["comm"] == exe.name and row["category"] == "remote_shell"
    # A look-alike of the same size is not netcat; nor is anything else run from /tmp.
    fake = write_executable(workdir / "fake", b"#!/bin/sh\n" + b"#" * (os.path.getsize(NC) - 10))
    subprocess.run([str(fake)], timeout=10)
    assert not rows.wait_for(lambda r: r["path"] == str(fake), since=mark, timeout=1.0)


def test_a_users_prefix_adds_a_place_to_the_writable_directories(catalog, workdir: Path) -> None:
    extra = Path(f"/var/lib/netutil-test-{uuid.uuid4().hex[:8]}")
    extra.mkdir(mode=0o700)
    rows: Collector = Collector()
    sensor = Sensor(catalog, extra_prefixes=[f"{extra}/"], on_row=rows.add)
    try:
        sensor.start()
        copies = [shutil.copy(NC, extra / "upd"), shutil.copy(NC, workdir / "upd")]
        for copy in copies:
            subprocess.run([copy, "-h"], capture_output=True, timeout=10)
        for copy in copies:   # the user's place and /tmp, which the user's flag did not name
            row = row_for(rows, 0, "netcat", lambda r: r["path"] == str(copy))
            assert row["matched_by"] == "content"
    finally:
        sensor.stop()
        shutil.rmtree(extra)
    assert sensor.row_errors == 0, sensor.last_row_error


def test_a_memfd_copy_is_reported_by_content(sensor: Sensor, rows: Collector) -> None:
    port = free_port()
    code = (
        "import os, sys\n"
        "fd = os.memfd_create('payload', 0)\n"
        "os.write(fd, open(sys.argv[1], 'rb').read())\n"
        "os.execve(fd, ['kworker', '-l', '127.0.0.1', sys.argv[2]], {})\n"
    )
    mark = rows.mark()
    proc = subprocess.Popen([sys.executable, "-c", code, NC, str(port)])
    try:
        row = row_for(rows, mark, "netcat", lambda r: r["pid"] == proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert row["path"].startswith("/dev/fd/") and row["matched_by"] == "content"
    assert row["cmdline"] == f"kworker -l 127.0.0.1 {port}"


def test_planted_symlinks_and_fifos_are_not_read(catalog, workdir: Path) -> None:
    matcher = ContentMatcher(catalog)
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    (workdir / "zero").symlink_to("/dev/zero")
    (workdir / "shadow").symlink_to("/etc/shadow")
    for name in ("fifo", "zero", "shadow"):
        assert matcher.match_path(str(workdir / name)) is None   # returns at once: no open() blocks
    assert matcher.match_path(str(workdir / "missing")) is None
    copy = workdir / "copy"
    shutil.copy(NC, copy)
    assert matcher.match_path(str(copy)).name == "netcat"


def test_a_docker_like_container_is_named(sensor: Sensor, rows: Collector, workdir: Path, container: Container) -> None:
    need(None if shutil.which("unshare") else "unshare (util-linux) is not installed")
    script = write_executable(workdir / "entry.sh", container.entry(
        "sh -c 'nc -h 2>/dev/null; curl --version 10.9.8.7 >/dev/null'"))
    mark = rows.mark()
    subprocess.run([str(script)], check=True, timeout=30)
    for utility in ("netcat", "curl"):
        row = row_for(rows, mark, utility)
        assert row["container_id"] == container.id, row
        assert row["cgroup_path"] == f"/system.slice/docker-{container.id}.scope"
    # Once every process is gone, the kernel's cgroup id alone still names it.
    assert CgroupResolver().path_of_id(container.cgroup.stat().st_ino) == f"/system.slice/docker-{container.id}.scope"


def _spawn_with_pid(wanted: int, tries: int = 50) -> bool:
    """Run /bin/true as pid `wanted` (root: the kernel hands out ns_last_pid + 1 next).
    Another process forking in between can take it: retried, bounded."""
    for _ in range(tries):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(wanted - 1))
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
        if pid == wanted:
            return True
    return False


def test_an_ancestor_whose_slot_a_newer_pid_took_is_read_from_proc(sensor: Sensor, rows: Collector, workdir: Path) -> None:
    """The kernel keeps each process in slot pid % ANCESTRY_MAX until a newer pid claims it
    (SIZES in probe.py). A living ancestor whose slot was taken is named from /proc."""
    slots = SIZES["ANCESTRY_MAX"]
    pid_max = Path("/proc/sys/kernel/pid_max")
    saved = pid_max.read_text()
    go = workdir / "go"
    tag = uuid.uuid4().hex[:8]
    script = write_executable(
        workdir / "slot.sh",
        # alive while its child is reported (killed below)
        f"#!/bin/sh\nfor i in $(seq 400); do [ -e {go} ] && break; sleep 0.05; done\nnc -h {tag} 2>/dev/null\nsleep 10\n",
    )
    mark = rows.mark()
    proc = subprocess.Popen([str(script)])
    try:
        probe = sensor._probe
        assert probe is not None
        deadline = time.monotonic() + 5
        while ((entry := probe.ancestry(proc.pid)) is None or not entry.file) and time.monotonic() < deadline:
            time.sleep(0.02)   # forked, not exec'd yet
        assert entry is not None and entry.file == str(script).encode()
        pid_max.write_text(str(max(int(saved), 4 * slots)))   # room for pid + ANCESTRY_MAX
        assert _spawn_with_pid(proc.pid + slots), "could not get the colliding pid (a busy host?)"
        assert probe.ancestry(proc.pid) is None, "the slot still names the older process"
        go.touch()
        row = row_for(rows, mark, "netcat", lambda r: tag in r["cmdline"])
    finally:
        pid_max.write_text(saved)
        proc.kill()
        proc.wait(timeout=10)
    parent = json.loads(row["ancestors"])[0]
    assert parent["pid"] == proc.pid == row["parent"]
    assert str(script) in parent["cmdline"] and row["parent_cmdline"] == parent["cmdline"]


def test_containers_started_within_a_second_are_each_named_by_their_cgroup_id() -> None:
    """The id -> path map is walked again for every new id: the second of two containers
    started in the same second is named even after its processes are gone."""
    need(None if os.geteuid() == 0 else "needs root to create cgroups")
    root = v2_root()
    need(None if root is not None else "no cgroup v2 hierarchy mounted")
    class Counting(CgroupResolver):
        walks = 0

        def _scan(self) -> None:
            self.walks += 1
            super()._scan()

    resolver = Counting()
    made = []
    try:
        for _ in range(2):
            container = uuid.uuid4().hex + uuid.uuid4().hex
            cgroup = root / "system.slice" / f"docker-{container}.scope"
            cgroup.mkdir(parents=True)
            made.append(cgroup)
            assert resolver.path_of_id(cgroup.stat().st_ino) == f"/system.slice/docker-{container}.scope"
        assert resolver.walks == 2
        # An id no walk finds is not walked for again at once (a storm from a gone cgroup).
        assert resolver.path_of_id(1 << 62) == "" and resolver.path_of_id(1 << 62) == ""
        assert resolver.walks == 3
    finally:
        for cgroup in made:
            cgroup.rmdir()


def test_argv_conditioned_entries_count_only_their_subcommands(sensor: Sensor, rows: Collector) -> None:
    """openssl is a network utility as s_client or s_server only; ip is a discovery tool.
    The kernel forwards every openssl by name: user space drops `openssl version`."""
    tag = uuid.uuid4().hex[:10]
    mark = rows.mark()
    subprocess.run(["openssl", "version", "-a", tag], capture_output=True, timeout=10)
    subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{free_port()}", "-servername", tag],
                   capture_output=True, stdin=subprocess.DEVNULL, timeout=10)
    subprocess.run(["ip", "-br", "link", "show", "lo"], capture_output=True, timeout=10)
    client = row_for(rows, mark, "openssl", lambda r: tag in r["cmdline"])
    assert client["cmdline"].startswith("openssl s_client") and client["category"] == "remote_shell"
    assert row_for(rows, mark, "ip", lambda r: r["cmdline"] == "ip -br link show lo")["category"] == "discovery"
    assert not [r for r in rows.since(mark) if r["utility"] == "openssl" and "version" in r["cmdline"]]
