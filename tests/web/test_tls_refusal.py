"""The HTTPS web server's 503: refused before the handshake, and read whole by the client.

asyncio's TLS transport cannot half-close, so a 503 written on it and closed at
once is destroyed by the reset the client's request provokes when it arrives
after the close. The server refuses before the handshake instead (handshakes in
progress counted as the connections they are about to be), and the acceptor
sends the 503 and ``close_notify`` and reads what the client still sends (a
lingering close). Each test holds the refusal to the ordering that lost it:
the request sent once the server has decided, before reading anything.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enlace.limits import LINGER_BYTES
from enlace.policy import ConnectionPolicy
from tests.conftest import connect, read_to_eof
from tests.web.httpkit import CURL, Conn, request_bytes, web
from tests.web.test_tls import Counted, ca_file, client_ssl, curl, files, server_ssl, wait_for

__all__ = ["ca_file", "files", "web"]

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")

# A request body the refused client uploads: the server reads and drops it (under LINGER_BYTES).
BODY = LINGER_BYTES // 2
# The two caps; loopback counted per address, or the test's clients would be exempt.
CAPS = ("max-connections", "max-per-ip")


@pytest.fixture(params=CAPS)
def capped(
    request: pytest.FixtureRequest, web: Callable[..., Any], files: Path
) -> Iterator[Callable[..., Any]]:
    """``capped(tls=, limit=)`` starts a server under the cap this test runs with (both, in turn).

    The server's ``reason`` is the text its 503 page must carry.
    """

    def start(*, tls: bool, limit: int = 1) -> Any:
        context = server_ssl() if tls else None
        if request.param == "max-connections":
            server = web(files, ssl=context, max_connections=limit)
            server.reason = f"too many connections (limit {limit})"
        else:
            policy = ConnectionPolicy(max_per_ip=limit, count_loopback=True)
            server = web(files, ssl=context, policy=policy)
            server.reason = f"too many connections from 127.0.0.1 (limit {limit} per address)"
        server.reason = (server.reason + "; try again later").encode()
        return server

    yield start


def tls_client(address: tuple[str, int]) -> ssl.SSLSocket:
    """A TLS client whose handshake is complete."""
    return client_ssl().wrap_socket(connect(address), server_hostname="localhost")


def parse(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Status line, header fields (lower-case names) and body of one response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    return lines[0], fields, body


def admitted_and_served(sock: ssl.SSLSocket | socket.socket) -> Conn:
    """A keep-alive client that has been served once (so it holds its connection)."""
    conn = Conn.__new__(Conn)
    conn.sock, conn.buffer = sock, b""
    conn.send(request_bytes("/hola.txt"))
    assert conn.response().body == b"hola, mundo\n"
    return conn


def refused_while_first_holds(client: Callable[[], socket.socket]) -> bytes:
    """What a client over the cap reads when it sends a request and its body before reading."""
    with client() as second:
        second.sendall(request_bytes("/hola.txt", {"Content-Length": str(BODY)}, method="POST"))
        # The server has said all it will (its FIN): the body arrives after that, as from
        # a client uploading while the server answers. Had the server closed, it would
        # answer the body with a reset.
        poll = select.poll()
        poll.register(second, select.POLLRDHUP)
        assert poll.poll(5000), "the server never ended its output"
        second.sendall(b"x" * BODY)
        return read_to_eof(second)


def test_a_refused_https_client_that_sends_before_reading_gets_the_whole_503(capped):
    server = capped(tls=True)
    counted = Counted(server)
    with admitted_and_served(tls_client(server.address)) as first:
        status, fields, body = parse(refused_while_first_holds(lambda: tls_client(server.address)))
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert fields["connection"] == "close"
        assert fields["content-type"] == "text/html; charset=utf-8"
        assert int(fields["content-length"]) == len(body)  # the whole body, nothing more
        assert server.reason in body and body.endswith(b"</html>\n")
        assert counted.calls == 1  # the refused request never reached the files
        first.send(request_bytes("/hola.txt"))  # the admitted client is still served
        assert first.response().body == b"hola, mundo\n"
    assert counted.calls == 2


def test_the_https_503_is_the_plain_http_503(capped):
    # One response for both: the same status, fields and page, whichever side sends it.
    answers = []
    for tls in (False, True):
        server = capped(tls=tls)

        def opener(address: tuple[str, int] = server.address, tls: bool = tls) -> socket.socket:
            return tls_client(address) if tls else connect(address)

        with admitted_and_served(opener()):
            answers.append(parse(refused_while_first_holds(opener)))
    (plain_status, plain_fields, plain_body), (tls_status, tls_fields, tls_body) = answers
    assert plain_status == tls_status == "HTTP/1.1 503 Service Unavailable"
    assert plain_body == tls_body
    del plain_fields["date"], tls_fields["date"]
    assert plain_fields == tls_fields


class HalfwayHandshake:
    """A TLS client that sends its hello and stops until told to finish."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = connect(address)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_ssl().wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def hello(self) -> None:
        """Send the ClientHello and wait for the server's answer: it admitted us."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        self.sock.sendall(self.outgoing.read())
        self._receive()

    def finish(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
            else:
                self._flush()
                return

    def get_to_eof(self, target: str) -> bytes:
        """``GET target`` with ``Connection: close``; the response up to close_notify."""
        self.tls.write(request_bytes(target, {"Connection": "close"}))
        self._flush()
        received = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
                continue
            if not chunk:  # close_notify
                return received
            received += chunk

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed during the handshake"
        self.incoming.write(data)


def test_a_handshake_in_progress_counts_against_the_cap(capped, ca_file):
    # Two slots: one client connected, one in its handshake; the third is refused.
    # (A cap of 1 would not show it for --max-connections: the acceptor allows as many
    # handshakes at once as connections, and closes the client past that unanswered.)
    server = capped(tls=True, limit=2)
    counted = Counted(server)
    url = f"https://127.0.0.1:{server.address[1]}/hola.txt"
    halfway = HalfwayHandshake(server.address)
    with admitted_and_served(tls_client(server.address)) as first, contextlib.closing(halfway.sock):
        halfway.hello()  # admitted, not a connection yet: its slot is taken all the same
        refused = curl(url, ca_file, "-i")
        assert refused.returncode == 0, refused.stderr
        status, fields, body = parse(refused.stdout)
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert int(fields["content-length"]) == len(body) and server.reason in body
        halfway.finish()  # the clients admitted before are served
        assert halfway.get_to_eof("/hola.txt").endswith(b"\r\n\r\nhola, mundo\n")
        first.send(request_bytes("/hola.txt"))
        assert first.response().body == b"hola, mundo\n"
    assert counted.calls == 3
    # Their slots are free again once they are gone.
    wait_for(lambda: curl(url, ca_file).stdout == b"hola, mundo\n")
