"""The `osquery-netutil` command.

  watch    attach the probe, keep rows in the store, run the detection packs on them and
           print each detection as it happens (the main job)
  record   the same rows (and socket events) as JSON Lines into a file, for offline analysis and fixtures
  replay   load JSON Lines into a store, so that queries and packs run on them
  query    run one SQL statement on the tables, as osqueryi would (no osquery needed)
  shell    an interactive SQL shell on the tables
  packs    build the pack files osquery and Fleet load, or verify the packs

The osquery extension itself is `osquery-netutil-extension` (or the built .ext file).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

from osquery_netutil import __version__, faults, safety
from osquery_netutil.app import flagfile
from osquery_netutil.app.console import say
from osquery_netutil.app.output import render
from osquery_netutil.app.shell import Shell
from osquery_netutil.app.watch import SensorJob, Watch, WatchError, run_until_signalled
from osquery_netutil.catalog import Catalog
from osquery_netutil.events.sensor import stored_status
from osquery_netutil.host.database import Host
from osquery_netutil.host.errors import QueryError
from osquery_netutil.kernel.preflight import NEEDS_ROOT, probe_mode_option
from osquery_netutil.locations import WRITABLE_DIRS
from osquery_netutil.packs import formats, jsonl, source as packs, verify
from osquery_netutil.store.errors import StoreError, StoreMissing
from osquery_netutil.store.store import DEFAULT_MAX_AGE_S, DEFAULT_MAX_ROWS, DEFAULT_PATH, Store
from osquery_netutil.tables.plugins import StatusTable, stored_tables


def _watch(args: argparse.Namespace) -> int:
    try:
        return run_until_signalled(Watch(args))
    except WatchError as exc:
        say(str(exc))
        return 2
    except StoreError as exc:
        say(f"{exc} (or run with --no-store)")
        return 2


def _file_flags(watch: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """watch's flags from --flagfile (the extension's file): those watch does not take
    (osquery's --verbose, say) are ignored with a warning."""
    flags = flagfile.named_in(argv, say)
    unknown = watch.parse_known_args(flags)[1]
    if unknown:
        say(f"ignoring what watch does not take in the flag file: {' '.join(unknown)}")
    kept, at = [], 0   # unknown is in the file's order: drop those tokens, not others that look the same
    for token in flags:
        if at < len(unknown) and token == unknown[at]:
            at += 1
        else:
            kept.append(token)
    return kept


def _record(args: argparse.Namespace) -> int:
    with open(args.output, "a", encoding="utf-8") as out:
        lock = threading.Lock()   # exec rows come on the probe's thread, socket rows too, the last ones at stop

        def write(line: str) -> None:
            with lock:
                out.write(line + "\n")
                out.flush()
        return run_until_signalled(SensorJob(args, None, lambda row: write(jsonl.dumps(row)),
                                             lambda row: write(jsonl.socket_line(row))))


def _packs(args: argparse.Namespace) -> int:
    if args.action == "build":
        try:
            for path in formats.build(args.packs):
                print(f"wrote {path}")
        except packs.PackError as exc:
            say(str(exc))
            return 1
        return 0
    problems = verify.verify(args.packs)
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(packs.load_each(args.packs)[0])
    print(f"{count} detections checked: " + (f"{len(problems)} problems" if problems else "all good"))
    return 1 if problems else 0


def _replay(args: argparse.Namespace) -> int:
    try:
        store = Store(args.store, max_rows=args.max_rows, max_age_s=args.max_age)
    except StoreError as exc:
        say(str(exc))
        return 2
    skipped = 0
    with store:
        for name in args.files:
            try:
                safety.check(Path(name), "replay file")
            except safety.UnsafeFile as exc:
                say(f"{exc}; not loaded")
                skipped += 1
                continue
            try:
                with open(name, encoding="utf-8", errors="backslashreplace") as f:
                    result = jsonl.read(f, name)
            except OSError as exc:
                say(f"{name}: cannot read ({exc.strerror})")
                skipped += 1
                continue
            result.store_into(store)
            for error in result.errors:
                say(f"skipped {error}")
            skipped += result.skipped
            say(f"{name}: {len(result.rows)} rows and {len(result.sockets)} socket events loaded into {store.path}, "
                f"{result.skipped} lines skipped")
        store.flush()
    return 1 if skipped else 0


def _reading_host(args: argparse.Namespace) -> tuple[Host, Store | None]:
    """The embedded host on the store a running extension or watch writes, read-only;
    says on stderr when no collector is running (the rows are then only history)."""
    catalog = Catalog.load()
    store: Store | None = None
    try:
        store = Store(args.store, readonly=True)
        if store.writer_pid() is None:
            oldest, newest = store.select_bounds()
            say(f"no osquery-netutil is collecting into {store.path}: showing the {store.stats()[0]} rows stored"
                 + (f" (until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(newest))})" if newest else ""))
    except StoreMissing as exc:
        say(f"{exc}; the tables are empty")
    host = Host([*stored_tables(lambda: store), StatusTable(lambda: stored_status(store, catalog))])
    return host, store


def _query(args: argparse.Namespace) -> int:
    host, store = _reading_host(args)
    try:
        columns, rows = host.query(args.sql)
    except QueryError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    text = render(args.mode, columns, rows)
    if text:
        print(text)
    return 0


def _shell(args: argparse.Namespace) -> int:
    host, store = _reading_host(args)
    shell = Shell(host, args.mode)
    try:
        shell.loop()
    finally:
        if store is not None:
            store.close()
    return 0


def _sensor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", type=Path, help="extra catalog YAML (same format as the built-in one)")
    p.add_argument(
        "--prefix", action="append", metavar="DIR/",
        help=f"also forward execs under this directory, for renamed-copy matching (repeatable; always: {' '.join(WRITABLE_DIRS)})",
    )
    probe_mode_option(p)


def _packs_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--packs", type=Path, default=packs.PACKS_DIR, help=f"directory of the detections (default {packs.PACKS_DIR})")


def _store_options(p: argparse.ArgumentParser, optional: bool) -> None:
    p.add_argument("--store", type=Path, default=DEFAULT_PATH, help=f"SQLite event store (default {DEFAULT_PATH})")
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows kept (default %(default)s)")
    p.add_argument("--max-age", type=int, default=DEFAULT_MAX_AGE_S, help="seconds rows are kept (default %(default)s)")
    if optional:
        p.add_argument("--no-store", action="store_true", help="keep rows in a temporary store, deleted at exit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="osquery-netutil", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", help="run the probe and the detection packs, print each detection as it happens")
    _sensor_options(watch)
    _store_options(watch, optional=True)
    _packs_option(watch)
    watch.add_argument("--every", type=float, default=2.0, help="seconds between runs of the detections (default 2)")
    watch.add_argument("--pack-intervals", action="store_true", help="run each detection at its pack interval instead")
    watch.add_argument("--format", choices=("auto", "json", "text"), default="auto",
                       help="json: osquery result-log lines; text: one readable line each (auto: text on a terminal)")
    watch.add_argument("--min-severity", choices=packs.SEVERITIES,
                       help="run and show only the detections of this severity and above (default: medium on a "
                            "terminal, so alerts are not buried under the hunting queries; info, i.e. all, with --log or piped)")
    watch.add_argument("--log", type=Path, metavar="FILE",
                       help="append result-log lines (JSON) to FILE instead of stdout, snapshot lines to its sibling "
                            "(results.log: snapshots.log), as osqueryd does; SIGHUP reopens them (logrotate)")
    watch.add_argument("--pidfile", type=Path, metavar="FILE", help="write watch's pid to FILE (for logrotate's postrotate)")
    watch.add_argument("--flagfile", type=Path, default=flagfile.DEFAULT,
                       help=f"file of flags, shared with the extension (default {flagfile.DEFAULT}); the command line wins")
    record = sub.add_parser("record", help="run the probe and append each row as a JSON line to a file")
    record.add_argument("output", type=Path, help="JSON Lines file to append to")
    _sensor_options(record)
    pk = sub.add_parser("packs", help="build the generated pack files, or verify the packs")
    pk.add_argument("action", choices=("build", "verify"))
    _packs_option(pk)
    replay = sub.add_parser("replay", help="load JSON Lines rows into a store")
    replay.add_argument("files", nargs="+", help="JSON Lines files written by record (or by hand)")
    _store_options(replay, optional=False)
    for name, helptext in (("query", "run one SQL statement on the tables (no osquery needed)"),
                           ("shell", "interactive SQL on the tables, with history")):
        p = sub.add_parser(name, help=helptext)
        if name == "query":
            p.add_argument("sql", help="e.g. \"SELECT utility, cmdline FROM network_utility_execs\"")
        p.add_argument("--store", type=Path, default=DEFAULT_PATH, help=f"store to read (default {DEFAULT_PATH})")
        modes = p.add_mutually_exclusive_group()
        modes.add_argument("--json", dest="mode", action="store_const", const="json", help="JSON, like osqueryi --json")
        modes.add_argument("--csv", dest="mode", action="store_const", const="csv", help="CSV with a header line")
        modes.add_argument("--line", dest="mode", action="store_const", const="line", help="one column per line")
        p.set_defaults(mode="pretty")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["watch"]:
        try:
            argv = ["watch", *_file_flags(watch, argv[1:]), *argv[1:]]
        except OSError as exc:
            say(f"flag file: {faults.explain(exc)}")
            return 2
    args = parser.parse_args(argv)
    commands = {"watch": _watch, "record": _record, "replay": _replay, "query": _query, "shell": _shell, "packs": _packs}
    # Faults in the order a user fixes them: privileges first, then what each command
    # reads (packs, store, catalog); each as one line and a non-zero status.
    if args.command in ("watch", "record") and os.geteuid() != 0:
        say(NEEDS_ROOT)
        return 2
    try:
        return commands[args.command](args)
    except (StoreError, packs.PackError) as exc:
        say(str(exc))
        return 2
    except (OSError, sqlite3.Error) as exc:
        say(faults.explain(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
