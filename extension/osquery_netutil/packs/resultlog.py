"""osqueryd's result-log lines, and `watch --log FILE`, which appends them to files as
osqueryd's filesystem logger does (osquery plugins/logger/filesystem_logger.cpp): the
differential lines to FILE (osqueryd.results.log), the snapshot lines to its sibling
(`results.log` -> `snapshots.log`, as osqueryd.snapshots.log), so that shippers that read
those files (Filebeat's osquery module, Fluent Bit, Splunk's forwarder) read these
unchanged.

A line is what osquery's serializeQueryLogItem writes (osquery/logger/logger.cpp and
osquery/core/query.cpp, read at osquery a5b14f63): compact JSON, keys in its order, every
column value a string (numerics false: osquery's CastVisitor, REAL with 15 significant
digits and ".0" when it has no point), `calendarTime` as asctime in UTC (the day padded
with a space), `unixTime`, `epoch` and `counter` JSON integers.

Rotation: logrotate renames the file, then its postrotate sends SIGHUP; the file is
reopened (created again) before the next line. Lines written between the rename and
the signal land in the renamed file, none is lost; each line is one write() to a file
opened O_APPEND, so a reader never sees half a line.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from osquery_netutil.packs.runner import Result

MODE = 0o640   # detections hold command lines: root and the adm group (the shipper) read them
EPOCH = 0      # osquery's --schedule_epoch default


def cast(value: Any) -> str:
    """A column value as osquery logs it with numerics off (castvariant.h's CastVisitor):
    NULL as '', a REAL with 15 significant digits and '.0' added when it has no point."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.15g}"
        return text if "." in text else text + ".0"
    return value if isinstance(value, str) else str(value)


def calendar_time(unix_time: float) -> str:
    """osquery's getAsciiTime(): asctime of the UTC time, then ' UTC' ('Thu Dec  3 18:19:40 2026 UTC')."""
    return time.asctime(time.gmtime(unix_time)) + " UTC"


def log_lines(result: Result, host_identifier: str) -> list[dict[str, Any]]:
    """osqueryd's lines for a result: one per row for "added"/"removed", one for a
    snapshot (with all its rows, none included)."""
    meta = {"name": result.name, "hostIdentifier": host_identifier, "calendarTime": calendar_time(result.unix_time),
            "unixTime": result.unix_time, "epoch": EPOCH, "counter": result.counter, "numerics": False}
    rows = [{k: cast(row[k]) for k in sorted(row)} for row in result.rows]
    if result.action == "snapshot":
        return [{"snapshot": rows, "action": "snapshot", **meta}]
    return [{**meta, "columns": row, "action": result.action} for row in rows]


def snapshots_path(path: Path) -> Path:
    """Where `--log path` puts the snapshot lines: results -> snapshots in the name, as
    osqueryd.results.log and osqueryd.snapshots.log; else NAME.snapshots.SUFFIX."""
    name = path.name
    return path.with_name(name.replace("results", "snapshots", 1) if "results" in name
                          else f"{path.stem}.snapshots{path.suffix}")


def dumps(line: dict[str, Any]) -> str:
    """A line as osquery writes it: compact JSON (non-ASCII escaped, so a line is always
    valid UTF-8, whatever bytes a command line held)."""
    return json.dumps(line, separators=(",", ":"))


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, MODE)
        os.fchmod(fd, MODE)   # the mode logrotate's `create` gives it too, whatever the umask
        return fd
    except FileExistsError:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


class ResultLog:
    """The results file and its snapshots sibling, both opened now (an OSError is raised
    here, not at the first detection). A FILE that is not a regular file (/dev/stdout, a
    FIFO) gets the snapshot lines too: it has no sibling to speak of."""

    def __init__(self, path: Path) -> None:
        self.paths = {"results": path}
        if not path.exists() or path.is_file():
            self.paths["snapshots"] = snapshots_path(path)
        self._fds = self._open_all()
        self._reopen = False

    def _open_all(self) -> dict[str, int]:
        """Every file opened, or none (those opened are closed again) and the OSError raised."""
        fds: dict[str, int] = {}
        try:
            for kind, where in self.paths.items():
                fds[kind] = _open(where)
        except OSError:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    def reopen_on_sighup(self) -> None:
        """From now on SIGHUP (logrotate's postrotate) reopens the files before the next line."""
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reopen", True))

    def write(self, line: dict[str, Any]) -> None:
        if self._reopen:   # both reopened, or both kept and retried at the next line
            fds = self._open_all()
            for fd in self._fds.values():
                os.close(fd)
            self._fds, self._reopen = fds, False
        fd = self._fds.get("snapshots", self._fds["results"]) if line.get("action") == "snapshot" else self._fds["results"]
        data = (dumps(line) + "\n").encode()
        written = os.write(fd, data)
        while written < len(data):   # a regular file takes it whole, unless the disk is full
            written += os.write(fd, data[written:])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
