"""HTTP test helpers: a WebServer on a loop thread (asyncio or uvloop), raw requests, curl.

``web(root, **options)`` (the fixture) starts :class:`enlace.web.WebServer` on
loopback port 0 on the event loop under test and returns a :class:`RunningWeb`;
every server is shut down at the end of the test. Responses are read by a
small reader of our own (Content-Length framing only, which is all enlace
sends), or by the real ``curl``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from enlace.web import WebServer
from tests.conftest import LoopThread, connect, uvloop

LOOPS = ("asyncio", "uvloop") if uvloop is not None else ("asyncio",)
CURL = shutil.which("curl")


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps the last value
    body: bytes
    raw_head: bytes


class RunningWeb:
    def __init__(self, server: WebServer, loop: LoopThread) -> None:
        self.server = server
        self.loop = loop
        self.address = server.address
        self.url = f"http://127.0.0.1:{self.address[1]}"

    def shutdown(self, drain_timeout: float | None = 0.0) -> None:
        self.loop.run(self.server.shutdown(drain_timeout))


@pytest.fixture(params=LOOPS)
def web(request: pytest.FixtureRequest) -> Iterator[Callable[..., RunningWeb]]:
    loop = LoopThread(use_uvloop=request.param == "uvloop")
    started: list[RunningWeb] = []

    def start(root: Any = None, **options: Any) -> RunningWeb:
        server = WebServer(None if root is None else str(root), "127.0.0.1", 0, **options)
        loop.run(server.start())
        running = RunningWeb(server, loop)
        started.append(running)
        return running

    yield start
    for running in started:
        running.shutdown(0.0)
    loop.close()


class Conn:
    """A client connection that reads responses one at a time (pipelining keeps leftovers)."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = connect(address, timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        chunk = self.sock.recv(256 * 1024)
        assert chunk, f"the server closed; unparsed: {self.buffer[:200]!r}"
        return chunk

    def response(self, *, head_only: bool = False) -> Response:
        """One response: the head, then Content-Length bytes of body."""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._more()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        no_body = head_only or status in (204, 304)
        length = 0 if no_body else int(headers.get("content-length", "0"))
        body = bytearray(rest)
        while len(body) < length:
            body += self._more()
        self.buffer = bytes(body[length:])
        return Response(status, headers, bytes(body[:length]), head + b"\r\n\r\n")

    def read(self, size: int) -> bytes:
        """Exactly ``size`` raw bytes (after an upgrade, say)."""
        while len(self.buffer) < size:
            self.buffer += self._more()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def closed(self) -> bool:
        """Whether the server closes the connection now (with nothing more to read)."""
        return not self.buffer and self.sock.recv(65536) == b""


def get(
    address: tuple[str, int], path: str = "/", headers: dict[str, str] | None = None, **kw: Any
) -> Response:
    """``GET path`` on a new connection (``method=`` for another method)."""
    method = kw.pop("method", "GET")
    with Conn(address) as conn:
        conn.send(request_bytes(path, headers, method=method))
        return conn.response(head_only=method == "HEAD")


def request_bytes(
    path: str, headers: dict[str, str] | None = None, *, method: str = "GET"
) -> bytes:
    fields = {"Host": "test", **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(address: tuple[str, int], raw: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``raw`` and return everything until the server closes the connection."""
    with connect(address, timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def curl(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
    """Run the real curl (never through a proxy)."""
    if CURL is None:
        pytest.skip("curl is not installed (scripts/test installs it)")
    return subprocess.run(
        [CURL, "-sS", "--noproxy", "*", *args], capture_output=True, timeout=timeout, check=False
    )
