"""The osquery extension: what osqueryd/osqueryi start as `PATH --socket S --timeout T
--interval I [--verbose]` (environment OSQUERY_EXTENSION=<osquery's pid>).

Order matters: register the tables with osquery first (osquery gives an autoloaded
extension --extensions_timeout seconds), then load the probe in the background. Until it
is attached, and if it fails, the tables stay registered: the status row says why and the
exec table serves what the store holds.

osquery-python's start_extension() is not used: it ends the process with os._exit() on
shutdown or when the core goes away, which would lose the store's last batch. This module
uses the same generated thrift code and shuts down cleanly instead.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from osquery.extension_client import DEFAULT_SOCKET_PATH, ExtensionClient
from osquery.extensions.ttypes import InternalExtensionInfo
from thrift.transport import TTransport

from osquery_netutil import __version__, faults

from osquery_netutil.app import flagfile
from osquery_netutil.catalog import load_in_force
from osquery_netutil.kernel.preflight import ProbeError, probe_mode_option
from osquery_netutil.events.sensor import Sensor, stored_status
from osquery_netutil.store.errors import StoreBusy, StoreError
from osquery_netutil.store.store import DEFAULT_MAX_AGE_S, DEFAULT_MAX_ROWS, DEFAULT_PATH, Store
from osquery_netutil.tables.plugins import DEFAULT_MAX_ANSWER_MB, StatusTable, TablePlugin, stored_tables
from osquery_netutil.tables.thrift import NAME, Handler, Processor, Server

SDK_VERSION = "5.0.0"
MIN_SDK_VERSION = "1.8.0"
ATTACH_WAIT_S = 60   # at shutdown, how long a probe still compiling is waited for (~10 s under CPUQuota=20%)


def log(message: str) -> None:
    """osquery passes an extension's stderr through to its own log."""
    print(f"osquery-netutil extension: {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """osquery's flags and ours (flagfile first, then the command line, which wins).
    Flags a newer osquery may add are ignored with a warning."""
    argv = [*flagfile.named_in(argv, log), *argv]
    parser = argparse.ArgumentParser(prog="osquery-netutil.ext", description="osquery extension: network_utility_execs")
    parser.add_argument("--flagfile", type=Path, default=flagfile.DEFAULT, help=f"file of extra flags (default {flagfile.DEFAULT})")
    parser.add_argument("--socket", default=DEFAULT_SOCKET_PATH, help="osquery's extension manager socket")
    parser.add_argument("--timeout", type=float, default=3, help="seconds to wait for the socket")
    parser.add_argument("--interval", type=float, default=3, help="seconds between pings of osquery")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--reconnect", action="store_true",
                        help="when osquery goes, register again with the next one instead of exiting (an extension "
                             "started beside osqueryd, as the fleetd unit does): the probe keeps recording")
    parser.add_argument("--catalog", type=Path, help="extra catalog YAML")
    parser.add_argument("--prefix", action="append", metavar="DIR/", help="also forward execs under this directory (repeatable)")
    probe_mode_option(parser)
    parser.add_argument("--store", type=Path, default=DEFAULT_PATH, help=f"SQLite event store (default {DEFAULT_PATH})")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS)
    parser.add_argument("--max-age", type=int, default=DEFAULT_MAX_AGE_S)
    parser.add_argument("--max-answer-mb", type=_megabytes, default=DEFAULT_MAX_ANSWER_MB,
                        help="refuse, with an error saying how to constrain it, an answer that would take more than this "
                             f"in osqueryd's memory (default {DEFAULT_MAX_ANSWER_MB}; its watchdog allows 200 MB; 0: no cap)")
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        log(f"ignoring flags this version does not know: {' '.join(unknown)}")
    return args


def _megabytes(text: str) -> float | None:
    """--max-answer-mb: a size in MB, 0 for no cap."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MB") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size in MB, or 0 for no cap")
    return value or None


def _register(args: argparse.Namespace, tables: dict[str, TablePlugin]) -> tuple[ExtensionClient, str]:
    client = ExtensionClient(path=args.socket)
    if not client.open(timeout=max(args.timeout, 0.2)):
        raise ConnectionError(f"cannot connect to osquery at {args.socket} within {args.timeout:g}s: "
                              "is osqueryd/osqueryi running with extensions enabled?")
    registry = {"table": {name: table.routes() for name, table in tables.items()}}
    info = InternalExtensionInfo(name=NAME, version=__version__, sdk_version=SDK_VERSION, min_sdk_version=MIN_SDK_VERSION)
    status = client.extension_manager_client().registerExtension(info=info, registry=registry)
    if status.code != 0:
        raise ConnectionError(f"osquery refused the registration: {status.message}")
    return client, str(status.uuid)


