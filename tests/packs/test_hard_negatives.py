"""Tools whose own work looks like an attack from a writable directory, run for real under
the probe (both modes): quiet in their true shape, and each with a mimic (the same
directory under a web server, or the shape with a part changed) that still fires. The
remote addresses stay in empty network namespaces (`unshare -n`); listeners are loopback.
The servers and the runtime are copies of dash under their names in a directory no one
else can write, which is what the packs can tell apart: a name in the chain."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from osquery_netutil.events.sensor import Sensor

from tests.conftest import Container
from tests.packs.test_detections import detections
from tests.packs.test_evasions import stored
from testkit.support import write_executable

pytestmark = pytest.mark.probe


def named_shell(directory: Path, name: str) -> Path:
    """dash under another name: a stand-in for a server or runtime process in the chain."""
    path = directory / name
    shutil.copy("/bin/dash", path)
    return path


def venv_pip(workdir: Path, tag: str) -> Path:
    """A virtualenv under /tmp (its python a symlink, as venv makes it) whose pip installs
    from git over ssh: pip runs git, git runs ssh ... git-upload-pack."""
    bin_dir = workdir / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    return write_executable(bin_dir / "pip", (
        f"#!{bin_dir / 'python3'}\n"
        "import subprocess\n"
        f"subprocess.run(['git', 'ls-remote', 'ssh://git@203.0.113.5/org/{tag}.git'], capture_output=True, timeout=20)\n"))


def test_pip_from_git_over_ssh_in_a_tmp_virtualenv_is_quiet_but_not_under_a_web_server(
        sensor: Sensor, workdir: Path, sealed: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    pip = venv_pip(workdir, tag)
    subprocess.run(["unshare", "-n", str(pip)], timeout=60)
    (row,) = stored(sensor, tag)
    assert row["utility"] == "ssh" and row["parent_path"] == "/usr/bin/git" and f"git-upload-pack '/org/{tag}.git'" in row["cmdline"]
    assert detections(sensor, "netutil_host_suspicious_location", tag, timeout=2) == []
    # The mimic: the same venv's pip, run by a web server's child.
    mimic = uuid.uuid4().hex[:10]
    pip = venv_pip(workdir / "m", mimic)
    subprocess.run([str(named_shell(sealed, "apache2")), "-c", f"sh -c 'unshare -n {pip}'; true"], timeout=60)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", mimic)
    assert hit["suspicious_path"] == str(pip)


def test_a_checkouts_health_check_under_tmp_is_quiet_but_not_under_a_web_server(
        sensor: Sensor, workdir: Path, sealed: Path) -> None:
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        tag = uuid.uuid4().hex[:10]
        (workdir / "tests").mkdir()
        write_executable(workdir / "tests" / "health.sh", f"#!/bin/sh\ncurl -fsS -o /dev/null http://127.0.0.1:{port}/{tag}\n")
        subprocess.run(["/bin/sh", "-c", f"cd {workdir} && ./tests/health.sh"], timeout=30)
        (row,) = stored(sensor, tag)
        assert row["cwd"] == str(workdir)
        assert detections(sensor, "netutil_host_suspicious_location", tag, timeout=2) == []
        mimic = uuid.uuid4().hex[:10]
        write_executable(workdir / "tests" / "m.sh", f"#!/bin/sh\ncurl -fsS -o /dev/null http://127.0.0.1:{port}/{mimic}\n")
        subprocess.run([str(named_shell(sealed, "nginx")), "-c", f"cd {workdir} && ./tests/m.sh; true"], timeout=30)
        (hit,) = detections(sensor, "netutil_host_suspicious_location", mimic)
        assert hit["suspicious_path"] == str(workdir / "tests" / "m.sh")
    finally:
        server.kill()
        server.wait(timeout=10)


def test_a_containers_socat_ambassador_entrypoint_is_quiet_but_not_when_a_service_starts_it(
        sensor: Sensor, sealed: Path, container: Container) -> None:
    shim = named_shell(sealed, "containerd-shim-runc-v2")
    nginx = named_shell(sealed, "nginx")

    def relay(launcher: list[str]) -> str:
        """socat relaying a loopback port, a child of launcher, in the container's cgroup."""
        port = 20000 + int(uuid.uuid4().hex[:4], 16) % 20000
        tag = str(port)
        command = (f"echo $$ > {container.cgroup}/cgroup.procs; "
                   f"socat TCP-LISTEN:{port},fork,bind=127.0.0.1 TCP:127.0.0.1:{port + 1} & sleep 1; kill $!; wait")
        subprocess.run([*launcher, command], timeout=30)
        return tag

    tag = relay([str(shim), "-c"])
    (row,) = stored(sensor, f"TCP-LISTEN:{tag},")
    assert row["container_id"] == container.id and row["parent_path"] == str(shim)
    assert detections(sensor, "netutil_tunnel", f"TCP-LISTEN:{tag},", timeout=2) == []
    mimic = relay([str(nginx), "-c", "sh -c \"$0\"; true"])
    (hit,) = detections(sensor, "netutil_tunnel", f"TCP-LISTEN:{mimic},")
    assert hit["how"] == "socat relaying a listener to a remote address"


@pytest.mark.parametrize(("session", "fires"), [("sshd-session", False), ("apache2", True)], ids=["over-ssh", "mimic-under-apache2"])
def test_ansibles_become_wrapper_in_var_tmp_is_quiet_only_over_ssh(sensor: Sensor, sealed: Path, session: str, fires: bool) -> None:
    """Ansible with become: over ssh, sudo runs `echo BECOME-SUCCESS-<id> ; python3
    /var/tmp/ansible-tmp-<time>-<pid>-<random>/AnsiballZ_<module>.py`, whose module runs
    the command (here curl). The same wrapper and directory under a web server fires."""
    tag = uuid.uuid4().hex[:10]
    digits = str(int(uuid.uuid4().hex[:12], 16))
    tmp = Path(f"/var/tmp/ansible-tmp-1764800000.{digits[:4]}-{os.getpid()}-{digits}")
    tmp.mkdir()
    try:
        wrapper = tmp / "AnsiballZ_command.py"
        wrapper.write_text(f"import subprocess\nsubprocess.run(['curl', '--version', 'http://example.test/{tag}'], capture_output=True)\n")
        become = f"echo BECOME-SUCCESS-{tag}x ; /usr/bin/python3 {wrapper}"
        sudo = named_shell(sealed, "sudo")
        subprocess.run([str(named_shell(sealed, session)), "-c", f"/bin/sh -c '{sudo} -c \"{become}\"'; true"],
                       capture_output=True, timeout=30)
        (row,) = stored(sensor, tag)
        assert str(wrapper) in row["ancestors"] and "BECOME-SUCCESS-" in row["ancestors"]
        hits = detections(sensor, "netutil_host_suspicious_location", tag, timeout=5 if fires else 2)
        assert [h["suspicious_path"] for h in hits] == ([str(wrapper)] if fires else [])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
