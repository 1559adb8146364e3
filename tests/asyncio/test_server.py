"""The asyncio runtime's server over TLS: who is refused before the handshake.

Runs enlace.asyncio.Server on asyncio's own loop and on uvloop (where installed),
with real sockets and real TLS clients on loopback. A client that sent only the
first byte of a handshake has been admitted (the acceptor saw a TLS client) and
stays in the loop's handshake, not yet a connection: these tests check that it
still counts against the caps, as the thread runtime's slot taken on accept does.
The last tests ask ``Server._tls_refusal`` directly how often it asks the policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from enlace.asyncio import Server
from enlace.policy import ConnectionPolicy
from enlace.services import EchoService
from tests.conftest import LoopThread, connect, read_to_eof, uvloop
from tests.test_tls import assert_echo_round_trip, server_ssl, tls_connect

LOOPS = ("asyncio", "uvloop") if uvloop is not None else ("asyncio",)


@pytest.fixture(params=LOOPS)
def tls_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    loop = LoopThread(use_uvloop=request.param == "uvloop")
    servers: list[Server] = []

    def start(**options: Any) -> Server:
        server = Server(EchoService(), "127.0.0.1", 0, ssl=server_ssl(), **options)
        loop.run(server.start())
        servers.append(server)
        return server

    yield start
    for server in servers:
        loop.run(server.shutdown(0.0))
    loop.close()


def test_a_handshake_in_progress_holds_a_connection_slot(tls_server):
    server = tls_server(max_connections=2)
    with tls_connect(server.address) as first, connect(server.address) as shaking:
        assert_echo_round_trip(first, b"x")  # one connection
        shaking.sendall(b"\x16")  # a TLS client, admitted, still in its handshake
        with tls_connect(server.address) as third:
            assert read_to_eof(third) == b"ERR busy: too many connections (limit 2)\r\n"
        assert_echo_round_trip(first, b"still served")


def test_handshakes_in_progress_count_against_the_per_address_cap(tls_server):
    policy = ConnectionPolicy(max_per_ip=1, count_loopback=True)
    server = tls_server(policy=policy)
    with connect(server.address) as shaking:
        shaking.sendall(b"\x16")
        with tls_connect(server.address) as second:
            assert read_to_eof(second) == (
                b"ERR busy: too many connections from 127.0.0.1 (limit 1 per address)\r\n"
            )
        # Asking the policy left nothing counted: the first client is not a connection yet.
        assert policy.count("127.0.0.1") == 0


def test_a_client_within_the_per_address_cap_is_served_beside_a_handshake(tls_server):
    policy = ConnectionPolicy(max_per_ip=2, count_loopback=True)
    server = tls_server(policy=policy)
    with connect(server.address) as shaking:
        shaking.sendall(b"\x16")
        with tls_connect(server.address) as second:
            assert_echo_round_trip(second, b"served")
            assert policy.count("127.0.0.1") == 1  # the connection; the handshake is not counted


def test_the_pending_handshakes_from_an_address_count_against_its_cap():
    # Decided before the handshake, in one question to the policy however many
    # handshakes are in progress (a local benchmark can have a thousand), counting nothing.
    policy = ConnectionPolicy(max_per_ip=3)
    server = Server(EchoService(), ssl=server_ssl(), max_connections=None, policy=policy)
    assert server._tls_refusal("192.0.2.7", 2, 2) is None  # two handshakes and this one: 3
    assert server._tls_refusal("192.0.2.7", 3, 3) == (
        "too many connections from 192.0.2.7 (limit 3 per address)"
    )
    assert server._tls_refusal("192.0.2.8", 3, 0) is None  # others' handshakes: not its cap
    assert server._tls_refusal("127.0.0.1", 1000, 1000) is None  # loopback is not capped
    assert policy.count("192.0.2.7") == 0
    uncapped = Server(EchoService(), ssl=server_ssl(), policy=ConnectionPolicy(max_per_ip=None))
    assert uncapped._tls_refusal("192.0.2.7", 1000, 1000) is None
