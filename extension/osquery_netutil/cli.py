"""The `osquery-netutil` command.

  watch    attach the probe, keep rows in the store, run the detection packs on them and
           print each detection as it happens (the main job)
  record   the same rows as JSON Lines into a file, for offline analysis and fixtures
  replay   load JSON Lines into a store, so that queries and packs run on them
  query    run one SQL statement on the tables, as osqueryi would (no osquery needed)
  shell    an interactive SQL shell on the tables
  packs    build the pack files osquery and Fleet load, or verify the packs

The osquery extension itself is `osquery-netutil-extension` (or the built .ext file).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from . import __version__, faults, flagfile, jsonl, packs, resultlog, safety
from .catalog import Catalog, load_in_force
from .enrich import Row
from .host import Host, QueryError
from .output import render
from .runner import Cursor, PackRunner, Result, readable
from .locations import WRITABLE_DIRS
from .probe import NEEDS_ROOT, ProbeError, probe_mode_option
from .sensor import Sensor, stored_status
from .shell import Shell
from .store import DEFAULT_MAX_AGE_S, DEFAULT_MAX_ROWS, DEFAULT_PATH, Store, StoreError, StoreMissing
from .tables import ExecsTable, StatusTable


HUNTING = ("info", "low")   # severities of the hunting queries: their rows are not evidence


def _say(message: str) -> None:
    print(f"osquery-netutil: {message}", file=sys.stderr, flush=True)


def _catalog(args: argparse.Namespace) -> tuple[Catalog, list[str]]:
    catalog, problems = load_in_force(args.catalog)
    for problem in problems:
        _say(problem)
    return catalog, problems


def _run_sensor(args: argparse.Namespace, store: Store | None, on_row: Callable[[Row], None] | None,
                ticker: Callable[[Sensor], Callable[[], None]] = lambda sensor: lambda: None) -> int:
    """Attach the probe, then call ticker(sensor)() every half second until Ctrl-C or SIGTERM."""
    catalog, problems = _catalog(args)
    sensor = Sensor(catalog, store, extra_prefixes=args.prefix or (), on_row=on_row, problems=problems,
                    probe_mode=args.probe_mode)
    tick = ticker(sensor)
    try:
        sensor.start()
    except ProbeError as exc:
        _say(str(exc))
        return 2
    _say(f"watching execs of {len(catalog)} network utilities (Ctrl-C stops)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    published = 0.0
    while not stop.wait(0.5):
        tick()
        if time.monotonic() - published >= 2.0:
            sensor.publish_status()
            published = time.monotonic()
    status = sensor.status()
    sensor.stop()
    tick()   # what the last rows detect
    _say(f"execs seen {status['execs_seen']}, rows {status['events_matched']}, lost {status['events_lost']}"
         + (f"; {status['error']}" if status["error"] else ""))
    return 0


def _watch_store(args: argparse.Namespace, keep: contextlib.ExitStack) -> Store:
    """The store watch writes and the packs read: --store, or a private temporary one with
    --no-store. Raises StoreError when --store cannot be used: the rows would be lost at
    exit, which the user must choose (--no-store), not find out."""
    if not args.no_store:
        store = keep.enter_context(Store(args.store, max_rows=args.max_rows, max_age_s=args.max_age))
        if store.recovered:
            _say(store.recovered)
        return store
    tmp = keep.enter_context(tempfile.TemporaryDirectory(prefix="osquery-netutil-"))
    return keep.enter_context(Store(Path(tmp) / "events.db", max_rows=args.max_rows, max_age_s=args.max_age))


def _watch(args: argparse.Namespace) -> int:
    # Plain watch judges each row once, by eid; --pack-intervals runs the packs as osquery would.
    queries, errors = packs.load_each(args.packs, by_cursor=not args.pack_intervals)
    if not queries:
        _say(errors[0] if errors else f"{args.packs}: no detections (.sql files) here: give --packs the packs directory")
        return 2
    for error in errors:
        _say(f"{error}; the other packs keep running")
    fmt = args.format if args.format != "auto" else ("text" if sys.stdout.isatty() else "json")
    # A person at a terminal sees alerts; a log or a pipe gets every scheduled query's
    # results, as osqueryd logs them.
    for_person = fmt == "text" and args.log is None
    floor = args.min_severity or ("medium" if for_person else "info")
    shown = [q for q in queries if packs.SEVERITIES.index(q.severity) >= packs.SEVERITIES.index(floor)]
    if len(shown) < len(queries):
        _say(f"not running {len(queries) - len(shown)} queries below {floor} "
             f"({', '.join(q.name for q in queries if q not in shown)}): --min-severity info runs them")
    with contextlib.ExitStack() as keep:
        try:
            store = _watch_store(args, keep)
        except StoreError as exc:
            _say(f"{exc} (or run with --no-store)")
            return 2
        emit = _emitter(args, keep, fmt)
        if args.pidfile is not None:
            args.pidfile.write_text(f"{os.getpid()}\n")
            keep.callback(args.pidfile.unlink, missing_ok=True)

        def ticker(sensor: Sensor) -> Callable[[], None]:
            host = Host([ExecsTable(lambda: store), StatusTable(sensor.status)])
            cursor = None if args.pack_intervals else Cursor(
                store.path.with_name(store.path.name + ".judged"), lambda: store.stats()[2], store.eid_before, store.time_after)
            runner = PackRunner(host, shown, every_s=None if args.pack_intervals else args.every, cursor=cursor,
                                snapshots="changes" if for_person else "log")
            sensor.progress = cursor.progress if cursor is not None else None
            store.judged_upto = (lambda: cursor.value) if cursor is not None else None

            def tick() -> None:
                store.flush()   # rows of the last half second, so that detections see them
                results, failures = runner.run_due()
                for failure in failures:
                    _say(failure)
                # What a detection (not a hunting query) reported outlives plain rows.
                store.mark_detected(row["eid"] for r in results if r.query.severity not in HUNTING
                                    for row in r.rows if isinstance(row.get("eid"), int))
                for result in results:
                    emit(result)
            return tick

        _say(f"running {len(shown)} detections from {args.packs} "
             + ("at their own intervals" if args.pack_intervals else f"every {args.every:g} s"))
        return _run_sensor(args, store, None, ticker)


def _emitter(args: argparse.Namespace, keep: contextlib.ExitStack, fmt: str) -> Callable[[Result], None]:
    """Where watch puts each result: the --log files (reopened on SIGHUP), else stdout. A
    line the file refuses (a full disk) goes to stdout instead, with one warning: a
    detection is never dropped."""
    host_identifier = socket.gethostname()

    def show(line: dict) -> None:
        print(resultlog.dumps(line), flush=True)

    def print_lines(result: Result) -> None:
        for line in resultlog.log_lines(result, host_identifier):
            show(line)

    def print_readable(result: Result) -> None:
        print("\n".join(readable(result, colour=sys.stdout.isatty())), flush=True)

    if args.log is None:
        return print_lines if fmt == "json" else print_readable
    log = resultlog.ResultLog(args.log)
    keep.callback(log.close)
    log.reopen_on_sighup()
    failing: list[OSError] = []

    def write(result: Result) -> None:
        for line in resultlog.log_lines(result, host_identifier):
            try:
                log.write(line)
                failing.clear()
            except OSError as exc:
                if not failing:
                    _say(f"cannot write to {args.log} ({faults.cause(exc)}): detections go to stdout until it can")
                failing.append(exc)
                show(line)
    return write


def _file_flags(watch: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """watch's flags from --flagfile (the extension's file): those watch does not take
    (osquery's --verbose, say) are ignored with a warning."""
    flags = flagfile.named_in(argv, _say)
    unknown = watch.parse_known_args(flags)[1]
    if unknown:
        _say(f"ignoring what watch does not take in the flag file: {' '.join(unknown)}")
    kept, at = [], 0   # unknown is in the file's order: drop those tokens, not others that look the same
    for token in flags:
        if at < len(unknown) and token == unknown[at]:
            at += 1
        else:
            kept.append(token)
    return kept


def _record(args: argparse.Namespace) -> int:
    with open(args.output, "a", encoding="utf-8") as out:
        def write(row: Row) -> None:
            out.write(jsonl.dumps(row) + "\n")
            out.flush()
        return _run_sensor(args, None, write)


def _packs(args: argparse.Namespace) -> int:
    if args.action == "build":
        try:
            for path in packs.build(args.packs):
                print(f"wrote {path}")
        except packs.PackError as exc:
            _say(str(exc))
            return 1
        return 0
    problems = packs.verify(args.packs)
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(packs.load_each(args.packs)[0])
    print(f"{count} detections checked: " + (f"{len(problems)} problems" if problems else "all good"))
    return 1 if problems else 0


def _replay(args: argparse.Namespace) -> int:
    try:
        store = Store(args.store, max_rows=args.max_rows, max_age_s=args.max_age)
    except StoreError as exc:
        _say(str(exc))
        return 2
    skipped = 0
    with store:
        for name in args.files:
            try:
                safety.check(Path(name), "replay file")
            except safety.UnsafeFile as exc:
                _say(f"{exc}; not loaded")
                skipped += 1
                continue
            try:
                with open(name, encoding="utf-8", errors="backslashreplace") as f:
                    result = jsonl.read(f, name)
            except OSError as exc:
                _say(f"{name}: cannot read ({exc.strerror})")
                skipped += 1
                continue
            store.add_many(result.rows)
            for error in result.errors:
                _say(f"skipped {error}")
            skipped += result.skipped
            _say(f"{name}: {len(result.rows)} rows loaded into {store.path}, {result.skipped} lines skipped")
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
            _say(f"no osquery-netutil is collecting into {store.path}: showing the {store.stats()[0]} rows stored"
                 + (f" (until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(newest))})" if newest else ""))
    except StoreMissing as exc:
        _say(f"{exc}; the tables are empty")
    host = Host([ExecsTable(lambda: store), StatusTable(lambda: stored_status(store, catalog))])
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
            _say(f"flag file: {faults.explain(exc)}")
            return 2
    args = parser.parse_args(argv)
    commands = {"watch": _watch, "record": _record, "replay": _replay, "query": _query, "shell": _shell, "packs": _packs}
    # Faults in the order a user fixes them: privileges first, then what each command
    # reads (packs, store, catalog); each as one line and a non-zero status.
    if args.command in ("watch", "record") and os.geteuid() != 0:
        _say(NEEDS_ROOT)
        return 2
    try:
        return commands[args.command](args)
    except (StoreError, packs.PackError) as exc:
        _say(str(exc))
        return 2
    except (OSError, sqlite3.Error) as exc:
        _say(faults.explain(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
