"""Flags from a file, one per line ('#' comments), the way osquery's --flagfile reads them.

osquery starts an autoloaded extension with its own flags only, so the extension's
(store, limits, prefixes, catalog) live in a file, and `watch` run as a service reads the
same file: one place for a host's settings, whichever collects. The Debian package ships
it as a conffile.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

from osquery_netutil import safety

DEFAULT = Path("/etc/osquery-netutil/netutil.flags")
FORMER = Path("/etc/osquery/netutil.flags")   # read by 0.1 builds before the package


def read(path: Path, warn: Callable[[str], None]) -> list[str]:
    """The flags in path ([] when there is no such file). The file must be root's and not
    writable by others: a file that is not is ignored, with a warning, since its flags
    would let anyone choose where root writes."""
    if not path.exists():
        if path == DEFAULT and FORMER.exists():
            warn(f"{FORMER} is not read any more: move it to {DEFAULT}")
        return []
    try:
        safety.check(path, "flag file")
    except safety.UnsafeFile as exc:
        warn(f"ignoring the flag file: {exc}")
        return []
    flags: list[str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            flags.extend(line.split(None, 1) if " " in line and "=" not in line else [line])
    return flags


def named_in(argv: Sequence[str], warn: Callable[[str], None]) -> list[str]:
    """The flags in the file that argv's --flagfile names (DEFAULT when it names none)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--flagfile", type=Path, default=DEFAULT)
    return read(pre.parse_known_args(list(argv))[0].flagfile, warn)
