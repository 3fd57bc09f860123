"""osquery's Extension service over thrift, as the extension serves it: the handler
(ping, call, shutdown), a server on the extension's unix socket, and call()'s reply
encoded by hand (write_call_result), streamed from the store as it is read.

The generated code is osquery-python's (osquery.thrift); only its server and the reply
writer are our own, for the reasons given at each.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from typing import Any, Callable

from osquery.extensions import Extension
from osquery.extensions.ttypes import ExtensionResponse, ExtensionStatus
from thrift.protocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport import TSocket, TTransport

from osquery_netutil.tables.plugins import TablePlugin

NAME = "netutil"     # the extension's name: what osquery's --extensions_require names
_CHUNK = 1 << 18     # bytes of a reply sent at a time


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Handler(Extension.Iface):
    """osquery.thrift's Extension service: ping, call, shutdown."""

    def __init__(self, tables: dict[str, TablePlugin], gone: threading.Event) -> None:
        self._tables = tables
        self._gone = gone   # set when osquery asks the extension to go (shutdown)

    def ping(self) -> ExtensionStatus:
        return ExtensionStatus(code=0, message="OK")

    def call(self, registry: str, item: str, request: dict[str, str]) -> ExtensionResponse:
        table = self._tables.get(item) if registry == "table" else None
        if table is None:
            return ExtensionResponse(
                status=ExtensionStatus(code=1, message=f"no {registry} plugin named {item!r} in {NAME}"), response=[]
            )
        return table.call(request)

    def shutdown(self) -> None:
        self._gone.set()


class Server:
    """A thrift server on a unix socket: one thread per connection, stoppable. (thrift's
    TThreadedServer cannot be stopped: its accept loop retries forever.)"""

    def __init__(self, path: str, processor: Any, log: Callable[[str], None] = _stderr) -> None:
        self.path = path
        self._log = log   # where a malformed request is said
        self._processor = processor   # a thrift-generated Processor wrapping the handler
        self._listener = TSocket.TServerSocket(unix_socket=path)
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="netutil-thrift", daemon=True)

    def start(self) -> None:
        self._listener.listen()
        os.chmod(self.path, 0o600)        # only root (osquery) may query the tables
        self._listener.handle.settimeout(0.25)   # so that stop() is noticed
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(timeout=2)
        self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _serve(self) -> None:
        while not self._stopping:
            try:
                client = self._listener.accept()
            except (socket.timeout, TTransport.TTransportException, OSError):
                continue
            if client is not None:
                threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: TSocket.TSocket) -> None:
        transport = TTransport.TBufferedTransport(client)
        # Plain binary protocol: thrift's C accelerator cannot decode osquery-python's
        # generated structs ("expecting list of size 2 for struct args").
        protocol = TBinaryProtocol.TBinaryProtocol(transport)
        try:
            while not self._stopping:
                self._processor.process(protocol, protocol)
        except (TTransport.TTransportException, EOFError, OSError):
            pass   # osquery closed the connection
        except Exception as exc:   # a malformed request: drop this connection, keep serving
            self._log(f"bad request on {self.path}: {type(exc).__name__}: {exc}")
        finally:
            transport.close()


def _string(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    return struct.pack(">i", len(raw)) + raw


def write_call_result(response: ExtensionResponse, send: Callable[[bytes], None]) -> None:
    """Extension.call's reply struct in thrift's binary protocol, byte for byte what the
    generated call_result.write() produces, about five times faster (a 10,000-row answer
    is mostly this encoding; thrift's C accelerator is not available in the .ext).

    It is handed to send() in pieces of about _CHUNK bytes as the rows are read, so a
    large answer streamed from the store (StoredRows) is never in memory whole. A row
    that fails to read after the first piece went out raises: the caller drops the
    connection, and osquery sees a failed call rather than a truncated answer."""
    status = response.status
    out = [b"\x0c\x00\x00", b"\x0c\x00\x01"]                     # call_result.success, .status
    if status.code is not None:
        out.append(b"\x08\x00\x01" + struct.pack(">i", status.code))
    if status.message is not None:
        out.append(b"\x0b\x00\x02" + _string(status.message))
    if status.uuid is not None:
        out.append(b"\x0a\x00\x03" + struct.pack(">q", status.uuid))
    out.append(b"\x00")                                                # end of ExtensionStatus
    if response.response is not None:
        rows = response.response
        out.append(b"\x0f\x00\x02\x0d" + struct.pack(">i", len(rows)))   # list<map<string,string>>
        # Keys, and many values (user, utility, paths, ancestors of a burst), repeat.
        seen: dict[str, bytes] = {}
        append, pack = out.append, struct.pack
        size = 0
        for row in rows:
            append(b"\x0b\x0b" + pack(">i", len(row)))
            for key, value in row.items():
                encoded = seen.get(key)
                if encoded is None:
                    encoded = seen[key] = _string(key)
                append(encoded)
                encoded = seen.get(value)
                if encoded is None:
                    encoded = _string(value)
                    if len(seen) < 65536:   # bounded: unique values (pids, cmdlines) are many
                        seen[value] = encoded
                append(encoded)
                size += len(encoded)
            if size > _CHUNK:
                send(b"".join(out))
                out.clear()
                size = 0
    out.append(b"\x00\x00")                                           # end of ExtensionResponse, call_result
    send(b"".join(out))


class Processor(Extension.Processor):
    """The generated processor, with call()'s reply written by write_call_result."""

    def __init__(self, handler: Extension.Iface) -> None:
        super().__init__(handler)
        self._processMap["call"] = Processor.process_call   # the generated map names the base's

    def process_call(self, seqid: int, iprot: Any, oprot: Any) -> None:
        args = Extension.call_args()
        args.read(iprot)
        iprot.readMessageEnd()
        result = self._handler.call(args.registry, args.item, args.request)
        oprot.writeMessageBegin("call", TMessageType.REPLY, seqid)
        transport = oprot.trans

        def send(piece: bytes) -> None:
            transport.write(piece)
            transport.flush()   # the unframed binary protocol is a plain stream: pieces are fine

        try:
            write_call_result(result, send)
        finally:
            close = getattr(result.response, "close", None)
            if close is not None:
                close()   # the store snapshot of a StoredRows answer
        oprot.writeMessageEnd()
