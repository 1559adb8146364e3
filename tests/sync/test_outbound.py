"""The thread runtime's sending side: straight sends, the bounded queue, its flusher, failures."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from enlace.sync.outbound import Outbound
from tests.conftest import read_exactly


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on loopback: (the server's side, the client's side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        server, _ = listener.accept()
    # A fixed send buffer (the kernel's grows to 4 MiB), so a client that does not read
    # fills the kernel's buffers after a few hundred KiB. Not smaller, nor a small receive
    # buffer: under a few of loopback's 64 KiB segments TCP crawls (persist-timer probes,
    # one segment per delayed ACK), and drain() timed out now and then.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the runtimes do
    with server, client:
        yield server, client


class _Failures:
    """The on_failure callback: the reasons it was told, in order."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str, error: OSError | None) -> None:
        self.reasons.append(reason)


def test_a_send_the_socket_takes_leaves_nothing_waiting(pair):
    server, client = pair
    outbound = Outbound(server, _Failures())
    outbound.send(b"hola", False)
    assert outbound.waiting == 0
    assert outbound.sent == 4
    assert read_exactly(client, 4) == b"hola"


def test_what_the_socket_refuses_waits_and_is_flushed_in_order_once_the_client_reads(pair):
    server, client = pair
    failures = _Failures()
    outbound = Outbound(server, failures, max_outbound=8 * 1024 * 1024)
    chunks = [bytes([i]) * 64 * 1024 for i in range(32)]  # 2 MiB: far more than the buffers
    for chunk in chunks:
        outbound.send(chunk, False)  # another thread's send: never blocks
    assert outbound.waiting > 0
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_exactly(client, 2 * 1024 * 1024)))
    reader.start()
    assert outbound.drain(5)
    reader.join(5)
    assert received == [b"".join(chunks)]
    assert outbound.sent == 2 * 1024 * 1024
    assert failures.reasons == []


def test_a_send_to_a_full_socket_waits_and_is_not_lost(pair):
    # Nothing waiting in Outbound, but the kernel's buffers are full (filled behind its
    # back): the first send gets EAGAIN and must queue, then go out once the client reads.
    server, client = pair
    server.setblocking(False)
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while filled < 64 * 1024 * 1024:
            filled += server.send(b"f" * 65536)
    outbound = Outbound(server, _Failures())
    outbound.send(b"tail", False)
    assert outbound.waiting == 4
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_exactly(client, filled + 4)))
    reader.start()
    assert outbound.drain(5)
    reader.join(5)
    assert received == [b"f" * filled + b"tail"]


def test_a_client_over_max_outbound_is_a_slow_consumer_and_loses_its_output(pair):
    server, _client = pair
    failures = _Failures()
    outbound = Outbound(server, failures, max_outbound=256 * 1024)
    for _ in range(64):
        outbound.send(b"x" * 64 * 1024, False)
        if failures.reasons:
            break
    assert failures.reasons and failures.reasons[0].startswith("slow consumer: ")
    assert "(limit 262144)" in failures.reasons[0]
    assert outbound.waiting == 0  # dropped, not kept
    outbound.send(b"more", False)  # after the failure: ignored, no second report
    assert len(failures.reasons) == 1


def test_a_lost_connection_is_reported_once(pair):
    server, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset: the next sends fail
    failures = _Failures()
    outbound = Outbound(server, failures)
    for _ in range(10):
        outbound.send(b"x" * 1024, False)
        if failures.reasons:
            break
    assert len(failures.reasons) == 1
    assert failures.reasons[0].startswith("connection lost: ")


def test_concurrent_senders_never_interleave_their_frames(pair):
    # Broadcasts run on the senders' threads: each frame must arrive whole and in each
    # sender's order, also while the socket is full and frames are partly taken and queued.
    server, client = pair
    outbound = Outbound(server, _Failures(), max_outbound=64 * 1024 * 1024)
    senders, frames_each = 4, 200

    def send(sender: int) -> None:
        for n in range(frames_each):
            payload = f"{sender}:{n}:".encode() + b"y" * (n * 379 % 30000)
            outbound.send(struct.pack(">I", len(payload)) + payload, False)

    def read_slowly() -> None:
        # Small reads keep the socket nearly full, so that sends are often partial.
        chunks = []
        while chunk := client.recv(4096):
            chunks.append(chunk)
        received.append(b"".join(chunks))

    received: list[bytes] = []
    reader = threading.Thread(target=read_slowly)
    reader.start()
    threads = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert outbound.drain(5)
    server.shutdown(socket.SHUT_WR)
    reader.join(5)
    (data,) = received
    seen: dict[int, list[int]] = {s: [] for s in range(senders)}
    while data:
        (length,) = struct.unpack(">I", data[:4])
        payload, data = data[4 : 4 + length], data[4 + length :]
        sender, n, filler = payload.split(b":", 2)
        assert filler == b"y" * (int(n) * 379 % 30000)
        seen[int(sender)].append(int(n))
    assert all(order == list(range(frames_each)) for order in seen.values())


def test_the_own_thread_waits_while_the_client_lags_then_goes_on(pair):
    # The connection's own thread is throttled (it would otherwise read requests
    # faster than the client reads replies); it resumes as the client reads.
    server, client = pair
    outbound = Outbound(server, _Failures(), max_outbound=64 * 1024 * 1024, slow_timeout=5)
    total = 4 * 1024 * 1024
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_exactly(client, total)))
    reader.start()
    for _ in range(total // (64 * 1024)):
        outbound.send(b"z" * 64 * 1024, True)
        assert outbound.waiting <= 2 * 1024 * 1024  # never far above the high-water mark
    assert outbound.drain(5)
    reader.join(5)
    assert received == [b"z" * total]
