"""--token on the message server, both runtimes: the gate, both clients, and that a
refused client never reaches the wrapped service."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import enlace.asyncio
import enlace.exceptions
import enlace.sync
from enlace.policy import ConnectionPolicy
from enlace.protocol.envelope import loads
from enlace.services.base import StreamHandler, StreamService
from enlace.services.message import MessageService
from enlace.services.token import TokenService
from tests.conftest import connect, read_exactly, read_to_eof
from tests.services.test_message import TLS_REFUSAL, client_hello
from tests.test_tls import server_ssl, tls_connect

SECRET = "s3cret"


class Counting(StreamService):
    """A message server that counts the handlers it was asked for."""

    name = "message"

    def __init__(self) -> None:
        self.inner = MessageService()
        self.handlers = 0

    def handler(self) -> StreamHandler:
        self.handlers += 1
        return self.inner.handler()


def test_right_token_then_the_service_as_usual(serve):
    counting = Counting()
    server = serve(TokenService(counting, SECRET, fail_delay=0.2))
    with connect(server.address) as sock:
        sock.sendall(b"/token s3cret\n/upper hola\n")
        assert read_exactly(sock, len(b"token accepted\nHOLA\n")) == b"token accepted\nHOLA\n"
    assert counting.handlers == 1


@pytest.mark.parametrize(
    ("first", "answer"),
    [
        (b"/token nope\n/upper hola\n", b"ERR bad_token: wrong token\n"),
        (b"/upper hola\n", b'ERR token_required: this server needs a token first: send "/token '),
    ],
    ids=["wrong", "missing"],
)
def test_wrong_or_missing_token_one_error_then_a_delayed_close(serve, first, answer):
    counting = Counting()
    server = serve(TokenService(counting, SECRET, fail_delay=0.3))
    with connect(server.address) as sock:
        started = time.monotonic()
        sock.sendall(first)
        reply = read_to_eof(sock)
        elapsed = time.monotonic() - started
    assert reply.startswith(answer)
    assert b"HOLA" not in reply
    assert 0.25 <= elapsed < 3
    assert counting.handlers == 0  # the wrapped service never saw the client


def test_json_client_gets_a_json_reply_with_its_id(serve):
    server = serve(TokenService(MessageService(), SECRET))
    body = b'{"id": 1, "cmd": "token", "args": ["s3cret"]}'
    request = b'{"id": 2, "cmd": "upper", "args": ["hola"]}'
    with connect(server.address) as sock:
        sock.sendall(
            len(body).to_bytes(4, "big") + body + len(request).to_bytes(4, "big") + request
        )
        first = loads(read_exactly(sock, int.from_bytes(read_exactly(sock, 4), "big")))
        second = loads(read_exactly(sock, int.from_bytes(read_exactly(sock, 4), "big")))
    assert first == {"id": 1, "ok": True, "result": "token accepted"}
    assert second == {"id": 2, "ok": True, "result": "HOLA"}


def test_both_clients_present_the_token(serve, runtime):
    server = serve(TokenService(MessageService(), SECRET, fail_delay=0.1))
    if runtime == "threads":
        with enlace.sync.Client(*server.address, token=SECRET) as client:
            assert client.request("upper", "hola") == "HOLA"
        with pytest.raises(enlace.exceptions.RequestError) as caught:
            enlace.sync.Client(*server.address, token="nope")
        assert caught.value.code == "bad_token"
    else:

        async def main() -> None:
            async with enlace.asyncio.Client(*server.address, token=SECRET) as client:
                assert await client.request("upper", "hola") == "HOLA"
            client = enlace.asyncio.Client(*server.address, token="nope")
            with pytest.raises(enlace.exceptions.RequestError) as caught:
                await client.open()
            assert caught.value.code == "bad_token"

        asyncio.run(main())


def test_a_token_to_a_server_without_one_is_harmless(serve):
    server = serve(MessageService())
    with enlace.sync.Client(*server.address, token=SECRET) as client:
        assert client.request("ping") == "pong"


# -- the access policy on both runtimes: refused clients never reach a handler ------------


def test_allow_list_closes_others_at_once(serve):
    counting = Counting()
    server = serve(counting, allow=["10.0.0.0/8", "::1"])
    with connect(server.address) as sock:
        sock.sendall(b"/ping\n")
        try:
            said = read_to_eof(sock)
        except ConnectionResetError:  # closed with our bytes unread: a reset, as intended
            said = b""
        assert said == b""
    assert counting.handlers == 0
    allowed = serve(MessageService(), allow=["127.0.0.0/8"])
    with connect(allowed.address) as sock:
        sock.sendall(b"/ping\n")
        assert read_exactly(sock, 5) == b"pong\n"


def test_per_ip_cap_refuses_like_the_global_cap(serve):
    counting = Counting()
    server = serve(counting, policy=ConnectionPolicy(max_per_ip=1, count_loopback=True))
    with connect(server.address) as first:
        first.sendall(b"/ping\n")
        assert read_exactly(first, 5) == b"pong\n"
        with connect(server.address) as second:
            refusal = read_to_eof(second)
    assert b"ERR busy: too many connections from 127.0.0.1 (limit 1 per address)" in refusal
    assert counting.handlers == 1
    # Once the first has gone, the address has its slot back.
    deadline = time.monotonic() + 5
    while server.connection_count and time.monotonic() < deadline:
        time.sleep(0.01)
    with connect(server.address) as third:
        third.sendall(b"/ping\n")
        assert read_exactly(third, 5) == b"pong\n"


# -- keep-alives before the token, and a TLS client at the gate ------------------------------


@pytest.mark.parametrize(
    ("keep_alive", "token", "request_", "expected"),
    [
        (
            b"\x00\x00\x00\x00",
            b"\x00\x00\x00\x0d/token s3cret",
            b"\x00\x00\x00\x0b/upper hola",
            b"\x00\x00\x00\x0etoken accepted\x00\x00\x00\x04HOLA",
        ),
        (b"\n", b"/token s3cret\n", b"/upper hola\n", b"token accepted\nHOLA\n"),
        (b"\r\n", b"/token s3cret\r\n", b"/upper hola\r\n", b"token accepted\nHOLA\n"),
    ],
    ids=["framed", "line", "crlf"],
)
def test_keep_alives_before_the_token_get_no_reply_and_do_not_count(
    serve, keep_alive, token, request_, expected
):
    counting = Counting()
    server = serve(TokenService(counting, SECRET, fail_delay=0.2))
    with connect(server.address) as sock:
        sock.sendall(keep_alive)
        sock.sendall(keep_alive + token + request_)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == expected  # nothing for the keep-alives, no token_required
    assert counting.handlers == 1


def test_a_tls_client_at_the_gate_is_told_so(serve):
    counting = Counting()
    server = serve(TokenService(counting, SECRET, fail_delay=0.1))
    with connect(server.address) as sock:
        sock.sendall(client_hello())
        assert read_to_eof(sock) == TLS_REFUSAL
    assert counting.handlers == 0


def test_a_tls_client_refused_at_the_gate_is_closed_after_the_delay(serve):
    # The refusal pauses reading; a TLS transport closes only once it has read the
    # client's close_notify or its FIN, so reading must come back on for the close,
    # or the connection stays until the server's shutdown gives up on it.
    server = serve(TokenService(Counting(), SECRET, fail_delay=0.2), ssl=server_ssl())
    with tls_connect(server.address) as tls:
        tls.sendall(b"/token nope\n")
        assert read_exactly(tls, len(b"ERR bad_token: wrong token\n")).startswith(b"ERR bad")
    # Closed without close_notify, as `enlace send` and many clients leave: the FIN.
    deadline = time.monotonic() + 3
    while server.connection_count:
        assert time.monotonic() < deadline, "the refused TLS connection was never closed"
        time.sleep(0.01)
