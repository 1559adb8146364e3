"""Fixtures shared by the suite: servers on either runtime, on loopback port 0.

``serve(service, **limits)`` starts ``service`` on the runtime under test and
returns a :class:`Running` handle; every server is shut down at the end of the
test. Tests that take the ``runtime`` fixture run twice, once per runtime,
which is how one behaviour suite covers both.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

import enlace.asyncio
import enlace.protocol.envelope
import enlace.services.classic
import enlace.sync
from enlace.limits import LINGER_BYTES, LINGER_TIMEOUT
from enlace.protocol import fastpath as _fastpath
from enlace.services import DatagramService, StreamService

try:
    import uvloop
except ImportError:  # optional: the asyncio runtime on uvloop is tested where it is installed
    uvloop = None

#: What the command line's --runtime takes.
RUNTIMES = ("threads", "asyncio")
#: What the behaviour suites run on: the asyncio runtime on both event loops.
SERVER_RUNTIMES = (*RUNTIMES, "uvloop") if uvloop is not None else RUNTIMES


@pytest.fixture(params=["c", "python"])
def fastpath(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the C loops of enlace.speedups, then with their Python twins."""
    if request.param == "c":
        if not _fastpath.SPEEDUPS:
            pytest.skip("enlace.speedups is not built (no C compiler at install time)")
        return "c"
    monkeypatch.setattr(
        enlace.protocol.envelope, "cut_text_commands", _fastpath.py_cut_text_commands
    )
    monkeypatch.setattr(enlace.protocol.envelope, "frame_text", _fastpath.py_frame_text)
    monkeypatch.setattr(enlace.services.classic, "scan_frames", _fastpath.py_scan_frames)
    return "python"


class LoopThread:
    """An event loop running in a background thread, for driving asyncio servers from tests."""

    def __init__(self, *, use_uvloop: bool = False) -> None:
        self.loop = uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Running:
    """A started server, whatever its runtime."""

    def __init__(self, server: Any, loop: LoopThread | None) -> None:
        self.server = server
        self._loop = loop
        self.address: tuple[str, int] = server.address
        self._stopped = False

    @property
    def connection_count(self) -> int:
        return int(self.server.connection_count)

    def shutdown(self, drain_timeout: float | None = 0.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._loop is None:
            self.server.shutdown(drain_timeout)
        else:
            self._loop.run(self.server.shutdown(drain_timeout))


@pytest.fixture(params=SERVER_RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(runtime: str) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []
    loop = None if runtime == "threads" else LoopThread(use_uvloop=runtime == "uvloop")

    def start(service: StreamService | DatagramService, **options: Any) -> Running:
        datagram = isinstance(service, DatagramService)
        if loop is None:
            cls = enlace.sync.DatagramServer if datagram else enlace.sync.Server
            server = cls(service, "127.0.0.1", 0, **options)
            server.start()
        else:
            cls = enlace.asyncio.DatagramServer if datagram else enlace.asyncio.Server
            server = cls(service, "127.0.0.1", 0, **options)
            loop.run(server.start())
        running = Running(server, loop)
        started.append(running)
        return running

    yield start
    for running in started:
        running.shutdown(0.0)
    if loop is not None:
        loop.close()


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A plain client socket, as in the course material, with a safety timeout."""
    sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_to_eof(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    """Everything the server sends until it closes (bounded, so a bug cannot hang us)."""
    chunks = []
    total = 0
    while chunk := sock.recv(256 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        assert total <= limit, "the server sent more than expected"
    return b"".join(chunks)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes, or fail if the server closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"the server closed after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def assert_flood_is_cut(send: Callable[[bytes], object]) -> None:
    """A client the server lingers on, sending without end, is cut past LINGER_BYTES.

    The cut is a reset (not a send timeout) well before LINGER_TIMEOUT.
    """
    started = time.monotonic()
    chunk = b"x" * 64 * 1024
    with pytest.raises(OSError) as cut:
        for _ in range(8 * LINGER_BYTES // len(chunk)):
            send(chunk)
    assert not isinstance(cut.value, TimeoutError)
    assert time.monotonic() - started < LINGER_TIMEOUT / 2


def reset_within(sock: socket.socket, seconds: float) -> bool:
    """Whether a byte sent to ``sock``'s peer is answered with a reset within ``seconds``.

    A peer that still reads (lingers) takes the byte; one that closed resets the connection.
    """
    sock.send(b"x")
    poller = select.poll()
    poller.register(sock, select.POLLERR | select.POLLHUP)  # a reset: both directions gone
    return bool(poller.poll(seconds * 1000))
