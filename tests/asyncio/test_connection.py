"""The asyncio runtime's connection: its protocol flavour per loop, the outbound limit, the end.

Runs on asyncio's own loop and on uvloop (where installed), with real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from enlace.asyncio.connection import BufferedConnection, StreamConnection, connection_class
from enlace.services import EchoService, StreamHandler, StreamService, Transport
from tests.conftest import SERVER_RUNTIMES, connect, read_exactly, uvloop

CHUNK = 16 * 1024  # what the flood service writes at a time


@pytest.fixture(params=[r for r in SERVER_RUNTIMES if r != "threads"])
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _Flood(StreamService):
    """``sink`` registers the sender; ``push`` writes 16 chunks to every sink; other: 1 chunk."""

    name = "flood"

    def __init__(self) -> None:
        self.sinks: list[Transport] = []

    def handler(self) -> StreamHandler:
        return _FloodHandler(self)


class _FloodHandler(StreamHandler):
    def __init__(self, service: _Flood) -> None:
        self.service = service

    def data_received(self, data: bytes) -> None:
        if data == b"sink":
            self.service.sinks.append(self.transport)
            self.transport.write(b"ok")
        elif data == b"push":
            for sink in self.service.sinks:
                for _ in range(16):  # separate writes, outside the sink's own callbacks
                    sink.write(b"x" * CHUNK)
            self.transport.write(b"ok")
        else:
            self.transport.write(b"x" * CHUNK)  # one write per callback, however many bytes


class _Dropped(logging.Handler):
    """Catches the close line of a slow consumer; ``waiting`` is its byte count."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = threading.Event()
        self.waiting = -1

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"slow consumer: (\d+) bytes of output waiting", record.getMessage())
        if found:
            self.waiting = int(found.group(1))
            self.seen.set()


@pytest.fixture
def dropped() -> Iterator[_Dropped]:
    handler = _Dropped()
    logger = logging.getLogger("enlace.flood")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_the_connection_class_follows_the_loop(serve, runtime):
    # uvloop reads into exact-size bytes itself; asyncio's loop needs our buffer.
    expected = StreamConnection if runtime == "uvloop" else BufferedConnection
    loop = uvloop.new_event_loop() if runtime == "uvloop" else asyncio.new_event_loop()
    try:
        assert connection_class(loop) is expected
    finally:
        loop.close()
    assert not hasattr(StreamConnection, "get_buffer")  # uvloop would read through it
    assert issubclass(BufferedConnection, asyncio.BufferedProtocol)
    server = serve(EchoService())
    with connect(server.address) as sock:
        sock.sendall(b"hola")
        assert read_exactly(sock, 4) == b"hola"
        (connection,) = server.server._connections
        assert type(connection) is expected


@pytest.mark.parametrize("limit", [32 * 1024, 1024 * 1024], ids=["below", "above"])
def test_pushes_past_the_outbound_limit_drop_the_client_at_the_limit(serve, dropped, limit):
    # Below the transport's high-water mark (256 KiB) the limit is checked on every
    # write; above it, from the moment the transport pauses writing. Either way the
    # client is dropped at the first write that finds more than the limit waiting.
    server = serve(_Flood(), max_outbound=limit)
    sink = socket.socket()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.connect(server.address)
    sink.sendall(b"sink")
    assert read_exactly(sink, 2) == b"ok"  # then it never reads again
    with connect(server.address) as pusher:
        pushes = 0
        while not dropped.seen.is_set() and pushes < 400:  # at most 100 MiB
            pusher.sendall(b"push")
            assert read_exactly(pusher, 2) == b"ok"  # the pusher is never held up
            pushes += 1
        assert dropped.seen.is_set()
        assert limit < dropped.waiting <= limit + CHUNK
        pusher.sendall(b"more")
        assert len(read_exactly(pusher, CHUNK)) == CHUNK  # still served
    sink.close()


def test_replies_past_a_small_outbound_limit_drop_the_client(serve, dropped):
    # A client that sends but never reads its replies, with a limit below the
    # high-water mark: reading never pauses, so the limit is what stops it.
    limit = 32 * 1024
    server = serve(_Flood(), max_outbound=limit)
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(5)
        client.connect(server.address)
        sent = 0
        # Each byte read is answered with CHUNK bytes (bytes read together, with one).
        while not dropped.seen.is_set() and sent < 100_000:
            try:
                client.sendall(b"g")
            except OSError:  # reset by the drop, before we saw the log line
                break
            sent += 1
        assert dropped.seen.wait(5)
        assert limit < dropped.waiting <= limit + CHUNK
    with connect(server.address) as other:
        other.sendall(b"g")
        assert len(read_exactly(other, CHUNK)) == CHUNK


class _Stubborn(StreamService):
    """Starts work that ignores cancellation; records what the handler hears, in order."""

    name = "stubborn"

    def __init__(self) -> None:
        self.heard: list[str] = []
        self.started = threading.Event()
        self.ended = threading.Event()

    def handler(self) -> StreamHandler:
        return _StubbornHandler(self)


class _StubbornHandler(StreamHandler):
    def __init__(self, service: _Stubborn) -> None:
        self.service = service

    def data_received(self, data: bytes) -> None:
        self.transport.call_async(self._work(), self._done)
        self.service.started.set()

    async def _work(self) -> str:
        with contextlib.suppress(asyncio.CancelledError):  # finishes anyway, carelessly
            await asyncio.sleep(10)
        self.service.ended.set()
        return "late"

    def _done(self, result: object, error: BaseException | None) -> None:
        self.service.heard.append("done")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.service.heard.append("connection_lost")


def test_no_callback_reaches_the_handler_after_connection_lost(serve, runtime):
    service = _Stubborn()
    server = serve(service)
    with connect(server.address) as sock:
        sock.sendall(b"go")
        assert service.started.wait(5)
    assert service.ended.wait(5)  # the work was cancelled when the client left, and ended
    service.started.clear()
    with connect(server.address) as sock:  # one more turn of the loop: callbacks have run
        sock.sendall(b"go")
        assert service.started.wait(5)
    assert service.heard[0] == "connection_lost"
    assert "done" not in service.heard
