"""The sensor: probe -> enrichment -> store, and the status row that reports on them.

`watch`, `record` and the osquery extension each run one Sensor. Data flows one way:
the probe's thread enriches each record while the process is still alive, hands the row
to the store (which commits in batches on its own thread) and to an optional sink.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Iterable

from osquery_netutil import __version__
from osquery_netutil.catalog import Catalog
from osquery_netutil.events.enrich import Enricher, Row
from osquery_netutil.events.sockdiag import SockDiag
from osquery_netutil.events.sockets import SocketRows
from osquery_netutil.locations import WRITABLE_DIRS
from osquery_netutil.kernel.preflight import ProbeError
from osquery_netutil.kernel.probe import Probe
from osquery_netutil.kernel.records import ExecRecord
from osquery_netutil.kernel.sockets import SockRecord
from osquery_netutil.schema import STATUS
from osquery_netutil.store.store import Store


class Sensor:
    """Runs the probe and turns its records into stored rows. start() may raise ProbeError;
    the status row then says 'failed' with the cause and the store is still readable."""

    def __init__(
        self,
        catalog: Catalog,
        store: Store | None = None,
        *,
        extra_prefixes: Iterable[str] = (),
        on_row: Callable[[Row], None] | None = None,
        on_socket_row: Callable[[Row], None] | None = None,
        problems: Iterable[str] = (),
        probe_mode: str = "auto",
        btf_offsets: dict[str, int] | None = None,
        sockets: bool = True,
    ) -> None:
        """on_row, on_socket_row: get each exec row, each socket event row, as stored (with no
        store, exec rows are numbered here, so that socket rows name theirs: `record`).
        sockets: report what tracked processes contact (network_utility_socket_events)."""
        self.catalog = catalog
        self.store = store
        self._on_row = on_row
        self._on_socket_row = on_socket_row
        self._numbered = 0   # exec rows numbered with no store
        # The writable directories always; a user's --prefix adds places, never removes one.
        self._prefixes = (*WRITABLE_DIRS, *extra_prefixes)
        self._problems = list(problems)   # start-up problems worked around (bad --catalog, say)
        self._probe_mode = probe_mode
        self._btf_offsets = btf_offsets
        self._probe: Probe | None = None
        self._enricher: Enricher | None = None
        self._sockets: SocketRows | None = None
        self._judge_track: Callable[[ExecRecord, bool], None] = lambda rec, row: None   # the probe's, once made
        self._want_sockets = sockets
        self._failure = ""
        self._stopped = False
        self._started = time.time()    # this run: it owns the store from here on
        self._attached = 0.0           # when the probe was attached and its reader polling
        self._lock = threading.Lock()
        self.rows_made = 0
        self.socket_rows = 0
        self.row_errors = 0
        self.last_row_error = ""

    def start(self) -> None:
        """Compile and attach the probe (about a second). Raises ProbeError, which the
        status row then reports. Readers of the store see this run's own 'starting' row
        first and 'running' only once the probe's reader polls: an exec made after that
        is recorded."""
        self.publish_status()
        try:
            probe = Probe(self.catalog.kernel_names(), self._on_exec, forward_prefixes=self._prefixes,
                          mode=self._probe_mode, btf_offsets=self._btf_offsets, content_verdicts=True,
                          on_socket=self._on_socket if self._want_sockets else None, on_tick=self._on_tick,
                          on_attached=lambda: self._sockets_attached(probe))
            self._enricher = Enricher(self.catalog, probe.ancestry, verdict=probe.remember_verdict,
                                      forget=probe.forget_verdicts)
            self._sockets = SocketRows(self._add_socket_row, probe.ancestry, self._enricher.origin)
            self._judge_track = probe.judge_track
            probe.start()
        except ProbeError as exc:
            self._failure = str(exc)
            self.publish_status()
            raise
        self._attached = time.time()
        self._probe = probe
        self.publish_status()

    def stop(self) -> None:
        """Detach the probe (handling what it had queued) and flush the store."""
        self._stopped = True
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if self._sockets is not None:
            self._sockets.close()   # the poll thread is gone: what it held is handed on here
        if self.store is not None:
            self.store.flush()
            self.publish_status()   # 'stopped': the next run can tell a stop from a kill

    def publish_status(self) -> None:
        """Leave the status row beside the store, for readers in other processes (`query`,
        another extension) to show. A failure to write it becomes a status problem."""
        if self.store is None:
            return
        try:
            self.store.publish_status(self.status())
        except OSError as exc:
            problem = f"cannot publish the status beside {self.store.path}: {exc.strerror}"
            if problem not in self._problems:
                self._problems.append(problem)

    def publish_until(self, stop: threading.Event, every_s: float = 2.0) -> None:
        """Publish the status every few seconds until stop is set."""
        while not stop.wait(every_s):
            self.publish_status()

    def _on_exec(self, rec: ExecRecord) -> None:
        assert self._enricher is not None   # made before the probe starts calling
        try:
            row = self._enricher.row(rec)
        except Exception as exc:   # one bad record must not stop the others; counted, shown in status
            with self._lock:
                self.row_errors += 1
                self.last_row_error = f"pid {rec.pid}: {type(exc).__name__}: {exc}"
            self._judge_track(rec, False)   # no row: a pending track ends now, not after PENDING_NS
            return
        eid = 0
        if row is not None:
            with self._lock:
                self.rows_made += 1
            if self.store is not None:
                row["eid"] = eid = self.store.add(row)   # the sink sees the row as stored
            else:
                self._numbered += 1
                row["eid"] = eid = self._numbered
            if self._on_row is not None:
                self._on_row(row)
        if self._sockets is not None:
            self._judge_track(rec, self._sockets.exec_seen(rec, eid))

    def _sockets_attached(self, probe: Probe) -> None:
        """The probe's socket programs are attached and its reader not yet started: where
        they read TCP outcomes at tracepoints, what those do not report is read with
        sock_diag (events/listeners.py)."""
        if self._sockets is not None and probe.outcomes_at_tracepoints and probe.network_mode:
            self._sockets.read_states(SockDiag(), probe.listen_port)

    def _on_socket(self, rec: SockRecord) -> None:
        assert self._sockets is not None   # made before the probe starts calling
        self._sockets.take(rec)

    def _on_tick(self) -> None:
        if self._sockets is not None:
            self._sockets.tick()

    def _add_socket_row(self, row: Row) -> None:
        with self._lock:
            self.socket_rows += 1
        if self.store is not None:
            self.store.add_socket(row)
        if self._on_socket_row is not None:
            self._on_socket_row(row)

    def _restarted(self) -> str:
        return _restart_text(self.store.previous_run if self.store is not None else None)

    def status(self) -> dict[str, Any]:
        """The network_utility_probe_status row."""
        counters = self._probe.counters() if self._probe is not None else None
        rows, oldest = self.store.stats()[:2] if self.store is not None else (0, 0)
        cursor = self.store.cursor if self.store is not None else None
        problems = list(self._problems)
        if counters is not None and counters.lost:
            problems.append(f"{counters.lost} execs lost (ring buffer full): the host ran execs faster than they were read")
        if self._probe is not None and self._want_sockets and not self._probe.network_mode:
            problems.append(f"no socket events: {self._probe.network_note}")
        if self.row_errors:
            problems.append(f"{self.row_errors} records could not be enriched; last: {self.last_row_error}")
        if self.store is not None:
            problems += [p for p in (self.store.error, self.store.recovered) if p]
        if self._failure:
            state, error = "failed", self._failure
        elif self._stopped:
            state, error = "failed", "stopped"
        elif self._probe is None:
            state, error = "starting", "the probe is compiling and attaching (about a second)"
        else:
            state, error = ("degraded" if problems else "running"), "; ".join(problems)
        return {
            "state": state,
            "error": error,
            "source": "ebpf" if self._probe is not None else "store",
            "kernel": os.uname().release,
            "start_time": int(self._started),
            "attached_time": int(self._attached),
            "startup_ms": round((self._attached - self._started) * 1000) if self._attached else 0,
            "restarted": self._restarted(),
            "probe_mode": self._probe.mode if self._probe is not None else "",
            "probe_mode_note": self._probe.mode_note if self._probe is not None else "",
            "execs_seen": counters.execs_seen if counters else 0,
            "events_matched": self.rows_made,
            "events_lost": counters.lost if counters else 0,
            "network_mode": self._probe.network_mode if self._probe is not None else "",
            "network_note": "; ".join(filter(None, (self._probe.network_note if self._probe is not None else "",
                                                     self._sockets.problem if self._sockets is not None else ""))),
            "socket_events": counters.sock_events if counters else 0,
            "socket_events_lost": (counters.sock_lost + counters.sock_over_budget + counters.sock_unread if counters else 0)
            + (self._sockets.lost if self._sockets is not None else 0),
            # watch's judge, when this store has one (its cursor); under osquery, nothing waits here.
            **(cursor.progress() if cursor is not None else {"judge_backlog": 0, "judge_delay_s": 0}),
            "rows_evicted": self.store.evicted if self.store is not None else 0,
            "rows_retained": rows,
            "oldest_time": oldest,
            "store_path": str(self.store.path) if self.store is not None else "",
            "catalog_size": len(self.catalog),
            "version": __version__,
        }


def _restart_text(previous: dict[str, Any] | None) -> str:
    """How the run before this one (this boot, same store) ended, or '' for the first."""
    if not previous:
        return ""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(previous.get("start_time") or 0)))
    ended = "stopped" if previous.get("error") == "stopped" else "was killed or died (it never said it stopped)"
    return f"after the run started {when} (pid {previous.get('pid')}), which {ended}"


def stored_status(store: Store | None, catalog: Catalog, note: str = "") -> dict[str, Any]:
    """The status row for a process that only reads the store (`query`, or an extension
    that found another writer): the status the writer holding the store published, with
    fresh store figures; 'starting' while that writer has published nothing yet; 'failed'
    when no writer runs."""
    rows, oldest = store.stats()[:2] if store is not None else (0, 0)
    writer = store.writer_pid() if store is not None else None
    published = store.published_status() if store is not None else None
    if published is not None:
        status = dict(published)
        status["error"] = "; ".join(p for p in (status.get("error", ""), note) if p)
    else:
        if writer is not None:
            state, why = "starting", f"osquery-netutil (pid {writer}) has taken the store and is starting"
        else:
            where = f"in {store.path} " if store is not None else ""
            state, why = "failed", (f"no osquery-netutil is collecting: the rows {where}are those stored before it "
                                    "stopped; start the extension or 'osquery-netutil watch'")
        status = {**STATUS.empty_row(), "state": state, "error": "; ".join(p for p in (why, note) if p),
                  "kernel": os.uname().release, "catalog_size": len(catalog), "version": __version__}
    status.update(source="store", rows_retained=rows, oldest_time=oldest,
                  store_path=str(store.path) if store is not None else "")
    return status