class _Link:
    """One registration with one osquery: the tables served on `<socket>.<uuid>`, and a ping
    every interval. `gone` is set when that osquery is gone or asked the extension to go."""

    def __init__(self, args: argparse.Namespace, tables: dict[str, TablePlugin]) -> None:
        self.client, uuid = _register(args, tables)
        self.gone = threading.Event()
        self.server = Server(f"{args.socket}.{uuid}", Processor(Handler(tables, self.gone)), log)
        self.server.start()
        log(f"registered as {NAME!r} (uuid {uuid}) with tables {', '.join(tables)}")
        threading.Thread(target=_watch_core, args=(self.client, args.interval, self.gone), name="netutil-ping",
                         daemon=True).start()

    def close(self) -> None:
        self.server.stop()
        self.client.close()


def _stay_linked(args: argparse.Namespace, tables: dict[str, TablePlugin], link: _Link, stop: threading.Event) -> None:
    """Serve osquery until it goes, then stop; with --reconnect, register again with the
    next osqueryd instead (fleetd's orbit restarts its osqueryd at every change of agent
    options): the probe and the store go on, so there is no blind gap and no restart."""
    while True:
        while not stop.is_set() and not link.gone.wait(0.5):
            pass
        link.close()
        if stop.is_set() or not args.reconnect:
            stop.set()
            return
        log("osquery is gone: registering again when it is back (--reconnect); the probe keeps recording")
        while not stop.is_set():
            try:
                link = _Link(args, tables)
                break
            except (ConnectionError, OSError, TTransport.TTransportException):
                stop.wait(args.interval)
        else:
            return


def _watch_core(client: ExtensionClient, interval: float, gone: threading.Event) -> None:
    """Ping osquery every interval; when it is gone, say so (cleanly, unlike os._exit)."""
    while not gone.wait(interval):
        try:
            if client.extension_manager_client().ping().code != 0:
                raise ConnectionError("ping answered with an error")
        except Exception as exc:   # any failure means osquery is gone or broken
            log(f"osquery is gone ({type(exc).__name__}: {exc})")
            gone.set()


def main(argv: Sequence[str] | None = None) -> int:
    """The extension process; an environment fault (a flag file or store it cannot read,
    say) ends it with one line on stderr, which osqueryd logs, and status 2."""
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except (OSError, sqlite3.Error) as exc:
        log(faults.explain(exc))
        return 2


def _run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    catalog, problems = load_in_force(args.catalog)
    for problem in problems:
        log(problem)

    writer, note = True, ""
    store: Store | None
    try:
        store = Store(args.store, max_rows=args.max_rows, max_age_s=args.max_age)
    except StoreBusy as exc:
        # Another extension or watch collects already: serve its rows, do not compete.
        writer = False
        note = f"{exc} (this extension only reads it)"
        log(note)
        store = Store(args.store, readonly=True)
    except StoreError as exc:
        store = None
        problems.append(f"{exc}; rows are not kept")
        log(problems[-1])
    if store is not None and store.recovered:
        log(store.recovered)   # the status row says it too, as long as this process runs

    sensor = Sensor(catalog, store if writer else None, extra_prefixes=args.prefix or (), problems=problems,
                    probe_mode=args.probe_mode)

    def status() -> dict[str, Any]:
        return sensor.status() if writer else stored_status(store, catalog, note)

    plugins = (*stored_tables(lambda: store, args.max_answer_mb), StatusTable(status))
    tables: dict[str, TablePlugin] = {t.table.name: t for t in plugins}
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        link = _Link(args, tables)
    except (ConnectionError, OSError, TTransport.TTransportException) as exc:
        log(str(exc))
        if store is not None:
            store.close()
        return 1

    attaching: threading.Thread | None = None
    if writer:
        def attach() -> None:
            try:
                sensor.start()
                log("probe attached")
            except ProbeError as exc:
                log(f"probe failed: {exc}; serving stored rows only")
        attaching = threading.Thread(target=attach, name="netutil-attach", daemon=True)
        attaching.start()
    linked = threading.Thread(target=_stay_linked, args=(args, tables, link, stop), name="netutil-osquery", daemon=True)
    linked.start()

    if writer:
        sensor.publish_until(stop)
    else:
        stop.wait()
    log("stopping: flushing the store")
    linked.join(timeout=5)   # it closes the link it holds
    if attaching is not None:
        # A shutdown asked while bcc compiles (seconds under osqueryd's CPU quota): the
        # probe is stopped once it is attached, and the process never exits with LLVM
        # running in another thread (an abort at exit).
        attaching.join(timeout=ATTACH_WAIT_S)
    sensor.stop()
    if store is not None:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
