"""watch --log: result-log lines appended to a file that logrotate can rotate under it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from osquery_netutil.packs.resultlog import MODE, ResultLog


def test_lines_survive_a_rename_and_go_to_a_new_file_after_sighup(place: Path) -> None:
    path = place / "results.log"
    old_umask = os.umask(0o077)   # the unit's UMask
    try:
        log = ResultLog(path)
    finally:
        os.umask(old_umask)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        log.reopen_on_sighup()
        log.write({"name": "a", "columns": {"eid": "1"}})
        path.rename(place / "results.log.1")           # logrotate renames ...
        log.write({"name": "b", "columns": {"eid": "2"}})  # ... a line before its signal: in the renamed file
        os.kill(os.getpid(), signal.SIGHUP)             # ... then postrotate signals
        log.write({"name": "c", "columns": {"eid": "3"}})
        log.close()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert [json.loads(line)["name"] for line in (place / "results.log.1").read_text().splitlines()] == ["a", "b"]
    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == ["c"]
    assert (place / "results.log.1").stat().st_mode & 0o777 == MODE   # whatever the umask


def test_an_existing_log_is_appended_to_and_keeps_its_mode(place: Path) -> None:
    path = place / "results.log"
    path.write_text('{"name": "earlier"}\n')
    path.chmod(0o600)
    log = ResultLog(path)
    log.write({"name": "later"})
    log.close()
    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == ["earlier", "later"]
    assert path.stat().st_mode & 0o777 == 0o600
