"""The last eid watch's detections have judged, kept in a file beside the store
(`<store>.judged`): a restart resumes there, so that no row is judged twice or never, and
the store never evicts a row after it (docs/design.md, "The store")."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable


class Cursor:
    """The mark and how far behind it is. Without a file (or with one beyond the store's
    newest eid: a store replaced since), judging starts with the rows of the last
    `first_s` seconds."""

    def __init__(self, path: Path, newest: Callable[[], int], eid_before: Callable[[int], int],
                 time_after: Callable[[int], int | None], first_s: int = 60, settle_s: int = 0) -> None:
        """settle_s: rows are judged once they are this old (what joins them has come:
        the socket events of an exec); 0 at once."""
        self.path = path
        self.newest = newest
        self.settle_s = settle_s
        self._eid_before = eid_before
        self._time_after = time_after
        try:
            saved = int(path.read_text().strip())
        except (OSError, ValueError):
            saved = None
        self.value = saved if saved is not None and 0 <= saved <= newest() else eid_before(int(time.time()) - first_s)

    def upto(self) -> int:
        """The newest eid to judge now: the newest row, or the newest that has settled."""
        newest = self.newest()
        return min(newest, self._eid_before(int(time.time()) - self.settle_s)) if self.settle_s else newest

    def progress(self) -> dict[str, int]:
        """The status row's judge_backlog and judge_delay_s: rows waiting, and how long the
        oldest of them has."""
        waiting = max(self.newest() - self.value, 0)
        oldest = self._time_after(self.value) if waiting else None
        return {"judge_backlog": waiting, "judge_delay_s": max(int(time.time()) - oldest, 0) if oldest else 0}

    def advance(self, eid: int) -> None:
        self.value = eid
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{eid}\n")
        os.replace(tmp, self.path)
