"""Files the sensor trusts must be writable by root alone.

Whoever can write the store can forge or erase detections; whoever can write the catalog
or a flag file can blind the sensor; a replay file decides what the packs see. So, as
osquery does for extensions: no symlink, not group- or world-writable, and, when running
as root, owned by root. The message names the file and the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeFile(ValueError):
    """A file (or its directory) that someone other than root could write."""


def check(path: Path, what: str, directory: bool = False) -> None:
    """Raise UnsafeFile if path, or with directory=True also its directory, is unsafe.
    A path that does not exist yet is fine (its directory is still checked)."""
    targets = [(path, what)] + ([(path.parent, f"{what}'s directory")] if directory else [])
    for target, name in targets:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeFile(f"{target}: the {name} is a symlink: give the real path")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeFile(f"{target}: the {name} is group- or world-writable: "
                             f"chmod go-w {target}, or use a root-only directory")
        if os.geteuid() == 0 and st.st_uid != 0:
            raise UnsafeFile(f"{target}: the {name} is owned by uid {st.st_uid}, not root: chown root {target}")
