"""Every command, faced with a bad environment, says the cause and the fix in one line and
exits non-zero: no traceback, and no stored row lost by the failed run. Run as root and
as nobody, with what they read in a directory only root may enter (as a checkout in a
0700 home is)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from osquery_netutil.packs import source as packs
from osquery_netutil.catalog import Catalog
from osquery_netutil.app.cli import main
from osquery_netutil.store.store import Store

from tests.conftest import need
from testkit.rows import make_row

NOBODY = 65534
BUILD_EXT = Path(__file__).resolve().parents[2] / "scripts" / "build_ext.py"


@dataclass(frozen=True)
class Env:
    private: Path      # 0700, root's: nobody cannot enter it
    store: Path        # a store with rows, in private
    packs: Path        # a copy of the packs, in private
    readonly: Path     # a read-only filesystem
    full: Path         # a full filesystem
    not_sqlite: Path   # a file that is not a store


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    need(None if os.geteuid() == 0 else "needs root (mounts, and dropping to nobody)")
    Catalog.load()   # the interpreter's lazy imports, while root can still read them
    top = tmp_path_factory.mktemp("faults")
    private = top / "private"
    private.mkdir(mode=0o700)
    store = private / "events.db"
    with Store(store) as s:
        s.add_many(make_row(pid=100 + i, utility="netcat", cmdline=f"nc row{i}") for i in range(3))
    shutil.copytree(packs.PACKS_DIR, private / "packs")
    mounts = []
    for name, options in (("readonly", "ro,size=1m,mode=0700"), ("full", "size=64k,mode=0700")):
        (top / name).mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(top / name)], check=True)
        mounts.append(top / name)
    with open(top / "full" / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * (1 << 20))
    not_sqlite = private / "notes.db"
    not_sqlite.write_bytes(b"not a database, " * 64)
    not_sqlite.chmod(0o600)
    try:
        yield Env(private, store, private / "packs", top / "readonly", top / "full", not_sqlite)
    finally:
        for mount in mounts:
            subprocess.run(["umount", str(mount)], check=False)


def run(argv: list[str], uid: int) -> tuple[int, list[str]]:
    """main(argv) as uid: (exit status, stderr lines)."""
    err = io.StringIO()
    os.seteuid(uid)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    finally:
        os.seteuid(0)
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


# (id, as whom, argv from the environment, what the one line says, exit status)
CASES: list[tuple[str, int, Callable[[Env], list[str]], str, int]] = [
    ("watch-not-root", NOBODY, lambda e: ["watch", "--packs", str(e.packs), "--store", str(e.store)], "needs root: run as root", 2),
    ("record-not-root", NOBODY, lambda e: ["record", str(e.private / "out.jsonl")], "needs root: run as root", 2),
    ("query-unreadable-store", NOBODY, lambda e: ["query", "SELECT 1", "--store", str(e.store)], "Permission denied: run as root", 2),
    ("shell-unreadable-store", NOBODY, lambda e: ["shell", "--store", str(e.store)], "Permission denied: run as root", 2),
    ("replay-unreadable-store", NOBODY, lambda e: ["replay", "/dev/null", "--store", str(e.store)], "Permission denied: run as root", 2),
    ("packs-verify-unreadable", NOBODY, lambda e: ["packs", "verify", "--packs", str(e.packs)], "cannot read the pack directory (Permission denied): run as root", 1),
    ("packs-build-unreadable", NOBODY, lambda e: ["packs", "build", "--packs", str(e.packs)], "Permission denied: run as root", 2),
    ("watch-no-packs", 0, lambda e: ["watch", "--packs", str(e.private / "nopacks"), "--store", str(e.store)], "cannot read the pack directory (No such file or directory): check the path", 2),
    ("watch-readonly-store", 0, lambda e: ["watch", "--packs", str(e.packs), "--store", str(e.readonly / "x.db")], "Read-only file system): the filesystem is read-only", 2),
    ("replay-readonly-store", 0, lambda e: ["replay", "/dev/null", "--store", str(e.readonly / "x.db")], "Read-only file system): the filesystem is read-only", 2),
    ("record-readonly-output", 0, lambda e: ["record", str(e.readonly / "out.jsonl")], "Read-only file system: the filesystem is read-only", 2),
    ("watch-full-disk", 0, lambda e: ["watch", "--packs", str(e.packs), "--store", str(e.full / "x.db")], "the filesystem is full", 2),
    ("replay-full-disk", 0, lambda e: ["replay", "/dev/null", "--store", str(e.full / "x.db")], "the filesystem is full", 2),
    ("query-not-sqlite", 0, lambda e: ["query", "SELECT 1", "--store", str(e.not_sqlite)], "is not an osquery-netutil store", 2),
    ("shell-not-sqlite", 0, lambda e: ["shell", "--store", str(e.not_sqlite)], "is not an osquery-netutil store", 2),
]


@pytest.mark.parametrize(("uid", "argv", "says", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_environment_gives_one_line_with_the_cause_and_the_fix(env: Env, uid: int, argv: Callable[[Env], list[str]],
                                                                    says: str, status: int) -> None:
    before = env.not_sqlite.read_bytes()
    code, lines = run(argv(env), uid)
    assert code == status, lines
    assert len(lines) == 1 and says in lines[0], lines
    assert "Traceback" not in lines[0]
    # Nothing the failed run touched lost a row or a byte.
    with Store(env.store, readonly=True) as store:
        assert store.stats()[0] == 3
    assert env.not_sqlite.read_bytes() == before


def test_an_ext_built_for_a_missing_interpreter_is_refused_at_build(tmp_path: Path) -> None:
    run_ = subprocess.run([sys.executable, str(BUILD_EXT), str(tmp_path / "x.ext"), "--python", "/nonexistent/python3"],
                          capture_output=True, text=True, timeout=60)
    lines = run_.stderr.strip().splitlines()
    assert run_.returncode == 2 and len(lines) == 1 and "/nonexistent/python3 is not an executable interpreter" in lines[0]
    assert not (tmp_path / "x.ext").exists()
