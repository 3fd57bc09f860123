"""An attacker who has read the README: the variants of the plain cases in
test_detections.py that hide the exec or its place, each run for real under the probe
(both modes) and judged by the packs. Every remote address stays inside an empty network
namespace (`unshare -n`); most of these only ask the utility for its help text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from osquery_netutil.events.sensor import Sensor
from osquery_netutil.host.database import Host
from osquery_netutil.tables.plugins import stored_tables

from tests.packs.test_detections import NC, detections
from testkit.support import write_executable

pytestmark = pytest.mark.probe
LOADER = "/lib64/ld-linux-x86-64.so.2"


def stored(sensor: Sensor, tag: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every row whose cmdline carries tag (what the table holds, not what fired), once
    there is one (or timeout passed)."""
    host = Host(stored_tables(lambda: sensor.store))
    deadline = time.monotonic() + timeout
    while True:
        sensor.store.flush()
        columns, rows = host.query(f"SELECT * FROM network_utility_execs WHERE cmdline LIKE '%{tag}%' ORDER BY eid")
        if rows or time.monotonic() > deadline:
            return [dict(zip(columns, r)) for r in rows]
        time.sleep(0.2)


@pytest.fixture
def shm() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="netutil-drop-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("wait", ["", "sleep 0.3; "], ids=["at-once", "after-a-wait"])
def test_a_renamed_shell_that_execs_the_utility_is_its_origin_and_not_relabelled(
        sensor: Sensor, shm: Path, wait: str) -> None:
    """A copy of dash in /dev/shm execs nc in its own pid: nc's chain holds no trace of it
    (a pid's earlier images are not ancestors), its origin does. The trampoline's own row
    is not made a 'renamed netcat' by reading /proc/PID/exe after the pid exec'd nc."""
    tag = uuid.uuid4().hex[:10]
    shutil.copy("/bin/dash", shm / "upd")
    subprocess.run([str(shm / "upd"), "-c", f"{wait}exec nc -h {tag} 2>/dev/null"], timeout=30)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    assert hit["suspicious_path"] == str(shm / "upd") and hit["reason"] == "writable directory"
    assert json.loads(hit["origin"])["path"] == str(shm / "upd")
    assert [(r["path"], r["matched_by"]) for r in stored(sensor, tag)] == [(shutil.which("nc"), "name")]


def test_a_chain_deeper_than_the_ancestors_kept_still_names_its_origin(sensor: Sensor, workdir: Path, sealed: Path) -> None:
    """Forty shells (each running a script no one else can write) between the /tmp script
    and nc: the chain stops at 32 levels, the origin does not."""
    tag = uuid.uuid4().hex[:10]
    step = write_executable(sealed / "step.sh", f'#!/bin/sh\nif [ "$1" -gt 0 ]; then sh {sealed}/step.sh $(($1 - 1)); '
                                                f'else nc -h {tag} 2>/dev/null; fi\ntrue\n')
    script = write_executable(workdir / "deep.sh", f"#!/bin/sh\nsh {step} 40\ntrue\n")
    subprocess.run([str(script)], timeout=60)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    (row,) = stored(sensor, tag)
    chain = json.loads(row["ancestors"])
    assert len(chain) == 32 and all(a["path"] != str(script) for a in chain)
    assert hit["suspicious_path"] == str(script) and hit["reason"] == "writable directory"


def test_a_relative_exec_does_not_launder_a_placed_origin(sensor: Sensor, shm: Path, sealed: Path) -> None:
    """/dev/shm/upd cds to a sealed directory and execs ./helper there (a relative path:
    a weak origin), which execs nc: the origin stays /dev/shm/upd."""
    tag = uuid.uuid4().hex[:10]
    shutil.copy("/bin/dash", shm / "upd")
    write_executable(sealed / "helper", f"#!/bin/sh\nsleep 0.2; exec nc -h {tag} 2>/dev/null\n")
    subprocess.run([str(shm / "upd"), "-c", f"cd {sealed} && exec ./helper"], timeout=30)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    assert json.loads(hit["origin"])["path"] == str(shm / "upd") and hit["suspicious_path"] == str(shm / "upd")


def test_an_origin_in_a_sealed_directory_is_no_evidence(sensor: Sensor, sealed: Path) -> None:
    """The negative: the same trampoline run from a directory no one else can write, and
    cd'd into by relative path, is an origin (weak) but not a suspicious one."""
    tag = uuid.uuid4().hex[:10]
    shutil.copy("/bin/dash", sealed / "upd")
    subprocess.run(["/bin/sh", "-c", f"cd {sealed} && exec ./upd -c 'sleep 0.2; exec nc -h {tag} 2>/dev/null'"], timeout=30)
    (row,) = stored(sensor, tag)
    assert json.loads(row["origin"])["path"] == str(sealed / "upd")
    assert detections(sensor, "netutil_host_suspicious_location", tag, timeout=1) == []


@pytest.mark.parametrize("options", ["", "--argv0 kworker", "--library-path /usr/lib --inhibit-cache"],
                         ids=["plain", "argv0", "options"])
def test_a_utility_run_through_the_dynamic_loader_is_a_row(sensor: Sensor, workdir: Path, options: str) -> None:
    tag = uuid.uuid4().hex[:10]
    script = write_executable(workdir / "ld.sh", f"#!/bin/sh\n{LOADER} {options} {NC} -h {tag} 2>/dev/null\n")
    subprocess.run([str(script)], timeout=30)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    assert (hit["utility"], hit["matched_by"], hit["path"]) == ("netcat", "loader", NC)
    (row,) = stored(sensor, tag)
    assert row["comm"] == "ld-linux-x86-64" and row["cmdline"].startswith(LOADER)


