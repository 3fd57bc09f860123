"""Content verdicts (btf mode): the kernel forwards each executable once until it is
judged, then only the ones judged utilities, until the file changes. A bare probe here,
whose callback gives the verdicts the way the sensor's enrichment does."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from osquery_netutil.catalog import Catalog
from osquery_netutil.kernel.probe import Probe
from osquery_netutil.kernel.records import F_MATCH_CONTENT, F_UNJUDGED, SIZES, ExecRecord

from tests.conftest import need, probe_unavailable

pytestmark = pytest.mark.probe


class Judge:
    """Gives every F_UNJUDGED image of `place` the verdict `utility`, and keeps its records."""

    def __init__(self, place: Path) -> None:
        self.place = str(place)
        self.utility = False
        self.probe: Probe | None = None
        self.seen: list[ExecRecord] = []

    def __call__(self, rec: ExecRecord) -> None:
        if not rec.filename.decode().startswith(self.place):
            return
        self.seen.append(rec)
        if rec.flags & F_UNJUDGED and self.probe is not None:
            self.probe.remember_verdict(rec, self.utility)

    def run(self, path: Path) -> list[ExecRecord]:
        """The records of one exec of path (none when the kernel kept it)."""
        mark = len(self.seen)
        subprocess.run([str(path)], capture_output=True, timeout=10)
        assert self.probe is not None
        time.sleep(0.2)
        self.probe.drain()
        return self.seen[mark:]


@pytest.fixture
def judged(catalog: Catalog) -> Iterator[tuple[Judge, Path]]:
    need(probe_unavailable())
    place = Path(tempfile.mkdtemp(prefix="netutil-sealed-", dir="/var/lib"))   # no path rule forwards it
    judge = Judge(place)
    probe = Probe(catalog.kernel_names(), judge, mode="btf", content_verdicts=True)
    probe.start()
    judge.probe = probe
    try:
        yield judge, place
    finally:
        probe.stop()
        shutil.rmtree(place)


def test_an_image_is_forwarded_until_judged_then_kept_in_the_kernel(judged: tuple[Judge, Path]) -> None:
    judge, place = judged
    tool = place / "helper"
    shutil.copy("/usr/bin/true", tool)
    (first,) = judge.run(tool)
    assert first.flags & F_UNJUDGED and first.ctime_ns == os.stat(tool).st_ctime_ns and first.image_sb
    assert judge.run(tool) == []               # judged no utility: one lookup in the kernel
    os.chmod(tool, 0o755)                      # a metadata change moves ctime: judged again
    (again,) = judge.run(tool)
    assert again.flags & F_UNJUDGED
    judge.utility = True
    shutil.copy("/usr/bin/id", tool)           # new content, same inode
    (rejudged,) = judge.run(tool)
    assert rejudged.flags & F_UNJUDGED
    (known,) = judge.run(tool)                 # judged a utility: forwarded every time
    assert known.flags & F_MATCH_CONTENT and not known.flags & F_UNJUDGED


def test_a_bare_probe_has_no_verdicts(catalog: Catalog) -> None:
    """Without content_verdicts (tools that attach a probe of their own), nothing changes:
    a file no name or path rule forwards is never forwarded."""
    need(probe_unavailable())
    place = Path(tempfile.mkdtemp(prefix="netutil-sealed-", dir="/var/lib"))
    judge = Judge(place)
    try:
        with Probe(catalog.kernel_names(), judge, mode="btf") as probe:
            judge.probe = probe
            shutil.copy("/usr/bin/true", place / "helper")
            assert judge.run(place / "helper") == []
    finally:
        shutil.rmtree(place)


def test_images_that_share_a_slot_take_turns(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """More images than slots: each is judged again when it comes back, none is lost."""
    need(probe_unavailable())
    monkeypatch.setitem(SIZES, "VERDICTS_MAX", 2)
    place = Path(tempfile.mkdtemp(prefix="netutil-sealed-", dir="/var/lib"))
    judge = Judge(place)
    try:
        with Probe(catalog.kernel_names(), judge, mode="btf", content_verdicts=True) as probe:
            judge.probe = probe
            tools = [place / f"tool-{i}" for i in range(6)]
            for tool in tools:
                shutil.copy("/usr/bin/true", tool)
                assert [r.flags & F_UNJUDGED for r in judge.run(tool)] == [F_UNJUDGED]
            assert judge.run(tools[-1]) == []   # the last judged holds its slot
            judge.utility = True
            again = [len(judge.run(tool)) for tool in tools[:-1]]
            assert sum(again) >= 3                # at least those pushed out of the 2 slots came back unjudged
    finally:
        shutil.rmtree(place)
