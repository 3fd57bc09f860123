"""The `osquery-netutil` command.

`watch` (the main job) attaches the probe and prints each network utility exec as one
JSON line as it happens. The osquery extension, `query` and the packs arrive in later
steps (see the README's roadmap); this is the raw feed they are built on.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .catalog import Catalog, CatalogError
from .locations import WRITABLE_DIRS
from .probe import ExecRecord, Probe, ProbeError


def _text(raw: bytes) -> str:
    """Bytes from the kernel as text; undecodable bytes become \\xNN escapes, not lost."""
    return raw.decode("utf-8", "backslashreplace")


def _watch(args: argparse.Namespace) -> int:
    catalog = Catalog.load()
    if args.catalog:
        try:
            catalog = Catalog.load(args.catalog)
        except CatalogError as exc:
            print(f"osquery-netutil: {exc}; keeping the built-in catalog", file=sys.stderr)
    lock = threading.Lock()

    def show(rec: ExecRecord) -> None:
        utility = catalog.by_comm(_text(rec.comm))
        if utility is None:
            return   # forwarded for its path only (a /tmp script, say): not a network utility
        parent = probe.ancestry(rec.ppid)
        line = {
            "time": int(rec.time),
            "pid": rec.pid,
            "parent": rec.ppid,
            "uid": rec.uid,
            "utility": utility.name,
            "category": utility.category,
            "technique": utility.technique,
            "path": _text(rec.filename),
            "cmdline": " ".join(_text(a) for a in rec.argv),
            "parent_path": _text(parent.file) if parent else "",
        }
        with lock:
            print(json.dumps(line), flush=True)

    prefixes = args.prefix or list(WRITABLE_DIRS)
    try:
        probe = Probe(catalog.basenames(), show, forward_prefixes=prefixes)
        probe.start()
    except ProbeError as exc:
        print(f"osquery-netutil: {exc}", file=sys.stderr)
        return 2
    print(f"osquery-netutil: watching execs of {len(catalog)} network utilities (Ctrl-C stops)", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    c = probe.counters()
    probe.stop()
    print(f"osquery-netutil: execs seen {c.execs_seen}, forwarded {c.forwarded}, lost {c.lost}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="osquery-netutil", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", help="run the probe and print each network utility exec as a JSON line")
    watch.add_argument("--catalog", type=Path, help="extra catalog YAML (same format as the built-in one)")
    watch.add_argument(
        "--prefix", action="append", metavar="DIR/",
        help=f"forward execs under this directory (repeatable; default: {' '.join(WRITABLE_DIRS)})",
    )
    args = parser.parse_args(argv)
    return {"watch": _watch}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
