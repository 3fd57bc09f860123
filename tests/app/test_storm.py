"""A storm of execs does not hide an attack: while a /tmp script runs 20,000 catalog execs,
ten unrelated suspicious execs run at random moments, and `watch` prints a detection for
each of them (it judges every stored row once, by eid, however far behind it falls)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Container, need, probe_unavailable
from testkit.support import tiny_elf, write_executable
from tests.packs.test_detections import MEMFD_SHELL, _named_shell

pytestmark = pytest.mark.probe

STORM = 20_000


def test_ten_suspicious_execs_in_a_storm_of_twenty_thousand_are_each_detected(tmp_path: Path, workdir: Path,
                                                                              container: Container) -> None:
    need(probe_unavailable())
    store, out, err = tmp_path / "events.db", tmp_path / "watch.out", tmp_path / "watch.err"
    watch = subprocess.Popen([sys.executable, "-m", "osquery_netutil", "watch", "--store", str(store),
                              "--format", "json", "--every", "1"], stdout=out.open("w"), stderr=err.open("w"))
    tag = uuid.uuid4().hex[:8]
    try:
        deadline = time.monotonic() + 60
        while "watching execs" not in err.read_text():
            assert watch.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        nc = write_executable(workdir / "nc", tiny_elf())   # exits at once: execs as fast as the kernel makes them
        storm = write_executable(workdir / "storm.sh", f"#!/bin/sh\ni=0\nwhile [ $i -lt {STORM} ]; do {nc} -z 127.0.0.1 $i; i=$((i+1)); done\n")
        shim, nginx = _named_shell(workdir, "containerd-shim-runc-v2"), _named_shell(workdir, "nginx")
        attacks: dict[str, tuple[str, list[str]]] = {}   # tag -> (detection, argv)
        for k in range(4):   # scripts in writable directories
            where = ("/dev/shm", "/var/tmp", "/tmp", "/dev/shm")[k]
            script = write_executable(Path(where) / f"netutil-storm-{tag}-{k}.sh", f"curl --version http://127.0.0.1/{tag}-w{k} >/dev/null\n")
            attacks[f"{tag}-w{k}"] = ("netutil_host_suspicious_location", ["sh", str(script)])
        for k in range(3):   # a public IP literal (no packet: an empty network namespace, and --version)
            attacks[f"{tag}-p{k}"] = ("netutil_public_ip_argument", ["unshare", "-n", "curl", "--version", f"http://8.8.4.4/{tag}-p{k}"])
        for k in range(2):   # a memfd shell
            attacks[f"{tag}-m{k}"] = ("netutil_host_suspicious_location", [sys.executable, "-c", MEMFD_SHELL, f"nc -h {tag}-m{k} 2>/dev/null; true"])
        body = write_executable(workdir / "body.sh", f"sh -c 'curl --version http://127.0.0.1/{tag}-c0 >/dev/null'\n")
        entry = write_executable(workdir / "entry.sh", container.entry(f"{shim} -c '{nginx} {body}'"))
        attacks[f"{tag}-c0"] = ("netutil_container_service_shell", [str(entry)])   # a container's web shell

        spawner = subprocess.Popen([str(storm)])
        started = time.monotonic()
        order = list(attacks.items())
        random.shuffle(order)
        moments = sorted(random.uniform(0.2, 4.0) for _ in order)
        def attack() -> None:
            for (name, (_, argv)), at in zip(order, moments):
                time.sleep(max(0.0, at - (time.monotonic() - started)))
                subprocess.run(argv, capture_output=True, timeout=30)
        attacker = threading.Thread(target=attack)
        attacker.start()
        attacker.join(timeout=120)
        assert spawner.wait(timeout=300) == 0

        # Until the ten are found and the whole storm has been judged (the backlog drained).
        found: dict[str, dict] = {}
        storm_rows = 0
        deadline = time.monotonic() + 240
        while (len(found) < len(attacks) or storm_rows < STORM) and time.monotonic() < deadline:
            time.sleep(1)
            # Whole lines only: watch may be writing the last one now.
            results = [json.loads(line) for line in out.read_text().split("\n")[:-1]]
            storm_rows = sum(1 for r in results if r["name"].endswith("netutil_every_execution"))
            for result in results:
                for name, (detection, _) in attacks.items():
                    if result["name"].endswith(detection) and name in result["columns"].get("cmdline", ""):
                        found.setdefault(name, result)
        missing = sorted(set(attacks) - set(found))
        assert not missing, f"not detected: {missing}; watch said: {err.read_text()[-2000:]}"
        delays = [r["unixTime"] - int(r["columns"]["time"]) for r in found.values()]
        print(f"\nstorm: {STORM:,} execs from {storm}, {len(attacks)} attacks all detected; worst detection delay {max(delays)} s, "
              f"median {sorted(delays)[len(delays) // 2]} s; every_execution lines {storm_rows:,}")
        assert storm_rows >= STORM, "the storm's own execs should all have been judged"
    finally:
        watch.send_signal(2)
        try:
            watch.wait(timeout=60)
        except subprocess.TimeoutExpired:
            watch.kill()
        subprocess.run(["sh", "-c", f"rm -f /dev/shm/netutil-storm-{tag}-* /var/tmp/netutil-storm-{tag}-* /tmp/netutil-storm-{tag}-*"])
