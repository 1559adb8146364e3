"""The thread runtime's server: clients still being set up at shutdown, refusals over TLS."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable

import enlace.sync
from enlace.policy import ConnectionPolicy
from enlace.services import EchoService
from tests.conftest import connect, read_to_eof
from tests.test_tls import client_ssl, server_ssl, tls_connect


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_a_client_whose_handshake_ends_after_shutdown_is_closed_not_served():
    # Shutdown closes the connections it finds; one still in its TLS handshake is
    # not among them yet, and must be closed when it gets there, not served.
    policy = ConnectionPolicy(count_loopback=True)
    server = enlace.sync.Server(EchoService(), "127.0.0.1", 0, ssl=server_ssl(), policy=policy)
    server.start()
    with connect(server.address) as raw:
        wait_for(lambda: policy.count("127.0.0.1") == 1)  # accepted: its thread awaits a hello
        server.shutdown(drain_timeout=0)
        with client_ssl().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"hola\n")
            assert read_to_eof(tls) == b""


def test_a_tls_client_over_capacity_that_talks_first_still_reads_the_refusal():
    # The refusal costs a handshake; after it the server reads what the client sends
    # until the client closes (or 2 s), so no reset destroys the unread refusal.
    server = enlace.sync.Server(EchoService(), "127.0.0.1", 0, ssl=server_ssl(), max_connections=1)
    with server, tls_connect(server.address) as first:
        first.sendall(b"x")
        assert first.recv(1) == b"x"
        with tls_connect(server.address) as second:
            for _ in range(3):
                second.sendall(b"/ping\n")
                time.sleep(0.1)  # the server takes each before the next comes
            assert read_to_eof(second).startswith(b"ERR busy: too many connections")


def test_shutdown_ends_the_refused_tls_clients_it_finds():
    # A refused TLS client costs a thread (its handshake, then a lingering read):
    # shutdown must end those too, not leave them for up to handshake_timeout + 2 s.
    server = enlace.sync.Server(
        EchoService(), "127.0.0.1", 0, ssl=server_ssl(), max_connections=1, handshake_timeout=30
    )
    server.start()
    earlier = set(threading.enumerate())  # other tests' threads may still be ending
    with tls_connect(server.address) as first, connect(server.address) as stalled:
        first.sendall(b"x")
        assert first.recv(1) == b"x"
        # Half a handshake: send the hello, read the server's answer, then go silent.
        # The refusal's thread now waits for the rest, for up to handshake_timeout.
        hello = client_ssl().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
        with contextlib.suppress(ssl.SSLWantReadError):
            hello.do_handshake()
        stalled.sendall(outgoing.read())
        assert stalled.recv(1)  # the server hello: the refusal's thread is handshaking
        started = time.monotonic()
        server.shutdown(drain_timeout=0)
        assert time.monotonic() - started < 5
        ours = set(threading.enumerate()) - earlier
        assert not any(thread.name == "enlace-refuse" for thread in ours)
        assert not server._tls_refusals
        stalled.settimeout(5)  # closed by the server, so this ends: EOF, not a timeout
        read_to_eof(stalled, limit=1 << 16)
