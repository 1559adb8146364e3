"""The TLS acceptor on its own: refusals before the handshake, and how they end.

A :class:`TLSAcceptor` over a real listening socket on loopback, on asyncio's own
loop and on uvloop (where installed), with a plain echo protocol for admitted
clients and a ``refusal_reason`` the test controls. The clients are Python's ssl
module and raw sockets.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enlace.asyncio.tlsaccept import TLSAcceptor
from enlace.limits import LINGER_BYTES, LINGER_TIMEOUT
from enlace.policy import ConnectionPolicy
from enlace.sockets import listen_tcp, peer_address
from enlace.tls import tls_required_answer
from tests.conftest import LoopThread, connect, read_exactly, read_to_eof, uvloop
from tests.test_tls import assert_echo_round_trip, server_ssl, tls_connect

LOOPS = ("asyncio", "uvloop") if uvloop is not None else ("asyncio",)
REFUSAL = b"no room: full\r\n"


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Records(logging.Handler):
    """The acceptor's log lines, for the tests to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def wait_for(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no log line with {text!r}: {self.lines}"
            time.sleep(0.01)


class Running:
    def __init__(self, loop: LoopThread, acceptor: TLSAcceptor, records: Records) -> None:
        self.loop = loop
        self.acceptor = acceptor
        self.records = records
        self.address = peer_address(acceptor.listener.getsockname())


@pytest.fixture(params=LOOPS)
def accept(request: pytest.FixtureRequest) -> Iterator[Callable[..., Running]]:
    loop = LoopThread(use_uvloop=request.param == "uvloop")
    logger = logging.getLogger(f"enlace.test.tlsaccept.{request.param}")
    records = Records()
    logger.addHandler(records)
    logger.setLevel(logging.INFO)  # failed handshakes are INFO lines
    started: list[Running] = []

    def start(refusal_reason: Callable[[str, int, int], str | None], **options: Any) -> Running:
        async def make() -> TLSAcceptor:
            acceptor = TLSAcceptor(
                listen_tcp("127.0.0.1", 0),
                ssl=server_ssl(),
                protocol_factory=Echo,
                plain_answer=tls_required_answer,
                policy=ConnectionPolicy(),
                logger=logger,
                max_handshakes=16,
                handshake_timeout=options.pop("handshake_timeout", 5.0),
                refusal_reason=refusal_reason,
                refusal_answer=lambda reason: f"no room: {reason}\r\n".encode(),
            )
            acceptor.start()
            return acceptor

        running = Running(loop, loop.run(make()), records)
        started.append(running)
        return running

    yield start
    for running in started:
        loop.run(running.acceptor.stop())
    loop.close()
    logger.removeHandler(records)


def refuse_all(host: str, pending: int, pending_from_host: int) -> str:
    return "full"


def test_refusal_reason_and_answer_go_together():
    with pytest.raises(ValueError, match="go together"):
        TLSAcceptor(
            socket.socket(),
            ssl=server_ssl(),
            protocol_factory=Echo,
            plain_answer=tls_required_answer,
            policy=ConnectionPolicy(),
            logger=logging.getLogger("enlace.test"),
            max_handshakes=1,
            handshake_timeout=1.0,
            refusal_reason=refuse_all,
        )


def test_refusal_reason_is_told_the_handshakes_admitted_and_in_progress(accept):
    calls: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def busy_while_one_shakes(host: str, pending: int, pending_from_host: int) -> str | None:
        with lock:
            calls.append((host, pending, pending_from_host))
        return "full" if pending else None

    running = accept(busy_while_one_shakes)
    with connect(running.address) as shaking:
        shaking.sendall(b"\x16")  # admitted, then stuck in the loop's handshake
        with tls_connect(running.address) as second:
            assert read_to_eof(second) == REFUSAL
        assert calls == [("127.0.0.1", 0, 0), ("127.0.0.1", 1, 1)]
    # Once that handshake failed, it no longer counts.
    running.records.wait_for("TLS handshake failed")
    with tls_connect(running.address) as third:
        assert_echo_round_trip(third, b"admitted")
    assert calls[-1] == ("127.0.0.1", 0, 0)


def test_a_refused_client_that_stalls_its_handshake_is_cut_at_the_handshake_timeout(accept):
    running = accept(refuse_all, handshake_timeout=0.3)
    with connect(running.address) as stalling:
        started = time.monotonic()
        stalling.sendall(b"\x16")  # a TLS client, refused, that never finishes its hello
        assert read_to_eof(stalling) == b""
        assert time.monotonic() - started < LINGER_TIMEOUT
    running.records.wait_for("TLS handshake failed: timed out")
    assert any("refused: full" in line for line in running.records.lines)


def test_a_refused_client_that_floods_is_cut_after_linger_bytes(accept):
    running = accept(refuse_all)
    with tls_connect(running.address) as flooding:
        assert read_exactly(flooding, len(REFUSAL)) == REFUSAL
        sent, started = 0, time.monotonic()
        chunk = b"x" * 65536
        with pytest.raises(OSError) as cut:
            while sent < 64 * LINGER_BYTES:
                flooding.sendall(chunk)
                sent += len(chunk)
        assert not isinstance(cut.value, TimeoutError)
        # Cut once LINGER_BYTES were dropped, well before the linger timeout.
        assert LINGER_BYTES <= sent < 64 * LINGER_BYTES
        assert time.monotonic() - started < LINGER_TIMEOUT


def test_a_plain_client_that_floods_after_its_answer_is_cut_after_linger_bytes(accept):
    running = accept(refuse_all)
    with connect(running.address) as plain:
        plain.sendall(b"hola\n")
        answer = tls_required_answer(b"h")
        assert read_exactly(plain, len(answer)) == answer
        sent, started = 0, time.monotonic()
        with pytest.raises(OSError) as cut:
            while sent < 64 * LINGER_BYTES:
                plain.sendall(b"x" * 65536)
                sent += 65536
        assert not isinstance(cut.value, TimeoutError)
        assert time.monotonic() - started < LINGER_TIMEOUT


def test_stop_ends_the_lingering_refusals(accept):
    running = accept(refuse_all)
    with tls_connect(running.address) as lingering:
        assert read_exactly(lingering, len(REFUSAL)) == REFUSAL
        started = time.monotonic()
        running.loop.run(running.acceptor.stop())
        # Closed by stop(), not at the end of the linger: our bytes meet a reset.
        with pytest.raises(OSError) as cut:
            while time.monotonic() - started < LINGER_TIMEOUT:
                lingering.sendall(b"x")
                time.sleep(0.05)  # pacing, a byte at a time
        assert not isinstance(cut.value, TimeoutError)
        assert time.monotonic() - started < LINGER_TIMEOUT / 2
