"""The Debian package as an admin meets it, as root on this machine: `make deb` passes
lintian, `dpkg -i` installs it and adds the .ext to osquery's autoload list, the installed
.ext registers with osquery (the in-test extension manager) and serves a /tmp script's
nc, the unit passes systemd-analyze, its command line run as the unit runs it (its
capabilities only, no new privileges) writes result-log lines, a `logrotate -f` with the
shipped config in the middle of an exec storm loses none, and `dpkg -r` / `dpkg -P`
leave no file behind and extensions.load as it was, byte for byte. On a host with
fleetd (/opt/orbit), the fleetd unit is enabled and its command line registers the
extension on orbit's socket.

The tests run in file order on one installation (the module's fixture); the last one
removes it. They skip where root, dpkg or the tools are missing; CI must run them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid as uuidlib
from pathlib import Path
from typing import Callable, Iterator

import pytest

from osquery_netutil import __version__

from osquery_netutil.packs import formats
from osquery_netutil.packs.source import load
from osquery_netutil.schema import EXECS
from osquery_netutil.store.store import DEFAULT_PATH
from osquery_netutil.tables.plugins import OP_EQUALS

from tests.conftest import need, probe_unavailable
from testkit.manager import Manager
from testkit.support import write_executable
from tests.app.test_extension import stop, wait_state

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "osquery-netutil"
EXT = Path("/usr/lib/osquery-netutil/osquery-netutil.ext")
UNIT = Path("/lib/systemd/system/osquery-netutil.service")
FLEETD_UNIT = Path("/lib/systemd/system/osquery-netutil-fleetd.service")
ORBIT = Path("/opt/orbit")
LOAD = Path("/etc/osquery/extensions.load")
LOG = Path("/var/log/osquery-netutil/results.log")
# What `find` compares before installing and after purging: the trees a package touches.
TREES = ("/etc", "/usr", "/lib", "/opt", "/var/lib", "/var/log", "/var/osquery")
# A list an admin wrote, its last line without a newline: the hardest to give back exactly.
ADMIN_LOAD = b"# extensions of this host\n/opt/vendor/agent.ext"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to install a package"
    tools = ("dpkg-deb", "dpkg", "lintian", "logrotate", "systemd-analyze", "setpriv", "make")
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"{', '.join(absent)} not installed (scripts/setup.sh installs them)"
    if subprocess.run(["dpkg", "-s", PACKAGE], capture_output=True).returncode == 0:
        return f"{PACKAGE} is installed on this machine already: the test would replace it"
    return probe_unavailable()


def _files() -> set[str]:
    """Every path in TREES but the checkout's own (CI servers keep workspaces under /opt or
    /var/lib, and `make deb` writes dist/ there)."""
    found = subprocess.run(["find", *[t for t in TREES if os.path.exists(t)], "-xdev", "-path", str(ROOT), "-prune",
                            "-o", "-print"], capture_output=True, text=True)
    return set(found.stdout.splitlines())


def _unit(key: str, unit: Path = UNIT) -> str:
    (value,) = re.findall(rf"^{key}=(.*)$", unit.read_text(), re.M)
    return value


def _enabled(unit: Path) -> bool:
    """Enabled as systemctl enable (deb-systemd-helper) does it: the WantedBy= link."""
    return (Path("/etc/systemd/system/multi-user.target.wants") / unit.name).resolve() == unit.resolve()


@pytest.fixture(scope="module")
def installed() -> Iterator[dict[str, object]]:
    """make deb, then dpkg -i on a host whose osquery has an admin's extensions.load."""
    need(_missing())
    had_osquery_dir = Path("/etc/osquery").is_dir()
    original = LOAD.read_bytes() if LOAD.exists() else None
    Path("/etc/osquery").mkdir(exist_ok=True)
    LOAD.write_bytes(ADMIN_LOAD)
    before = _files()
    built = subprocess.run(["make", "-C", str(ROOT), "deb"], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    deb = ROOT / "dist" / f"{PACKAGE}_{__version__}_all.deb"
    try:
        run = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        yield {"deb": deb, "before": before}
    finally:
        subprocess.run(["dpkg", "-P", PACKAGE], capture_output=True)
        if original is not None:
            LOAD.write_bytes(original)
        else:
            LOAD.unlink(missing_ok=True)
            if not had_osquery_dir:
                Path("/etc/osquery").rmdir()


def test_lintian_reports_no_error_and_only_the_accepted_tags(installed: dict[str, object]) -> None:
    accepted = {line.split()[0] for line in (ROOT / "packaging" / "lintian-accepted.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    run = subprocess.run(["lintian", "--pedantic", "--display-info", str(installed["deb"])], capture_output=True, text=True)
    tags = re.findall(r"^([EWIPX]): \S+: (\S+)", run.stdout, re.M)
    assert not [t for level, t in tags if level == "E"], run.stdout
    assert {t for _, t in tags} <= accepted, run.stdout


def test_the_package_puts_the_ext_in_osquerys_autoload_list(installed: dict[str, object]) -> None:
    assert LOAD.read_bytes() == ADMIN_LOAD + f"\n{EXT}\n".encode()   # a line of its own, nothing else touched
    assert EXT.stat().st_mode & 0o7777 == 0o755 and EXT.stat().st_uid == 0
    assert Path("/usr/sbin/osquery-netutil").resolve() == EXT
    assert oct(Path("/etc/osquery-netutil/netutil.flags").stat().st_mode & 0o777) == "0o644"
    packs = Path("/usr/share/osquery-netutil/packs/generated")
    assert {p.name for p in packs.iterdir()} == set(formats.generated(load()))
    assert (packs / "netutil-pack.json").read_text() == (ROOT / "packs" / "generated" / "netutil-pack.json").read_text()
    conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE], capture_output=True, text=True).stdout
    assert "/etc/osquery-netutil/netutil.flags" in conffiles and "/etc/logrotate.d/osquery-netutil" in conffiles


def _serves_a_tmp_scripts_nc(manager: Manager, workdir: Path) -> None:
    """The extension registered with manager records a /tmp script's nc and serves it."""
    uuid = manager.wait_registered("netutil", timeout=30)
    assert wait_state(manager, uuid, {"running", "degraded", "failed"}, timeout=60)["state"] == "running"
    tag = uuidlib.uuid4().hex[:12]
    script = write_executable(workdir / f"dropper-{tag}.sh", f"#!/bin/sh\nnc -h {tag} 2>/dev/null; true\n")
    subprocess.run([str(script)], timeout=30)
    deadline, rows = time.monotonic() + 15, []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in manager.generate(uuid, EXECS, {"utility": [(OP_EQUALS, "netcat")]}) if tag in r["cmdline"]]
        time.sleep(0.2)
    (row,) = rows
    assert row["parent_path"] == str(script) and row["path"] == shutil.which("nc")


