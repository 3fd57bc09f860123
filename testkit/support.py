"""Helpers shared by the tests and the benchmarks: real processes, real listeners."""

from __future__ import annotations

import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def tiny_elf() -> bytes:
    """A complete static x86_64 ELF of 129 bytes that exits at once (exit(0)).

    It lives a few microseconds: the shortest-lived process the probe must still catch,
    and the cheapest fork+exec to measure overhead with. No compiler needed.
    """
    base, code = 0x400000, bytes.fromhex("b83c00000031ff0f05")  # mov eax,60; xor edi,edi; syscall
    ehdr_size, phdr_size = 64, 56
    entry = base + ehdr_size + phdr_size
    total = ehdr_size + phdr_size + len(code)
    ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return ehdr + phdr + code


def write_executable(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(0o755)
    return path


class Collector(Generic[T]):
    """Thread-safe sink for probe records or sensor rows, with bounded waits."""

    def __init__(self) -> None:
        self._records: list[T] = []
        self._cond = threading.Condition()

    def add(self, record: T) -> None:
        with self._cond:
            self._records.append(record)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self._records)

    def since(self, mark: int) -> list[T]:
        with self._cond:
            return self._records[mark:]

    def wait_for(self, pred: Callable[[T], bool], count: int = 1, since: int = 0, timeout: float = 10.0) -> list[T]:
        """Records after `since` matching pred; waits up to timeout for `count` of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [r for r in self._records[since:] if pred(r)]
                left = deadline - time.monotonic()
                if len(hits) >= count or left <= 0:
                    return hits
                self._cond.wait(min(left, 0.1))


class HttpServer:
    """HTTP on 127.0.0.1 answering 200 'ok' to everything (for curl, wget, nc, socat)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "HttpServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class DnsServer:
    """DNS on 127.0.0.1 answering NXDOMAIN to every query (for nslookup, dig, host, and
    getaddrinfo in a network namespace of a test's own, on port 53), over UDP and TCP."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(8)
        self.tcp.settimeout(0.1)
        self.queries: list[bytes] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]

    @staticmethod
    def _answer(query: bytes) -> bytes:
        flags = struct.unpack("!H", query[2:4])[0]
        reply_flags = 0x8000 | (flags & 0x0100) | 0x0080 | 3   # QR, copy RD, RA, NXDOMAIN
        return query[:2] + struct.pack("!HHHHH", reply_flags, 1, 0, 0, 0) + query[12:]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            if len(data) < 12:
                continue
            self.queries.append(data)
            self.sock.sendto(self._answer(data), peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(4096)
                    if len(data) >= 14:
                        self.queries.append(data[2:])
                        answer = self._answer(data[2:])
                        conn.sendall(struct.pack("!H", len(answer)) + answer)
                except OSError:
                    continue

    def __enter__(self) -> "DnsServer":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self.sock.close()
        self.tcp.close()


if __name__ == "__main__":   # python -m testkit.support SECONDS: DNS on 127.0.0.1:53 (in a namespace of a test's own)
    import sys

    with DnsServer(53):
        print("ready", flush=True)
        time.sleep(float(sys.argv[1]))
