"""An osquery extension manager for tests and benchmarks: osquery.thrift's ExtensionManager service,
served with osquery-python's generated code, behaving as osqueryd's does for what an
extension sees (register, ping, deregister; duplicate names refused).

It launches an extension exactly as osquery does: `PATH --socket S --timeout T
--interval I` with OSQUERY_EXTENSION=<pid> in the environment, and calls its tables
with `call("table", name, {"action": ..., "context": <osquery's JSON>})`.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from osquery.extensions import Extension, ExtensionManager
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from osquery_netutil.tables.thrift import Server
from osquery_netutil.schema import Table
from osquery_netutil.tables.plugins import TableError, TablePlugin


class Manager(ExtensionManager.Iface):
    def __init__(self, socket_path: Path) -> None:
        self.socket = str(socket_path)
        self.registered: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.registered_at: float | None = None   # time.monotonic() of the first registration
        self._ids = itertools.count(1000)
        self._lock = threading.Condition()
        self._server = Server(self.socket, ExtensionManager.Processor(self))

    # -- the service ---------------------------------------------------------------
    def ping(self) -> ExtensionStatus:
        return ExtensionStatus(code=0, message="OK")

    def call(self, registry: str, item: str, request: dict[str, str]) -> ExtensionResponse:
        return ExtensionResponse(status=ExtensionStatus(code=1, message="core plugins are not served here"), response=[])

    def shutdown(self) -> None:
        pass

    def extensions(self) -> dict[int, Any]:
        with self._lock:
            return {uuid: info for uuid, (info, _) in self.registered.items()}

    def options(self) -> dict[str, Any]:
        return {}

    def registerExtension(self, info: Any, registry: dict[str, Any]) -> ExtensionStatus:  # noqa: N802 (thrift's name)
        with self._lock:
            if any(i.name == info.name for i, _ in self.registered.values()):
                return ExtensionStatus(code=1, message="Duplicate extension registered")
            uuid = next(self._ids)
            self.registered[uuid] = (info, registry)
            if self.registered_at is None:
                self.registered_at = time.monotonic()
            self._lock.notify_all()
        return ExtensionStatus(code=0, message="OK", uuid=uuid)

    def deregisterExtension(self, uuid: int) -> ExtensionStatus:  # noqa: N802
        with self._lock:
            self.registered.pop(uuid, None)
        return ExtensionStatus(code=0, message="OK")

    def query(self, sql: str) -> ExtensionResponse:
        return ExtensionResponse(status=ExtensionStatus(code=1, message="no SQL engine in the test manager"), response=[])

    def getQueryColumns(self, sql: str) -> ExtensionResponse:  # noqa: N802
        return self.query(sql)

    # -- test helpers ----------------------------------------------------------------
    def __enter__(self) -> "Manager":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.stop()

    def launch(self, extension: str, *extra: str, interval: int = 1) -> subprocess.Popen:
        argv = [extension, "--socket", self.socket, "--timeout", "3", "--interval", str(interval), *extra]
        env = dict(os.environ, OSQUERY_EXTENSION=str(os.getpid()))
        return subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)

    def wait_registered(self, name: str, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for uuid, (info, _) in self.registered.items():
                    # Registered, and serving: the extension listens right after registering.
                    if info.name == name and os.path.exists(f"{self.socket}.{uuid}"):
                        return uuid
                if time.monotonic() > deadline:
                    raise AssertionError(f"extension {name!r} did not register within {timeout}s")
                self._lock.wait(0.05)

    def call_table(self, uuid: int, table: str, request: dict[str, str]) -> ExtensionResponse:
        """What osqueryd does to run a query on an extension table."""
        transport = TTransport.TBufferedTransport(TSocket.TSocket(unix_socket=f"{self.socket}.{uuid}"))
        transport.open()
        try:
            return Extension.Client(TBinaryProtocol.TBinaryProtocol(transport)).call("table", table, request)
        finally:
            transport.close()

    def generate(self, uuid: int, table: Table, constraints: dict[str, list[tuple[int, str]]] | None = None,
                 used: list[str] | None = None) -> list[dict[str, str]]:
        response = self.call_table(uuid, table.name, {"action": "generate",
                                                      "context": context(table, constraints or {}, used)})
        assert response.status.code == 0, response.status.message
        return response.response


def context(table: Table, constraints: dict[str, list[tuple[int, str]]], used: list[str] | None = None) -> str:
    """osquery's context JSON (osquery/core/tables.cpp): every column listed, with its
    constraints' op codes and string expressions, plus the columns the query uses (all
    of them unless `used` says)."""
    names = list(table.names) if used is None else used
    return json.dumps({
        "constraints": [
            {"name": c.name, "list": [{"op": op, "expr": expr} for op, expr in constraints.get(c.name, [])],
             "affinity": c.type}
            for c in table.columns
        ],
        "colsUsed": names,
        "colsUsedBitset": sum(1 << i for i, c in enumerate(table.columns) if c.name in names),
    })


class RemoteTable(TablePlugin):
    """An extension's table as osqueryi's SQLite reaches it: each scan is a `generate` call
    over thrift with osquery's context (the embedded host's virtual tables build it as
    osquery/sql/virtual_table.cpp does), the answer read back as osquery's text rows."""

    def __init__(self, manager: Manager, uuid: int, table: Table) -> None:
        self.manager, self.uuid, self.table = manager, uuid, table

    def generate(self, context: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.manager.call_table(self.uuid, self.table.name, {"action": "generate", "context": json.dumps(context)})
        if response.status.code != 0:
            raise TableError(response.status.message)
        return response.response
