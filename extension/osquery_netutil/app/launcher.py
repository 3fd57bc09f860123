"""What the one-file build (`osquery-netutil.ext`, scripts/build_ext.py) runs, so that one
installed file is both the extension and the command:

* run as `osquery-netutil` (the package's /usr/sbin link): the command (watch, query, ...);
* run as `*.ext` with flags first (osquery starts it `--socket S --timeout T ...`): the
  extension; with a command first (`osquery-netutil.ext watch`): the command.

The command's modules (the embedded host, APSW) are imported only when it runs.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None, program: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0] if program is None else program)
    if not program.endswith(".ext") or (argv and not argv[0].startswith("-")):
        from osquery_netutil.app.cli import main as command
        return command(argv)
    from osquery_netutil.app.extension import main as extension
    return extension(argv)
