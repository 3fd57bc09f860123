"""Which script an interpreter runs, however its command line hides the place.

An ancestor's "script" is found once, when its row is made, so that the packs compare
it with LIKE instead of running a regex over every ancestor of every row in every
query. The ways a script's place is given (docs/threat-model.md, "Scripts that hide
their place"):

    sh /tmp/x.sh, python3 -u ./p.py     the first word after the options, joined to the
                                        interpreter's cwd when relative (and there)
    sh -c '/tmp/x.sh arg'               the command string's first word, as written
    bash -c 'cd /tmp; . ./x.sh'         the file the string sources (`.` or `source`)
    bash /dev/fd/3 3</tmp/x.sh          the file behind the fd, while the interpreter lives
    bash < /tmp/x.sh                    stdin, when it is a file (the interpreter has no
                                        script word and reads its commands from there)
    cat /tmp/x.sh | sh, bash <(cat x)   a pipe: the file its writer read, the writer being
                                        the sibling forked just before (`piped`, from the
                                        kernel's map: it has usually exited)

What stays hidden: a script expanded into the command string (`sh -c "$(cat x)"`: the
string holds its text, not its place).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from osquery_netutil.catalog import INTERPRETERS, MULTICALL, SHELLS, VERSIONED
from osquery_netutil.events.procfs import ProcView, absolute
from osquery_netutil.locations import WRITABLE_DIRS

_NAMES = "|".join(sorted({*(re.escape(n) for n in INTERPRETERS if not n.startswith(tuple(VERSIONED))), *MULTICALL,
                          *(f"{re.escape(n)}[0-9.]*" for n in VERSIONED)}, key=lambda n: (-len(n), n)))
_INTERPRETED = re.compile(rf"^[^ ]*\b(?:{_NAMES}) +((?:-[^ ]+ +)*)([^ -][^ ]*)")
# No script word at all: the interpreter reads its commands from stdin (bash, sh -i, python3 -).
_READS_STDIN = re.compile(rf"^[^ ]*\b(?:{_NAMES})(?: +-[^ ]*)*$")
# Options after which the first word is a command string, code or a module, not a file:
# sh -c and bash -xc, python3 -c and -m, perl and ruby -e or -E, node -e or -p, php -r.
_NOT_A_FILE = re.compile(r"(?:^| )-(?:[a-zA-Z]*c|[eEmpr]) ")
_SHELL_NOT_A_FILE = re.compile(r"(?:^| )-[a-zA-Z]*c ")   # a shell's -e is errexit
_SHELLS = frozenset({*SHELLS, *MULTICALL})
# A file a shell's command string sources, where a command starts: `. f`, `x; source f`.
_SOURCED = re.compile(r"(?:^|[;&|({]\s*)(?:\.|source)\s+([^\s;&|)}]+)")
_FD_PATH = re.compile(r"^/(?:dev|proc/self)/fd/([0-9]+)$|^/dev/std(in)$")

Fd = Callable[[int], str]   # what the interpreter's fd n is open on ('' when gone)
# The file the writer of the interpreter's pipe read ('' when unknown); True: the pipe is a
# process substitution's (its writer may be the interpreter's own child).
Piped = Callable[[bool], str]


def with_script(node: dict[str, Any], cwd: str = "", fd: Fd | None = None, piped: Piped | None = None) -> dict[str, Any]:
    """node (an ancestor: pid, path, cmdline) with "script" added when it is an interpreter
    running one. cwd, fd and piped are the interpreter's, while it lives (a fixture has none)."""
    line = str(node.get("cmdline") or "")
    found = _INTERPRETED.match(line)
    if found is None:
        if fd is not None and _READS_STDIN.match(line):
            stdin = fd(0)
            if stdin.startswith("/") and not stdin.startswith("/dev/") and not stdin.endswith(" (deleted)"):
                return {**node, "script": stdin}   # (a deleted temp file is a heredoc: bash < 5.1, zsh, ksh)
            fed = piped(False) if piped is not None and stdin.startswith("pipe:") else ""
            if fed:
                return {**node, "script": fed}
        return node
    options, script = found.groups()
    shell = os.path.basename(line.split(" ", 1)[0]) in _SHELLS
    if not (_SHELL_NOT_A_FILE if shell else _NOT_A_FILE).search(options):
        return {**node, "script": _behind_fd(_placed(script, cwd, node.get("pid")), fd, piped)}
    sourced = [_placed(m.group(1), cwd, node.get("pid")) for m in _SOURCED.finditer(line[found.start(2):]) if m.group(1)[0] not in "~$'\"`"]
    if sourced:   # the first in a writable directory, else the first (. /etc/profile; . /tmp/x.sh)
        return {**node, "script": next((p for p in sourced if p.startswith(WRITABLE_DIRS)), sourced[0])}
    return {**node, "script": script}


def _placed(script: str, cwd: str, pid: Any = None) -> str:
    """A relative script joined to the interpreter's cwd, when it is there: an interpreter
    that cd'd before its cwd was read (`cd /tmp/w && exec sh x.sh`, whose x.sh does
    `cd /`) would otherwise be given a place it never had. Left relative then: its place
    is unknown, which the packs count as a relative path."""
    placed = absolute(script, cwd)
    if placed == script:
        return script
    there = ProcView(pid).sees(placed) if isinstance(pid, int) else placed
    return placed if os.path.exists(there) else script


def _behind_fd(script: str, fd: Fd | None, piped: Piped | None) -> str:
    """The file an fd path stands for (`bash /dev/fd/3`), or its pipe's writer read
    (`bash <(cat x)`), when known; else script."""
    found = _FD_PATH.match(script)
    if found is None or fd is None:
        return script
    target = fd(0 if found.group(2) else int(found.group(1)))
    if target.startswith("/"):
        return target
    fed = piped(True) if piped is not None and target.startswith("pipe:") else ""
    return fed or script
