"""What the commands tell the person running them: one line on stderr, named."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"osquery-netutil: {message}", file=sys.stderr, flush=True)
