"""Fixtures for tests that need the real kernel probe.

Such tests skip with the reason where root or eBPF is missing, except in CI (CI=true),
where a skip would hide a broken set-up: there they fail instead. Every test that uses
the probe or the sensor runs in both probe modes, btf and tracepoint: each is forced, so
that a btf mode that refuses itself fails its tests instead of passing as tracepoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from osquery_netutil.catalog import Catalog
from osquery_netutil.events.containers import v2_root
from osquery_netutil.kernel.preflight import ProbeError, preflight
from osquery_netutil.kernel.probe import Probe
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.store.store import Store

from testkit.support import Collector

BUILD_EXT = Path(__file__).resolve().parent.parent / "scripts" / "build_ext.py"


def need(reason: str | None) -> None:
    """Skip (or, in CI, fail) when reason says what is missing."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test, but: {reason}", pytrace=False)
    pytest.skip(reason)


def probe_unavailable() -> str | None:
    try:
        preflight()
    except ProbeError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="session")
def collector() -> Collector:
    return Collector()


@pytest.fixture(scope="session", params=("btf", "tracepoint"))
def probe_mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def probe(catalog: Catalog, collector: Collector, probe_mode: str) -> Iterator[Probe]:
    """One probe attached per mode for the whole session (compiling it takes about a second)."""
    need(probe_unavailable())
    p = Probe(catalog.basenames(), collector.add, mode=probe_mode)
    p.start()
    assert p.mode == probe_mode
    yield p
    p.stop()
    assert p.callback_errors == 0, p.last_callback_error


@pytest.fixture(scope="module")
def rows() -> Collector:
    return Collector()


@pytest.fixture(scope="module")
def sensor(catalog: Catalog, rows: Collector, tmp_path_factory: pytest.TempPathFactory, probe_mode: str) -> Iterator[Sensor]:
    """The whole pipeline (probe, enrichment, store) for one test module; rows also go to
    `rows`. Per module, so that it is gone when the load tests run their own extension."""
    need(probe_unavailable())
    store = Store(tmp_path_factory.mktemp("store") / "events.db")
    s = Sensor(catalog, store, on_row=rows.add, probe_mode=probe_mode)
    s.start()
    assert s.status()["probe_mode"] == probe_mode
    yield s
    s.stop()
    store.close()
    assert s.row_errors == 0, s.last_row_error


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A private (0700) directory, as the store and other trusted files require."""
    tmp_path.chmod(0o700)
    return tmp_path


@pytest.fixture(scope="session")
def ext_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The .ext file `make ext` builds, built here from the installed packages."""
    out = tmp_path_factory.mktemp("ext") / "osquery-netutil.ext"
    subprocess.run([sys.executable, str(BUILD_EXT), str(out)], check=True, capture_output=True)
    return str(out)


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh directory under /tmp (a writable prefix the probe forwards)."""
    return tmp_path_factory.mktemp("netutil", numbered=True)


@pytest.fixture
def sealed() -> Iterator[Path]:
    """A directory that is not writable for others and not in the writable list (for
    scripts and stand-in programs whose place must be no evidence)."""
    path = Path(tempfile.mkdtemp(prefix="netutil-sealed-", dir="/var/lib"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Container:
    id: str          # 64 hex, as docker names it
    cgroup: Path     # its v2 cgroup directory: write a pid to cgroup.procs to put it inside

    def entry(self, command: str) -> str:
        """A shell script body that moves itself into the container (cgroup, and pid and
        mount namespaces under `unshare`, as a docker-like runtime does) and runs command."""
        return f"#!/bin/sh\necho $$ > {self.cgroup}/cgroup.procs\nexec unshare --pid --mount --fork --mount-proc {command}\n"


@pytest.fixture
def container() -> Iterator[Container]:
    """A docker-like container's cgroup (system.slice/docker-<id>.scope), removed after."""
    root = v2_root()
    need(None if root is not None else "no cgroup v2 hierarchy mounted")
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    cgroup = root / "system.slice" / f"docker-{cid}.scope"
    cgroup.mkdir(parents=True)
    yield Container(cid, cgroup)
    cgroup.rmdir()
