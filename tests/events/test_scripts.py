"""The script an interpreter runs, from its command line, cwd and fds (no kernel needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from osquery_netutil.events.scripts import with_script
from osquery_netutil.events.stdio import kind

FDS = {0: "/tmp/w/stdin.sh", 3: "/var/tmp/fd3.sh", 63: "pipe:[4242]"}


def script(cmdline: str, cwd: str = "/tmp/w", fds: dict[int, str] | None = None) -> str | None:
    table = FDS if fds is None else fds
    return with_script({"pid": os.getpid(), "path": "/usr/bin/bash", "cmdline": cmdline}, cwd, lambda n: table.get(n, "")).get("script")


@pytest.fixture
def cwd(tmp_path: Path) -> str:
    """The interpreter's cwd, holding x.sh and p.py (a relative script is placed only where it is)."""
    for name in ("x.sh", "p.py"):
        (tmp_path / name).write_text("")
    return str(tmp_path)


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("sh /tmp/x.sh", "/tmp/x.sh"),
    ("sh -c /tmp/x.sh arg", "/tmp/x.sh"),                      # a command string's first word, as written
    ("bash -c . /dev/shm/x.sh", "/dev/shm/x.sh"),              # sourced
    ("bash -c cd /opt; source ./x.sh", "./x.sh"),              # sourced, not where the cwd says: left relative
    ("bash -c . /etc/profile; . /tmp/x.sh", "/tmp/x.sh"),      # the first in a writable directory
    ("bash -c source ~/.bashrc", "source"),                    # a word the shell expands: not taken
    ("sh /dev/stdin", "/tmp/w/stdin.sh"),                      # /dev/stdin is fd 0
    ("bash -c echo hi && . /var/tmp/y", "/var/tmp/y"),
    ("bash /dev/fd/3", "/var/tmp/fd3.sh"),                     # the file behind the fd
    ("bash /dev/fd/63", "/dev/fd/63"),                         # a pipe: the place stays hidden
    ("bash", "/tmp/w/stdin.sh"),                               # no script word: stdin
    ("sh -i", "/tmp/w/stdin.sh"),
    ("python3 -", "/tmp/w/stdin.sh"),
    ("/usr/sbin/sshd -D", None),
    ("sh -c echo .", "echo"),                                  # `.` as an argument sources nothing
    ("perl -e print", "print"),
])
def test_the_script_of_an_interpreter(cmdline: str, expected: str | None) -> None:
    assert script(cmdline) == expected


@pytest.mark.parametrize(("cmdline", "name"), [("bash -x x.sh arg", "x.sh"), ("python3 -u ./p.py", "p.py")])
def test_a_relative_script_is_joined_to_the_cwd_where_it_is(cwd: str, cmdline: str, name: str) -> None:
    assert script(cmdline, cwd) == f"{cwd}/{name}"
    assert script(cmdline, "/") == cmdline.split()[-2 if cmdline.endswith(" arg") else -1]   # not there: left relative


@pytest.mark.parametrize("stdin", ["/dev/pts/0", "/dev/null", "pipe:[12]", "socket:[3]", "", "/tmp/sh-thd.1234 (deleted)"])
def test_a_terminal_a_pipe_or_nothing_on_stdin_is_no_script(stdin: str) -> None:
    assert script("bash", fds={0: stdin}) is None


def test_a_fixture_without_fds_reads_none() -> None:
    assert with_script({"cmdline": "bash"}).get("script") is None
    assert with_script({"cmdline": "bash /dev/fd/3"})["script"] == "/dev/fd/3"


@pytest.mark.parametrize(("target", "mode", "expected"), [
    ("pipe:[7]", stat.S_IFIFO, "pipe"),
    ("socket:[7]", stat.S_IFSOCK, "socket"),
    ("/dev/null", stat.S_IFCHR, "null"),
    ("/dev/pts/3", stat.S_IFCHR, "tty:/dev/pts/3"),
    ("/tmp/f", stat.S_IFIFO, "fifo:/tmp/f"),
    ("/var/log/x.log", stat.S_IFREG, "file:/var/log/x.log"),
    ("anon_inode:[eventfd]", None, "other:anon_inode:[eventfd]"),
    ("", None, ""),
])
def test_the_kind_of_a_stream(target: str, mode: int | None, expected: str) -> None:
    assert kind(target, mode) == expected


def test_a_real_fifo_and_pipe_are_told_apart(tmp_path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    assert kind(str(fifo), os.stat(fifo).st_mode) == f"fifo:{fifo}"
    r, w = os.pipe()
    try:
        assert kind(os.readlink(f"/proc/self/fd/{r}"), os.fstat(r).st_mode) == "pipe"
    finally:
        os.close(r)
        os.close(w)


def test_a_pipe_is_followed_to_the_file_its_writer_read() -> None:
    """cat /tmp/x.sh | sh (stdin) and bash <(cat /tmp/x.sh) (an fd): the writer's file;
    only the second may be the interpreter's own child."""
    asked: list[bool] = []

    def piped(substituted: bool) -> str:
        asked.append(substituted)
        return "/tmp/w/fed.sh"
    fds = {0: "pipe:[9]", 63: "pipe:[10]"}
    node = {"pid": 9, "path": "/usr/bin/bash"}
    assert with_script({**node, "cmdline": "bash"}, "/", fds.get, piped)["script"] == "/tmp/w/fed.sh"
    assert with_script({**node, "cmdline": "bash /dev/fd/63"}, "/", fds.get, piped)["script"] == "/tmp/w/fed.sh"
    assert asked == [False, True]
    assert "script" not in with_script({**node, "cmdline": "bash"}, "/", fds.get, lambda _: "")   # no writer found