def test_the_loader_asked_what_a_utility_needs_is_no_row(sensor: Sensor, workdir: Path) -> None:
    """ldd (which runs the loader with LD_TRACE_LOADED_OBJECTS=1, or --list) and the
    loader's --list and --verify describe the file, never run it."""
    tag = uuid.uuid4().hex[:10]
    copy = workdir / f"nc-{tag}"   # the tag in the loader's argv
    shutil.copy(NC, copy)
    for argv in (["ldd", str(copy)], [LOADER, "--list", str(copy)], [LOADER, "--verify", str(copy)]):
        subprocess.run(argv, capture_output=True, timeout=30)
    subprocess.run([LOADER, str(copy), "-h", "ran"], capture_output=True, timeout=30)
    assert [r["cmdline"] for r in stored(sensor, tag)] == [f"{LOADER} {copy} -h ran"]


def test_a_renamed_copy_run_through_the_loader_is_found_by_content(sensor: Sensor, workdir: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    shutil.copy(NC, workdir / "updater")
    subprocess.run([LOADER, str(workdir / "updater"), "-h", tag], capture_output=True, timeout=30)
    (row,) = stored(sensor, tag)
    assert (row["utility"], row["matched_by"], row["path"]) == ("netcat", "loader", str(workdir / "updater"))


def test_execs_with_no_suspicious_origin_have_none(sensor: Sensor) -> None:
    tag = uuid.uuid4().hex[:10]
    subprocess.run(["/bin/sh", "-c", f"nc -h {tag} 2>/dev/null; true"], timeout=30)
    detections(sensor, "netutil_every_execution", tag)
    (row,) = stored(sensor, tag)
    assert row["origin"] == ""


def test_the_origin_is_kept_in_both_probe_modes(sensor: Sensor, shm: Path) -> None:
    """Its pid and time: the node of the exec that set it, as it was forwarded."""
    tag = uuid.uuid4().hex[:10]
    script = write_executable(shm / "o.sh", f"#!/bin/sh\nsleep 0.1; nc -h {tag} 2>/dev/null\n")
    proc = subprocess.Popen([str(script)])
    proc.wait(timeout=30)
    detections(sensor, "netutil_every_execution", tag)
    (row,) = stored(sensor, tag)
    origin = json.loads(row["origin"])
    assert origin["pid"] == proc.pid and origin["path"] == str(script) and os.getuid() == origin["uid"]
    assert abs(origin["time"] - row["time"]) <= 2


@pytest.mark.parametrize(("how", "name", "body"), [
    ("sh {dir}/x.sh", "x.sh", "exec nc -h {tag} 2>/dev/null\n"),
    ("cd {dir} && exec sh x.sh", "x.sh", "cd /; exec nc -h {tag} 2>/dev/null\n"),
    ("python3 -u {dir}/x.py", "x.py", "import os\nos.execvp('nc', ['nc', '-h', '{tag}'])\n"),
], ids=["sh-script", "relative-script-then-cd", "python-script"])
def test_a_script_handed_to_an_interpreter_is_an_origin(sensor: Sensor, workdir: Path, how: str, name: str, body: str) -> None:
    """The script's last act is to exec nc in the interpreter's own pid: no ancestor of nc
    ran the script. The interpreter's exec is the origin, its script argument the place
    (a relative one joined to the cwd the interpreter started in, though it cd'd since)."""
    tag = uuid.uuid4().hex[:10]
    script = workdir / name
    script.write_text(body.format(tag=tag))
    subprocess.run(["/bin/sh", "-c", how.format(dir=workdir)], capture_output=True, timeout=30)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    (row,) = stored(sensor, tag)
    assert all(str(workdir) not in a["path"] + (a.get("script") or "") for a in json.loads(row["ancestors"]))
    placed = ("script in a writable directory", str(script))
    if how.startswith("cd ") and json.loads(row["origin"])["script"] == name:
        # The interpreter's cd / came before its cwd was read (a loaded host): the place
        # is unknown, and the weak origin the kernel marked still fires, as a relative path.
        placed = ("relative path", name)
    assert (hit["reason"], hit["suspicious_path"]) == placed
    assert json.loads(row["origin"])["script"] == placed[1]


def test_a_renamed_copy_outside_the_writable_directories_is_found_by_content(
        sensor: Sensor, sealed: Path, probe_mode: str) -> None:
    """Root copies nc to a directory no path rule forwards, under a name the catalog does
    not know. btf mode judges every executable once by content (the kernel's verdicts);
    tracepoint mode reads no kernel structs, so it cannot, and says so in the README."""
    tag = uuid.uuid4().hex[:10]
    copy, benign = sealed / "sysupd", sealed / "sysinfo"
    shutil.copy(NC, copy)
    shutil.copy("/usr/bin/true", benign)
    for _ in range(2):   # the second exec of each: known to the kernel by then
        subprocess.run([str(copy), "-h", tag], capture_output=True, timeout=30)
        subprocess.run([str(benign), tag], capture_output=True, timeout=30)
    hits = detections(sensor, "netutil_renamed_utility", tag, timeout=10 if probe_mode == "btf" else 2)
    if probe_mode == "tracepoint":
        assert hits == []
        return
    assert [(h["path"], h["utility"], h["matched_by"]) for h in hits] == [(str(copy), "netcat", "content")] * 2
    assert [r["path"] for r in stored(sensor, tag)] == [str(copy)] * 2   # the benign copy is no row
    shutil.copy("/usr/bin/true", copy)   # new content under the judged name: judged again, no utility now
    subprocess.run([str(copy), f"{tag}-after"], capture_output=True, timeout=30)
    time.sleep(1)
    assert stored(sensor, f"{tag}-after", timeout=1) == []
