"""`watch`, the main job, as an object: start() attaches the probe and opens the store and
the outputs, tick() (every half second) has the detections judge what was stored and hands
each result on, stop() detaches and judges the last rows. `record` runs the same sensor
loop with no detections.

Plain watch judges each stored row once, by eid (the store's cursor); --pack-intervals
runs the packs at their own intervals, as osqueryd's scheduler would.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

from osquery_netutil import faults
from osquery_netutil.app.console import say
from osquery_netutil.catalog import load_in_force
from osquery_netutil.events.enrich import Row
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.events.sockets import SETTLED_S
from osquery_netutil.host.database import Host
from osquery_netutil.kernel.preflight import ProbeError
from osquery_netutil.packs import resultlog, source as packs
from osquery_netutil.packs.runner import PackRunner, Result, readable
from osquery_netutil.schema import EXECS
from osquery_netutil.store.store import Store
from osquery_netutil.tables.plugins import StatusTable, stored_tables

HUNTING = ("info", "low")   # severities of the hunting queries: their rows are not evidence
TICK_S = 0.5                # how often the detections look at what was stored
PUBLISH_S = 2.0             # how often the status row is published for readers of the store


class WatchError(Exception):
    """watch cannot start; the message says why and what to do."""


class Job(Protocol):
    """What run_until_signalled runs: watch, record."""

    def start(self) -> None: ...
    def tick(self) -> None: ...
    def stop(self) -> None: ...


class SensorJob:
    """The sensor of `record` and `watch`: start() attaches the probe, tick() publishes the
    status row now and then, stop() detaches and says what was seen."""

    def __init__(self, args: argparse.Namespace, store: Store | None, on_row: Callable[[Row], None] | None = None,
                 on_socket_row: Callable[[Row], None] | None = None) -> None:
        catalog, problems = load_in_force(args.catalog)
        for problem in problems:
            say(problem)
        self.sensor = Sensor(catalog, store, extra_prefixes=args.prefix or (), on_row=on_row,
                             on_socket_row=on_socket_row, problems=problems, probe_mode=args.probe_mode)
        self._published = 0.0

    def start(self) -> None:
        """Attach the probe. Raises ProbeError (the status row says it too)."""
        self.sensor.start()
        say(f"watching execs of {len(self.sensor.catalog)} network utilities (Ctrl-C stops)")

    def tick(self) -> None:
        if time.monotonic() - self._published >= PUBLISH_S:
            self.sensor.publish_status()
            self._published = time.monotonic()

    def stop(self) -> None:
        status = self.sensor.status()
        self.sensor.stop()
        say(f"execs seen {status['execs_seen']}, rows {status['events_matched']}, lost {status['events_lost']}"
            + (f"; {status['error']}" if status["error"] else ""))


def run_until_signalled(job: Job) -> int:
    """job.start(), then job.tick() every TICK_S until Ctrl-C or SIGTERM, then job.stop()."""
    try:
        job.start()
    except ProbeError as exc:
        say(str(exc))
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(TICK_S):
        job.tick()
    job.stop()
    return 0


class Emitter:
    """Where watch puts each result: the --log files (reopened on SIGHUP), else stdout, as
    osqueryd's JSON lines or one readable line per row. A line the file refuses (a full
    disk) goes to stdout instead, with one warning: a detection is never dropped."""

    def __init__(self, log: Path | None, fmt: str) -> None:
        self._host_identifier = socket.gethostname()
        self._fmt = fmt
        self._path = log
        self._log = resultlog.ResultLog(log) if log is not None else None
        if self._log is not None:
            self._log.reopen_on_sighup()
        self._failing = False

    def __call__(self, result: Result) -> None:
        if self._log is None and self._fmt == "text":
            print("\n".join(readable(result, colour=sys.stdout.isatty())), flush=True)
            return
        for line in resultlog.log_lines(result, self._host_identifier):
            if self._log is None:
                self._show(line)
                continue
            try:
                self._log.write(line)
                self._failing = False
            except OSError as exc:
                if not self._failing:
                    say(f"cannot write to {self._path} ({faults.cause(exc)}): detections go to stdout until it can")
                self._failing = True
                self._show(line)

    @staticmethod
    def _show(line: dict) -> None:
        print(resultlog.dumps(line), flush=True)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


class Watch:
    """The detections of the packs judging what the sensor stores, each result emitted."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Choose the detections (raises WatchError when there are none). Nothing is
        opened or attached before start()."""
        self.args = args
        queries, errors = packs.load_each(args.packs, by_cursor=not args.pack_intervals)
        if not queries:
            raise WatchError(errors[0] if errors else
                             f"{args.packs}: no detections (.sql files) here: give --packs the packs directory")
        for error in errors:
            say(f"{error}; the other packs keep running")
        self.fmt = args.format if args.format != "auto" else ("text" if sys.stdout.isatty() else "json")
        # A person at a terminal sees alerts; a log or a pipe gets every scheduled query's
        # results, as osqueryd logs them.
        self.for_person = self.fmt == "text" and args.log is None
        floor = args.min_severity or ("medium" if self.for_person else "info")
        self.queries = [q for q in queries if packs.SEVERITIES.index(q.severity) >= packs.SEVERITIES.index(floor)]
        if len(self.queries) < len(queries):
            say(f"not running {len(queries) - len(self.queries)} queries below {floor} "
                f"({', '.join(q.name for q in queries if q not in self.queries)}): --min-severity info runs them")
        self._keep = contextlib.ExitStack()   # what start() opened, closed by stop()

    def start(self) -> None:
        """Open the store and the outputs, write the pid file, set up the detections, attach
        the probe. Raises StoreError or ProbeError (and OSError); then nothing stays open."""
        args = self.args
        with contextlib.ExitStack() as keep:
            path = args.store
            if args.no_store:   # a private store, deleted at exit
                path = Path(keep.enter_context(tempfile.TemporaryDirectory(prefix="osquery-netutil-"))) / "events.db"
            # Raises StoreError when --store cannot be used: the rows would be lost at exit,
            # which the user must choose (--no-store), not find out.
            self.store = keep.enter_context(Store(path, max_rows=args.max_rows, max_age_s=args.max_age,
                                                  judged_by_cursor=not args.pack_intervals, settle_s=SETTLED_S))
            if self.store.recovered:
                say(self.store.recovered)
            self.emit = keep.enter_context(contextlib.closing(Emitter(args.log, self.fmt)))
            if args.pidfile is not None:
                args.pidfile.write_text(f"{os.getpid()}\n")
                keep.callback(args.pidfile.unlink, missing_ok=True)
            self.sensor = SensorJob(args, self.store)
            host = Host([*stored_tables(lambda: self.store), StatusTable(self.sensor.sensor.status)])
            self.runner = PackRunner(host, self.queries, every_s=None if args.pack_intervals else args.every,
                                     cursor=self.store.cursor, snapshots="changes" if self.for_person else "log",
                                     socket_cursor=self.store.socket_cursor)
            say(f"running {len(self.queries)} detections from {args.packs} "
                + ("at their own intervals" if args.pack_intervals else f"every {args.every:g} s"))
            self.sensor.start()
            self._keep = keep.pop_all()

    def tick(self) -> None:
        """Judge what was stored since the last tick and emit what the detections found."""
        self.store.flush()   # rows of the last half second, so that detections see them
        results, failures = self.runner.run_due()
        for failure in failures:
            say(failure)
        # The exec rows a detection (not a hunting query) reported outlive plain rows.
        self.store.mark_detected(row["eid"] for r in results if r.query.severity not in HUNTING and r.query.judged == EXECS.name
                                 for row in r.rows if isinstance(row.get("eid"), int))
        for result in results:
            self.emit(result)
        self.sensor.tick()

    def stop(self) -> None:
        """Detach, judge the last rows (all of them: what joins them has come), close the
        outputs and the store."""
        self.sensor.stop()
        if self.store.cursor is not None:
            self.store.cursor.settle_s = 0
        self.tick()
        self._keep.close()
