"""TLS on both runtimes (and uvloop): every service, both clients, and every way it fails.

Certificates come from trustme (a throwaway CA made in the test); the clients
are Python's own ssl module and enlace's two Client classes. After each
failure, a good client is served, so a failure never costs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import select
import socket
import ssl
import threading
import time

import pytest
import trustme

import enlace.asyncio
import enlace.sync
from enlace.exceptions import TLSError
from enlace.limits import LINGER_TIMEOUT, MAX_LINGERING_REFUSALS
from enlace.services import EchoService, GreetService, UpperService
from enlace.services.chat import ChatService
from enlace.services.message import MessageService
from enlace.tls import TLSSocket, client_context, server_context, tls_required_answer
from tests.conftest import connect, read_exactly, read_to_eof

CA = trustme.CA()
OTHER_CA = trustme.CA()
CERT = CA.issue_cert("localhost", "127.0.0.1", "::1")


def server_ssl(cert: trustme.LeafCert = CERT) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def client_ssl(ca: trustme.CA = CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_connect(address: tuple[str, int], name: str = "localhost") -> ssl.SSLSocket:
    sock = client_ssl().wrap_socket(connect(address), server_hostname=name)
    sock.settimeout(5)
    return sock


def sync_client(address: tuple[str, int], **options: object) -> enlace.sync.Client:
    return enlace.sync.Client(*address, ssl=client_ssl(), server_hostname="localhost", **options)


def assert_echo_round_trip(sock: ssl.SSLSocket, data: bytes) -> None:
    sock.sendall(data)
    assert read_exactly(sock, len(data)) == data


def assert_echo_still_serves(address: tuple[str, int]) -> None:
    with tls_connect(address) as sock:
        sock.sendall(b"still here\n")
        assert read_exactly(sock, 11) == b"still here\n"


# -- every service, both runtimes ------------------------------------------------------


def test_echo_over_tls_streams_both_ways(serve, runtime):
    server = serve(EchoService(), ssl=server_ssl())
    payload = bytes(range(256)) * 16 * 1024  # 4 MiB: the server's partial writes are exercised
    # One thread drives the client's SSLSocket: OpenSSL forbids using one SSL object
    # from two threads at once (a reader thread beside sendall() corrupts the stream
    # now and then), so the client sends 256 KiB and reads its echo back, in turns.
    with tls_connect(server.address) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        received = bytearray()
        step = 256 * 1024
        for start in range(0, len(payload), step):
            sock.sendall(payload[start : start + step])
            while len(received) < start + step:
                chunk = sock.recv(step)
                assert chunk, "the server closed before echoing everything"
                received.extend(chunk)
        assert bytes(received) == payload


def test_upper_and_greet_over_tls(serve):
    upper = serve(UpperService(), ssl=server_ssl())
    with tls_connect(upper.address) as sock:
        sock.sendall("hola señor\n".encode())
        assert read_exactly(sock, len("HOLA SEÑOR\n".encode())) == "HOLA SEÑOR\n".encode()
    greet = serve(GreetService(), ssl=server_ssl())
    with tls_connect(greet.address) as sock:
        assert read_to_eof(sock) == b"0. Hola nuevo amigo!\n"


def test_message_server_over_tls_with_both_clients(serve, runtime):
    server = serve(MessageService(), ssl=server_ssl())
    if runtime == "threads":
        with sync_client(server.address) as client:
            assert client.request("upper", "hola") == "HOLA"
            assert client.command("/upper hola servidor") == "HOLA SERVIDOR"
    else:

        async def main() -> None:
            async with enlace.asyncio.Client(
                *server.address, ssl=client_ssl(), server_hostname="localhost"
            ) as client:
                assert await client.request("upper", "hola") == "HOLA"

        asyncio.run(main())


def test_over_capacity_tls_client_reads_the_refusal(serve):
    server = serve(EchoService(), ssl=server_ssl(), max_connections=1)
    with tls_connect(server.address) as first:
        first.sendall(b"x")
        assert first.recv(1) == b"x"
        with tls_connect(server.address) as second:
            assert read_to_eof(second).startswith(b"ERR busy: too many connections")


def test_a_refused_tls_client_that_talks_first_still_reads_the_refusal(serve):
    # A client that writes before it reads: the server reads and drops its requests
    # after the encrypted refusal (lingering close) instead of closing on them, which
    # would reset the connection and destroy the unread "ERR busy".
    server = serve(EchoService(), ssl=server_ssl(), max_connections=1)
    with tls_connect(server.address) as first:
        first.sendall(b"x")
        assert first.recv(1) == b"x"
        with tls_connect(server.address) as second:
            for _ in range(3):
                second.sendall(b"/ping\n")
                time.sleep(0.1)  # pacing: each request reaches the server on its own
            assert read_to_eof(second) == b"ERR busy: too many connections (limit 1)\r\n"
        assert_echo_round_trip(first, b"still served")


def test_a_refused_tls_client_that_trickles_is_cut_at_the_linger_timeout(serve):
    server = serve(EchoService(), ssl=server_ssl(), max_connections=1)
    with tls_connect(server.address) as first, tls_connect(server.address) as second:
        assert_echo_round_trip(first, b"x")  # admitted before the second asked
        assert second.recv(100) == b"ERR busy: too many connections (limit 1)\r\n"
        started = time.monotonic()
        with pytest.raises(OSError) as cut:  # closed by the server: our bytes meet a reset
            while time.monotonic() - started < 5:
                second.sendall(b"x")
                assert_echo_round_trip(first, b"y")  # the admitted client is served meanwhile
                time.sleep(0.2)  # the trickle: a byte well within the linger timeout
        assert not isinstance(cut.value, TimeoutError)
        # Read and dropped for LINGER_TIMEOUT in all, then closed: not at once, not later.
        assert LINGER_TIMEOUT - 0.5 < time.monotonic() - started < LINGER_TIMEOUT + 1.5
        assert_echo_round_trip(first, b"z")


def test_refusals_lingering_at_once_are_bounded(serve):
    # A flood of refused clients that never close: MAX_LINGERING_REFUSALS of them get
    # the refusal and linger; the next is closed at once, without a handshake.
    server = serve(EchoService(), ssl=server_ssl(), max_connections=1)
    context = client_ssl()  # one for all: making one takes tens of milliseconds

    def refused_client() -> ssl.SSLSocket:
        return flood.enter_context(
            context.wrap_socket(connect(server.address), server_hostname="localhost")
        )

    with tls_connect(server.address) as first, contextlib.ExitStack() as flood:
        assert_echo_round_trip(first, b"x")
        started = time.monotonic()
        for _ in range(MAX_LINGERING_REFUSALS):
            assert refused_client().recv(100).startswith(b"ERR busy")
        # All of them still linger (they linger LINGER_TIMEOUT at most).
        assert time.monotonic() - started < LINGER_TIMEOUT / 2
        started = time.monotonic()
        with pytest.raises(OSError) as closed:
            refused_client()
        assert not isinstance(closed.value, TimeoutError)
        assert time.monotonic() - started < LINGER_TIMEOUT / 2
        assert_echo_round_trip(first, b"still served")


def test_quit_over_tls_closes_at_once(serve):
    # Only refusals linger over TLS: a client that says /quit gets its reply and EOF.
    server = serve(MessageService(), ssl=server_ssl())
    with tls_connect(server.address) as sock:
        started = time.monotonic()
        sock.sendall(b"/quit\n")
        assert read_to_eof(sock) == b"bye\n"
        assert time.monotonic() - started < LINGER_TIMEOUT / 2


# -- failures: the client says one clear thing, the server goes on ------------------------


def test_wrong_ca_is_refused_by_the_client(serve):
    server = serve(MessageService(), ssl=server_ssl())
    with pytest.raises(TLSError, match="certificate not trusted"):
        enlace.sync.Client(*server.address, ssl=client_ssl(OTHER_CA), server_hostname="localhost")
    with sync_client(server.address) as client:
        assert client.request("ping") == "pong"


def test_wrong_name_is_refused_by_the_client(serve, runtime):
    server = serve(MessageService(), ssl=server_ssl())
    if runtime == "threads":
        with pytest.raises(TLSError, match="Hostname mismatch"):
            enlace.sync.Client(*server.address, ssl=client_ssl(), server_hostname="example.com")
    else:

        async def main() -> None:
            client = enlace.asyncio.Client(
                *server.address, ssl=client_ssl(), server_hostname="example.com"
            )
            with pytest.raises(TLSError, match="Hostname mismatch"):
                await client.open()

        asyncio.run(main())
    with sync_client(server.address) as client:
        assert client.request("ping") == "pong"


def test_expired_certificate_is_refused(serve):
    now = datetime.datetime.now(datetime.UTC)
    expired = CA.issue_cert(
        "localhost",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    server = serve(MessageService(), ssl=server_ssl(expired))
    with pytest.raises(TLSError, match="certificate has expired"):
        sync_client(server.address)


def test_plain_client_on_a_tls_port_is_told_in_clear_text(serve):
    server = serve(MessageService(), ssl=server_ssl())
    with connect(server.address) as sock:
        sock.sendall(b"/upper hola\n")
        assert (
            read_to_eof(sock) == b"ERR tls_required: this port speaks TLS (connect with --tls)\r\n"
        )
    with connect(server.address) as sock:  # a framed client gets a frame
        sock.sendall(b"\x00\x00\x00\x05/ping")
        assert read_to_eof(sock) == tls_required_answer(b"\x00")
    with sync_client(server.address) as client:
        assert client.request("upper", "sigo") == "SIGO"


def test_plain_client_that_keeps_sending_after_the_answer_is_cut(serve):
    # After its clear-text answer the server reads and drops what the client still
    # sends, for a bounded time: a client trickling bytes cannot hold the connection.
    server = serve(EchoService(), ssl=server_ssl())
    with connect(server.address) as sock:
        sock.sendall(b"hola\n")
        assert sock.recv(100).startswith(b"ERR tls_required")
        started = time.monotonic()
        with pytest.raises(OSError):  # closed by the server: our next bytes meet a reset
            while time.monotonic() - started < 5:
                sock.sendall(b"x")
                time.sleep(0.2)  # the trickle: a byte well within each read's timeout
        assert time.monotonic() - started < 4
    assert_echo_still_serves(server.address)


@pytest.mark.parametrize(
    "service",
    [GreetService(), EchoService(), MessageService(), ChatService()],
    ids=["greet", "echo", "message", "chat"],
)
def test_tls_client_on_a_plain_port_gets_one_clear_error(serve, service):
    server = serve(service)
    started = time.monotonic()
    with pytest.raises(TLSError, match=r"does not speak TLS \(plain TCP\?\)"):
        enlace.sync.Client(
            *server.address, ssl=client_ssl(), server_hostname="localhost", handshake_timeout=10
        )
    # At once: the message server answers a ClientHello (it waits for a client's first
    # bytes, so without that answer the client would wait out its handshake timeout).
    assert time.monotonic() - started < 3
    with connect(server.address) as sock:  # and the plain server goes on
        sock.sendall(b"/ping\n")  # greet greets, echo echoes, the message servers answer
        assert sock.recv(100)


def test_silent_client_is_cut_at_the_handshake_timeout(serve):
    server = serve(EchoService(), ssl=server_ssl(), handshake_timeout=0.3)
    with connect(server.address) as sock:
        started = time.monotonic()
        assert read_to_eof(sock) == b""
        assert time.monotonic() - started < 3
    assert_echo_still_serves(server.address)


# -- the pieces --------------------------------------------------------------------------


def test_server_context_names_a_bad_file(tmp_path):
    with pytest.raises(TLSError, match="no such file"):
        server_context(tmp_path / "missing.pem", tmp_path / "key.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(TLSError, match="cannot load TLS certificate"):
        server_context(bad, bad)


def test_contexts_refuse_tls_below_1_2():
    assert client_context().minimum_version == ssl.TLSVersion.TLSv1_2
    with CERT.private_key_and_cert_chain_pem.tempfile() as pem:
        assert server_context(pem).minimum_version == ssl.TLSVersion.TLSv1_2


def tls_pair() -> tuple[TLSSocket, TLSSocket]:
    """A server and a client TLSSocket over a socketpair, handshake done."""
    left, right = socket.socketpair()
    server = TLSSocket(left, server_ssl(), server_side=True)
    client = TLSSocket(right, client_ssl(), server_side=False, server_hostname="localhost")
    shaking = threading.Thread(target=client.handshake, args=(5,))
    shaking.start()
    server.handshake(5)
    shaking.join()
    return server, client


def test_tlssocket_nonblocking_send_never_loses_or_repeats_bytes():
    # A peer that reads slowly: send() keeps saying "would block", then takes the rest.
    server, client = tls_pair()
    server.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4096  # 1 MiB
    received = bytearray()

    def read() -> None:
        buffer = bytearray(65536)
        while len(received) < len(payload):
            size = client.recv_into(buffer)
            if not size:
                return
            received.extend(buffer[:size])

    reader = threading.Thread(target=read)
    reader.start()
    view, blocked = memoryview(payload), 0
    while view:
        try:
            view = view[server.send(view, socket.MSG_DONTWAIT) :]
        except BlockingIOError:
            blocked += 1
            select.select([], [server], [], 1.0)  # as the runtime's flusher polls
    reader.join(10)
    assert bytes(received) == payload
    assert blocked > 0  # the socket did push back, so the bookkeeping was exercised
    server.close()
    client.close()


def test_tlssocket_reads_every_waiting_record_in_one_call():
    # 64 KiB is four TLS records; once they have all arrived, one read returns them
    # all, so a bulk sender's message reaches the handler as one chunk, not four.
    server, client = tls_pair()
    payload = bytes(range(256)) * 256
    client.sendall(payload)  # a socketpair: sent means waiting in the server's buffer
    buffer = bytearray(256 * 1024)
    size = server.recv_into(buffer)
    assert bytes(buffer[:size]) == payload
    client.sendall(b"tail")  # and the next read waits for the next record
    assert server.recv(100) == b"tail"
    client.shutdown(socket.SHUT_WR)  # close_notify: the end of the stream
    assert server.recv(100) == b""
    server.close()
    client.close()


def test_tlssocket_send_takes_a_large_reply_in_one_call():
    # The runtime's Outbound starts a flusher thread for whatever send() leaves; a
    # 100 KiB reply (a 64 KiB echo and more) must go in one call when the socket has room.
    server, client = tls_pair()
    payload = b"x" * (100 * 1024)
    assert server.send(payload, socket.MSG_DONTWAIT) == len(payload)
    received = bytearray()
    while len(received) < len(payload):
        chunk = client.recv(len(payload))
        assert chunk
        received += chunk
    assert received == payload
    server.close()
    client.close()
