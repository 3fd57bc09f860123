"""Which files may be given a content verdict: only those whose content was read and
decided (the kernel then keeps the verdict until the file changes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from osquery_netutil.catalog import Catalog
from osquery_netutil.events.content import ContentMatcher


def test_a_file_read_and_compared_is_decided(tmp_path: Path) -> None:
    matcher = ContentMatcher(Catalog.load())
    copy = tmp_path / "helper"
    shutil.copy("/bin/true", copy)
    assert matcher.match_path(str(copy)) is None
    st = os.stat(copy)
    assert (st.st_ino, st.st_ctime_ns) in matcher.decided


def test_a_file_not_read_is_not_decided(tmp_path: Path) -> None:
    """Through a symlink (opened with O_NOFOLLOW: ELOOP) or gone: no verdict may be given."""
    matcher = ContentMatcher(Catalog.load())
    target = tmp_path / "upd"
    shutil.copy("/bin/true", target)
    link = tmp_path / "u"
    link.symlink_to(target)
    assert matcher.match_path(str(link)) is None
    assert matcher.match_path(str(tmp_path / "gone")) is None
    assert matcher.match_proc_exe(2 ** 22 + 7) is None   # no such process
    st = os.stat(target)
    assert (st.st_ino, st.st_ctime_ns) not in matcher.decided
