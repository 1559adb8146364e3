"""Behaviour every server runtime shares: limits, timeouts, shutdown, isolation.

Runs once per runtime (``enlace.sync.Server`` and ``enlace.asyncio.Server``).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

import pytest

from enlace.limits import LINGER_TIMEOUT, MAX_LINGERING_REFUSALS
from enlace.services import EchoService, StreamHandler, StreamService
from tests.conftest import (
    assert_flood_is_cut,
    connect,
    read_exactly,
    read_to_eof,
    reset_within,
)


def echo_once(sock: socket.socket, data: bytes = b"ping") -> None:
    sock.sendall(data)
    assert read_exactly(sock, len(data)) == data


def test_connection_cap_refuses_the_extra_client_clearly(serve):
    server = serve(EchoService(), max_connections=2)
    first, second = connect(server.address), connect(server.address)
    echo_once(first)
    echo_once(second)  # both are being served, so both hold a slot
    with connect(server.address) as third:
        refusal = read_to_eof(third)
    assert refusal == b"ERR busy: too many connections (limit 2)\r\n"
    echo_once(first)  # the others are untouched
    second.close()
    first.close()


def test_a_slot_frees_when_a_client_leaves(serve):
    server = serve(EchoService(), max_connections=1)
    with connect(server.address) as first:
        echo_once(first)
    # The slot is released asynchronously; a refused attempt proves nothing, so retry briefly.
    deadline = time.monotonic() + 5
    while True:
        with connect(server.address) as again:
            again.sendall(b"x")
            reply = again.recv(100)
        if reply == b"x" or time.monotonic() > deadline:
            break
    assert reply == b"x"


def test_framed_service_refuses_in_a_frame(serve):
    server = serve(EchoService(framed=True), max_connections=1)
    with connect(server.address) as first:
        first.sendall(b"\0\0\0\x01a")
        assert read_exactly(first, 5) == b"\0\0\0\x01a"
        with connect(server.address) as second:
            refusal = read_to_eof(second)
    assert refusal[4:] == b"ERR busy: too many connections (limit 1)"
    assert int.from_bytes(refusal[:4], "big") == len(refusal) - 4


def test_a_refused_client_that_already_sent_data_still_reads_the_refusal(serve):
    server = serve(EchoService(), max_connections=1)
    with connect(server.address) as first:
        echo_once(first)
        with connect(server.address) as second:
            second.sendall(b"hello?" * 1000)  # unread data must not turn our reply into a reset
            assert read_to_eof(second).startswith(b"ERR busy")


def test_refused_clients_lingering_at_once_are_bounded(serve):
    # A flood of refused clients that never close: MAX_LINGERING_REFUSALS of them linger
    # (the server keeps reading, so their late bytes cause no reset); past that, the
    # refusal is sent and the socket closed at once, so late bytes meet a reset.
    server = serve(EchoService(), max_connections=1)
    with connect(server.address) as first, contextlib.ExitStack() as flood:
        echo_once(first)
        refused = [
            flood.enter_context(connect(server.address)) for _ in range(MAX_LINGERING_REFUSALS + 1)
        ]
        for sock in refused:
            assert read_to_eof(sock).startswith(b"ERR busy")  # the refusal, then our FIN
        assert reset_within(refused[-1], LINGER_TIMEOUT / 2)
        assert not reset_within(refused[0], 0.05)  # still lingering
        echo_once(first)


def test_a_refused_client_that_keeps_sending_is_cut_after_linger_bytes(serve):
    # Lingering reads and drops a refused client's bytes, but not without end: past
    # LINGER_BYTES the server closes, and the flood meets a reset, well before LINGER_TIMEOUT.
    server = serve(EchoService(), max_connections=1)
    with connect(server.address) as first, connect(server.address) as flood:
        echo_once(first)
        assert_flood_is_cut(flood.sendall)
        echo_once(first)


def test_a_silent_client_is_closed_at_the_idle_timeout(serve):
    server = serve(EchoService(), idle_timeout=0.3)
    with connect(server.address) as sock:
        echo_once(sock)
        started = time.monotonic()
        assert read_to_eof(sock) == b""  # blocks until the server closes us
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3


def test_activity_postpones_the_idle_timeout(serve):
    server = serve(EchoService(), idle_timeout=0.5)
    with connect(server.address) as sock:
        started = time.monotonic()
        for _ in range(8):  # 8 x 0.15 s of activity: longer than the timeout in total
            echo_once(sock)
            ready = selectors.DefaultSelector()
            ready.register(sock, selectors.EVENT_READ)
            assert ready.select(0.15) == []  # still open: nothing (not even EOF) to read
            ready.close()
        assert time.monotonic() - started > 0.5
        echo_once(sock)


class _Fragile(StreamService):
    name = "fragile"

    def handler(self) -> StreamHandler:
        class Handler(StreamHandler):
            def data_received(self, data: bytes) -> None:
                if b"boom" in data:
                    raise RuntimeError("a bug in the handler")
                self.transport.write(data)

        return Handler()


def test_a_handler_bug_costs_one_connection_not_the_server(serve, caplog):
    server = serve(_Fragile())
    with connect(server.address) as healthy, connect(server.address) as doomed:
        echo_once(healthy)
        doomed.sendall(b"boom")
        assert read_to_eof(doomed) == b""
        echo_once(healthy)
    assert "handler error" in caplog.text


def test_a_client_that_sends_without_reading_is_throttled_not_buffered(serve):
    server = serve(EchoService())
    with connect(server.address) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        chunk = b"x" * 1024 * 1024
        sent = 0
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_WRITE)
        while sent < 256 * 1024 * 1024:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                if not selector.select(1.0):
                    break  # the server stopped reading from us: backpressure works
        selector.close()
    # Kernel buffers on both sides hold a few MiB; the server itself must hold little.
    assert sent < 48 * 1024 * 1024


def test_shutdown_stops_accepting_but_lets_open_connections_finish(serve):
    server = serve(EchoService())
    sock = connect(server.address)
    echo_once(sock)
    stopper = threading.Thread(target=server.shutdown, args=(10.0,))
    started = time.monotonic()
    stopper.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait for the port to close
        try:
            connect(server.address, timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
            break  # a reset or a dropped SYN: this attempt raced the listening socket's close
    else:
        pytest.fail("the server kept accepting after shutdown()")
    echo_once(sock, b"still served while draining")
    sock.close()
    stopper.join(5)
    assert not stopper.is_alive()
    assert time.monotonic() - started < 5  # it did not wait out the 10 s drain


def test_shutdown_closes_what_is_left_after_the_drain_timeout(serve):
    server = serve(EchoService())
    with connect(server.address) as sock:
        echo_once(sock)
        started = time.monotonic()
        server.shutdown(0.3)
        assert time.monotonic() - started < 4
        assert read_to_eof(sock) == b""