def test_the_installed_ext_registers_and_serves_a_tmp_scripts_nc(installed: dict[str, object], place: Path,
                                                                  workdir: Path) -> None:
    with Manager(place / "osquery.em") as manager:
        proc = manager.launch(str(EXT), "--store", str(place / "events.db"))
        try:
            _serves_a_tmp_scripts_nc(manager, workdir)
        finally:
            err = stop(proc, manager)
    assert proc.returncode == 0, err


def test_the_units_pass_systemd_analyze(installed: dict[str, object]) -> None:
    for unit in (UNIT, FLEETD_UNIT):
        run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "osquery-netutil" not in run.stderr, run.stderr
    # No fleetd here, so not the fleetd unit; watch unless osqueryd is installed.
    assert not _enabled(FLEETD_UNIT)
    assert _enabled(UNIT) == (shutil.which("osqueryd") is None and not Path("/opt/osquery/bin/osqueryd").exists())
    assert _unit("CapabilityBoundingSet", FLEETD_UNIT) == _unit("CapabilityBoundingSet")


def _service(place: Path, caps: str) -> subprocess.Popen:
    """The unit's ExecStart, as systemd runs it: its capabilities only, no new privileges,
    its environment; only the store is a test one (the command line wins over the flag file)."""
    Path("/run/osquery-netutil").mkdir(exist_ok=True)   # RuntimeDirectory=
    env = dict(os.environ, **dict([_unit("Environment").split("=", 1)]))
    command = ["setpriv", f"--bounding-set=-all,{caps}", "--no-new-privs", "--",
               *shlex.split(_unit("ExecStart")), "--store", str(place / "events.db")]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def _started(service: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = service.stderr.readline()
        if "watching execs" in line or not line:
            assert line, f"the service stopped: {service.wait()}"
            return
    raise AssertionError("the service did not attach its probe within 60 s")


def _lines(*paths: Path) -> list[dict]:
    return [json.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]


def test_the_service_writes_result_lines_and_a_rotation_loses_none(installed: dict[str, object], place: Path,
                                                                    workdir: Path) -> None:
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in _unit("CapabilityBoundingSet").split())
    assert _unit("NoNewPrivileges") == "yes" and "sys_admin" not in caps
    for old in LOG.parent.glob("results.log*"):
        old.unlink()
    service = _service(place, caps)
    try:
        _started(service)
        assert int(Path("/run/osquery-netutil/watch.pid").read_text()) == service.pid
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # Execs until told to stop: the rotation happens in the middle of the storm.
        storm = write_executable(workdir / "storm.sh", "#!/bin/sh\n"
                                 f"cd {workdir} && timeout 2 nc -l 127.0.0.1 {port} &\n"   # lives long enough to read its cwd
                                 f"i=0; while [ ! -e {workdir}/stop ] && [ $i -lt 20000 ]; do nc -z 127.0.0.1 9 2>/dev/null; i=$((i+1)); done\n"
                                 f"echo $i > {workdir}/count; wait\n")

        def storm_lines(*paths: Path) -> list[dict]:
            return [line for line in _lines(*(paths or (LOG.with_name("results.log.1"), LOG)))
                    if line["name"] == "pack_netutil_netutil_every_execution" and str(storm) in line["columns"]["chain"]]

        def wait(enough: Callable[[], bool], seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while not enough() and time.monotonic() < deadline:
                time.sleep(0.1)

        running = subprocess.Popen([str(storm)])
        wait(lambda: len(storm_lines(LOG)) >= 50, 60)
        rotate = subprocess.run(["logrotate", "-f", "-s", str(place / "logrotate.state"), "/etc/logrotate.d/osquery-netutil"],
                                capture_output=True, text=True, timeout=60)
        assert rotate.returncode == 0, rotate.stderr
        wait(lambda: len(storm_lines(LOG)) >= 50, 60)   # reopened: the new file fills
        (workdir / "stop").touch()
        assert running.wait(timeout=120) == 0
        count = int((workdir / "count").read_text())
        wait(lambda: len(storm_lines()) >= count + 1, 90)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
    found = storm_lines()
    assert len(found) == count + 1 and len({line["columns"]["eid"] for line in found}) == count + 1   # none lost, none twice
    rotated, reopened = storm_lines(LOG.with_name("results.log.1")), storm_lines(LOG)
    assert len(rotated) >= 50 and len(reopened) >= 50, "the rotation was not in the middle of the storm"
    print(f"\n{count} execs in the storm: {len(rotated)} lines before the rotation, {len(reopened)} after, none lost")
    assert set(found[0]) == {"name", "hostIdentifier", "calendarTime", "unixTime", "epoch", "counter", "numerics",
                             "columns", "action"}   # osqueryd's filesystem logger's fields
    (listener,) = [line["columns"] for line in found if " -l " in line["columns"]["cmdline"]]
    assert listener["cwd"] == str(workdir)   # CAP_SYS_PTRACE: /proc/PID/cwd of a process with all capabilities
    assert "[pid" not in listener["chain"].split(str(storm))[-1]
    assert oct(LOG.stat().st_mode & 0o777) == "0o640" and not Path("/run/osquery-netutil/watch.pid").exists()


def test_remove_gives_back_extensions_load_and_purge_leaves_nothing(installed: dict[str, object], place: Path) -> None:
    run = subprocess.run(["dpkg", "-r", PACKAGE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert LOAD.read_bytes() == ADMIN_LOAD
    assert Path("/etc/osquery-netutil/netutil.flags").exists()   # a conffile stays until purge
    run = subprocess.run(["dpkg", "-P", PACKAGE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert _files() == installed["before"]
    assert LOAD.read_bytes() == ADMIN_LOAD


def test_purge_removes_the_store_only_when_asked(installed: dict[str, object], place: Path) -> None:
    """The package's own postrm, on a store of its own (the real one, if any, untouched)."""
    subprocess.run(["dpkg-deb", "-e", str(installed["deb"]), str(place / "DEBIAN")], check=True)
    store = place / "var-osquery" / "netutil_events.db"
    store.parent.mkdir()
    postrm = (place / "DEBIAN" / "postrm").read_text()
    assert postrm.count(f"STORE={DEFAULT_PATH}\n") == 1
    script = place / "postrm"
    script.write_text(postrm.replace(f"STORE={DEFAULT_PATH}\n", f"STORE={store}\n")
                      .replace("/etc/osquery-netutil", str(place / "etc")))
    (place / "etc").mkdir()
    for name in ("", "-wal", ".judged"):
        store.with_name(store.name + name).write_bytes(b"evidence")
    kept = subprocess.run(["sh", str(script), "purge"], capture_output=True, text=True)
    assert kept.returncode == 0 and store.exists() and f"rm {store}*" in kept.stderr
    (place / "etc").mkdir(exist_ok=True)
    (place / "etc" / "purge-store").touch()
    asked = subprocess.run(["sh", str(script), "purge"], capture_output=True, text=True)
    assert asked.returncode == 0, asked.stderr
    assert list(store.parent.iterdir()) == [] and not (place / "etc").exists()


def test_on_a_fleetd_host_the_extension_registers_with_orbits_osqueryd(installed: dict[str, object], place: Path,
                                                                     workdir: Path) -> None:
    """Where orbit is installed, the package enables the fleetd unit (not watch), and its
    command line, run with the unit's capabilities only, registers the tables on orbit's
    extension socket, serves a /tmp script's nc, stays when osqueryd goes (to register with
    the next one) and leaves on SIGTERM."""
    if ORBIT.exists():
        pytest.skip("fleetd is installed on this machine: the test would take over orbit's extension socket")
    policy = Path("/usr/sbin/policy-rc.d")   # where systemd runs, postinst must not start the real unit now
    made_policy = not policy.exists()
    ORBIT.mkdir()
    try:
        if made_policy:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        run = subprocess.run(["dpkg", "-i", str(installed["deb"])], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and "fleetd is installed" in run.stderr, run.stdout + run.stderr
        assert _enabled(FLEETD_UNIT) and not _enabled(UNIT)
        assert _unit("Restart", FLEETD_UNIT) == "always" and _unit("ConditionPathExists", FLEETD_UNIT) == str(ORBIT)
        caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in _unit("CapabilityBoundingSet", FLEETD_UNIT).split())
        with Manager(ORBIT / "orbit-osquery.em") as manager:
            command = ["setpriv", f"--bounding-set=-all,{caps}", "--no-new-privs", "--",
                       *shlex.split(_unit("ExecStart", FLEETD_UNIT)), "--store", str(place / "events.db")]
            proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
            try:
                _serves_a_tmp_scripts_nc(manager, workdir)
                manager.stop()   # orbit restarting osqueryd: the extension stays (--reconnect) ...
                deadline = time.monotonic() + 15
                while list(ORBIT.glob("orbit-osquery.em.*")) and time.monotonic() < deadline:
                    time.sleep(0.2)   # until it noticed (its pings failed) and closed its socket
                assert proc.poll() is None and not list(ORBIT.glob("orbit-osquery.em.*"))
                proc.terminate()   # ... until systemd stops the unit
                assert proc.wait(timeout=30) == 0
            finally:
                proc.kill()
                err = proc.stderr.read()
        assert "registering again when it is back" in err, err
    finally:
        subprocess.run(["dpkg", "-P", PACKAGE], capture_output=True, timeout=300)
        shutil.rmtree(ORBIT)
        if made_policy:
            policy.unlink(missing_ok=True)
