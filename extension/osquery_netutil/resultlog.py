"""`watch --log FILE`: result-log lines appended to a file, as osqueryd's filesystem logger
writes osqueryd.results.log, so that shippers that read that file (Filebeat's osquery
module, Fluent Bit, Splunk's forwarder) read this one unchanged.

Rotation: logrotate renames the file, then its postrotate sends SIGHUP; the file is
reopened (created again) before the next line. Lines written between the rename and
the signal land in the renamed file, none is lost; each line is one write() to a file
opened O_APPEND, so a reader never sees half a line.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

MODE = 0o640   # detections hold command lines: root and the adm group (the shipper) read them


class ResultLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = self._open()   # raises OSError now, not at the first detection
        self._reopen = False

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, MODE)
            os.fchmod(fd, MODE)   # the mode logrotate's `create` gives it too, whatever the umask
            return fd
        except FileExistsError:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def reopen_on_sighup(self) -> None:
        """From now on SIGHUP (logrotate's postrotate) reopens the file before the next line."""
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reopen", True))

    def write(self, line: dict[str, Any]) -> None:
        if self._reopen:
            self._reopen = False
            fd = self._open()
            os.close(self._fd)
            self._fd = fd
        data = (json.dumps(line) + "\n").encode()
        written = os.write(self._fd, data)
        while written < len(data):   # a regular file takes it whole, unless the disk is full
            written += os.write(self._fd, data[written:])

    def close(self) -> None:
        os.close(self._fd)
