"""An S3 HTTP endpoint on loopback for tests (moto's standalone server), and a TCP proxy
in front of it that can stall and cut uploads, to test endpoints that fail mid-upload.

moto runs as its own process (``python -m moto.server``), so the runner under test talks
HTTP to it exactly as to any S3-compatible store: nothing is mocked in-process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tidemark_devstack.paths import free_port, port_answers

# Set to an S3 endpoint URL (e.g. http://127.0.0.1:9000) to test against it instead of a
# moto server started for the session; its credentials come from the two variables below.
ENDPOINT_ENV = "TIDEMARK_TEST_S3_ENDPOINT"
ACCESS_KEY_ENV = "TIDEMARK_TEST_S3_ACCESS_KEY"
SECRET_KEY_ENV = "TIDEMARK_TEST_S3_SECRET_KEY"  # noqa: S105 (a variable name)
# moto accepts any credentials; these are what tests store as the organization's secrets.
MOTO_ACCESS_KEY = "AKIDTIDEMARKTEST0001"
MOTO_SECRET_KEY = "tidemark-test-secret-key-0123456789abcdef"  # noqa: S105 (moto's, fake)
REGION = "us-east-1"


class MotoServer:
    """moto's standalone S3 server on 127.0.0.1, a port of its own."""

    def __init__(self, log_file: Path | None = None) -> None:
        self.port = 0
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> str:
        for _ in range(5):
            self.port = free_port()
            log = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    break  # the port was taken meanwhile: another one
                if port_answers(self.port):
                    return self.endpoint
                time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError("moto's S3 server did not start")
        raise RuntimeError("moto's S3 server did not start (no free port)")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


class CuttableProxy:
    """A loopback TCP proxy to ``upstream`` (host, port) that a test can break.

    ``stall_after(n)``: once ``n`` bytes went upstream (all connections together), hold
    every connection's data (the upload is in progress, and stays so). ``cut()``: reset
    every open connection, and from then on reset any connection that sends more than
    ``small_bytes`` upstream: bulk transfers (a part, an object) never get through again,
    while small requests (an abort, a listing, a delete) still do, as on a link that drops
    large transfers. ``refuse_puts()``: answer ``403 Forbidden`` to every ``PUT`` request
    (connections carrying one are answered and closed). ``refuse_connections(n)``: reset
    every open connection and the next ``n`` new ones (an endpoint away for a moment).
    """

    def __init__(self, upstream: tuple[str, int], *, small_bytes: int = 64 * 1024) -> None:
        self._upstream = upstream
        self._small = small_bytes
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sent = 0
        self._stall_after: int | None = None
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._release.set()
        self.broken = False
        self.refusing_puts = False
        self._refuse = 0
        self.refused = 0
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="s3-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bytes_upstream(self) -> int:
        return self._sent

    def stall_after(self, n: int) -> None:
        self._stall_after = n

    def refuse_puts(self) -> None:
        self.refusing_puts = True

    def refuse_connections(self, n: int) -> None:
        with self._lock:
            self._refuse = n
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)

    def cut(self) -> None:
        with self._lock:
            self.broken = True
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)
        self._release.set()

    def close(self) -> None:
        self._closed = True
        self._release.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            refuse = self._refuse > 0
            if refuse:
                self._refuse -= 1
                self.refused += 1
        if refuse:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()
        self._pump_up(client, upstream)

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        sent_here = 0
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if self.refusing_puts and data.startswith(b"PUT "):
                    client.sendall(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    break
                if self._stall_after is not None and self._sent >= self._stall_after:
                    self.stalled.set()
                    self._release.clear()
                    self._stall_after = None
                self._release.wait()
                sent_here += len(data)
                if self.broken and sent_here > self._small:
                    break
                upstream.sendall(data)
                with self._lock:
                    self._sent += len(data)
        except OSError:
            pass
        _reset(client)
        _reset(upstream)
        with self._lock:
            self._open.difference_update((client, upstream))

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        _reset(client)
        _reset(upstream)


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (RST), as a vanished peer or a dropped route would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()
