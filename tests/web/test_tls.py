"""HTTPS, wss:// and access control on the web server, with real clients.

Certificates come from trustme (a CA made in the test). curl (``--cacert``)
and Python's ssl module verify the chain and the name; the WebSocket client is
the ``websockets`` library with the same CA. After each refusal a good client
is served, so a refusal never costs the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from enlace.limits import WRITE_BUFFER_HIGH
from enlace.policy import ConnectionPolicy
from enlace.services.base import StreamHandler
from enlace.services.chat import ChatService
from enlace.web.connection import HttpConnection
from enlace.web.server import PLAIN_HTTP_DETAIL
from enlace.web.websocket import WebSocketEndpoint
from tests.conftest import connect, read_to_eof
from tests.web.httpkit import CURL, Conn, request_bytes, web

__all__ = ["web"]

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")

CA = trustme.CA()
OTHER_CA = trustme.CA()
CERT = CA.issue_cert("localhost", "127.0.0.1", "::1")


def server_ssl() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CERT.configure_cert(context)
    return context


def client_ssl(ca: trustme.CA = CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    CA.cert_pem.write_to_path(str(path))
    return path


def curl(url: str, ca: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", str(ca), *args, url],
        capture_output=True,
        timeout=15,
        check=False,
    )


def https_get(
    address: tuple[str, int], target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request over a verified TLS connection (chain and name); the whole response."""
    sock = client_ssl().wrap_socket(connect(address), server_hostname="localhost")
    with sock:
        sock.sendall(request_bytes(target, {"Connection": "close", **(headers or {})}))
        raw = read_to_eof(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "hola.txt").write_text("hola, mundo\n")
    (tmp_path / "big.bin").write_bytes(os.urandom(10 * 1024 * 1024))
    return tmp_path


# -- HTTPS: what curl and Python's ssl see ---------------------------------------------


def test_curl_gets_heads_ranges_and_revalidates_over_https(web, files, ca_file):
    server = web(files, ssl=server_ssl())
    url = f"https://127.0.0.1:{server.address[1]}/hola.txt"
    got = curl(url, ca_file, "-i")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert got.stdout.endswith(b"\r\n\r\nhola, mundo\n")
    etag = next(
        line.split(b": ", 1)[1]
        for line in got.stdout.split(b"\r\n")
        if line.lower().startswith(b"etag:")
    )
    head = curl(url, ca_file, "-I")
    assert head.stdout.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 12" in head.stdout
    ranged = curl(url, ca_file, "-i", "-r", "0-3")
    assert ranged.stdout.startswith(b"HTTP/1.1 206") and ranged.stdout.endswith(b"\r\n\r\nhola")
    again = curl(url, ca_file, "-i", "-H", f"If-None-Match: {etag.decode()}")
    assert again.stdout.startswith(b"HTTP/1.1 304")


def test_a_10_mib_file_arrives_whole_over_https(web, files, ca_file):
    server = web(files, ssl=server_ssl())
    got = curl(
        f"https://localhost:{server.address[1]}/big.bin",
        ca_file,
        "--resolve",
        f"localhost:{server.address[1]}:127.0.0.1",
    )
    assert got.returncode == 0, got.stderr
    expected = (files / "big.bin").read_bytes()
    assert hashlib.sha256(got.stdout).digest() == hashlib.sha256(expected).digest()


def test_a_client_that_reads_slowly_holds_a_bounded_amount_of_the_file_in_memory(web, files):
    server = web(files, ssl=server_ssl())
    sock = client_ssl().wrap_socket(connect(server.address), server_hostname="localhost")
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(request_bytes("/big.bin"))
        received = len(sock.recv(65536))

        def waiting() -> list[int]:
            async def sizes() -> list[int]:
                return [
                    c.transport.get_write_buffer_size()
                    for c in server.server._connections
                    if isinstance(c, HttpConnection) and c.transport is not None
                ]

            return list(server.loop.run(sizes()))

        def paused() -> bool:
            async def check() -> bool:
                return any(c.write_paused for c in server.server._connections)

            return bool(server.loop.run(check()))

        wait_for(paused)  # the server filled the transport and stopped reading the file
        assert max(waiting()) <= WRITE_BUFFER_HIGH + 64 * 1024
        # Then it goes on as the client reads: the whole file arrives.
        total = received
        while total < 10 * 1024 * 1024:
            chunk = sock.recv(1024 * 1024)
            assert chunk
            total += len(chunk)
        assert total >= 10 * 1024 * 1024


def test_python_ssl_verifies_the_chain_and_the_name_and_keep_alive_works(web, files):
    server = web(files, ssl=server_ssl())
    sock = client_ssl().wrap_socket(connect(server.address), server_hostname="localhost")
    with sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        conn = Conn.__new__(Conn)
        conn.sock, conn.buffer = sock, b""
        for _ in range(2):
            conn.send(request_bytes("/hola.txt"))
            assert conn.response().body == b"hola, mundo\n"
    with pytest.raises(ssl.SSLCertVerificationError):
        client_ssl(OTHER_CA).wrap_socket(connect(server.address), server_hostname="localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        client_ssl().wrap_socket(connect(server.address), server_hostname="example.org")
    assert https_get(server.address, "/hola.txt")[2] == b"hola, mundo\n"  # still serving


def test_plain_http_on_the_https_port_gets_a_clear_400_and_others_are_still_served(
    web, files, ca_file
):
    server = web(files, ssl=server_ssl())
    with connect(server.address) as sock:
        sock.sendall(request_bytes("/hola.txt"))
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in answer
    assert PLAIN_HTTP_DETAIL.encode() in answer
    plain_curl = subprocess.run(
        [
            str(CURL),
            "-sS",
            "--noproxy",
            "*",
            "-i",
            f"http://127.0.0.1:{server.address[1]}/hola.txt",
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert plain_curl.stdout.startswith(b"HTTP/1.1 400") and PLAIN_HTTP_DETAIL.encode() in (
        plain_curl.stdout
    )
    assert curl(f"https://127.0.0.1:{server.address[1]}/hola.txt", ca_file).stdout == (
        b"hola, mundo\n"
    )


def test_a_client_of_another_ca_is_refused_by_curl_and_the_server_goes_on(web, files, tmp_path):
    server = web(files, ssl=server_ssl())
    other = tmp_path / "other.pem"
    OTHER_CA.cert_pem.write_to_path(str(other))
    refused = curl(f"https://127.0.0.1:{server.address[1]}/hola.txt", other)
    assert refused.returncode == 60  # curl: peer certificate cannot be authenticated
    assert https_get(server.address, "/hola.txt")[0] == 200


# -- access control ------------------------------------------------------------------------


class Counted:
    """Counts the requests that reach the static files (the HTTP handler)."""

    def __init__(self, server: Any) -> None:
        self.calls = 0
        files = server.server.files
        serve = files.serve

        def counting(request: Any) -> Any:
            self.calls += 1
            return serve(request)

        files.serve = counting


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_client_outside_the_allow_list_is_closed_before_any_request(web, files, tls, caplog):
    caplog.set_level(logging.WARNING, logger="enlace.web")
    server = web(files, ssl=server_ssl() if tls else None, allow=["10.0.0.0/8"])
    counted = Counted(server)
    with connect(server.address) as sock:
        if tls:
            with pytest.raises(OSError):  # closed before the handshake (ssl.SSLError is one)
                client_ssl().wrap_socket(sock, server_hostname="localhost")
        else:
            sock.sendall(request_bytes("/hola.txt"))
            with contextlib.suppress(ConnectionResetError):
                assert read_to_eof(sock) == b""  # not a byte of an answer
    assert counted.calls == 0
    wait_for(lambda: "not in the allow-list" in caplog.text)
    allowed = web(files, ssl=server_ssl() if tls else None, allow=["10.0.0.0/8", "127.0.0.1"])
    if tls:
        assert https_get(allowed.address, "/hola.txt")[0] == 200
    else:
        with Conn(allowed.address) as conn:
            conn.send(request_bytes("/hola.txt"))
            assert conn.response().status == 200
    assert counted.calls == 0  # the refused server's files were never asked for


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_past_the_per_address_cap_a_client_gets_503_and_never_reaches_the_files(web, files, tls):
    policy = ConnectionPolicy(max_per_ip=1, count_loopback=True)
    server = web(files, ssl=server_ssl() if tls else None, policy=policy)
    counted = Counted(server)

    def open_one() -> socket.socket:
        sock = connect(server.address)
        return client_ssl().wrap_socket(sock, server_hostname="localhost") if tls else sock

    first = open_one()
    first.sendall(request_bytes("/hola.txt"))
    assert first.recv(65536).startswith(b"HTTP/1.1 200")
    with open_one() as second:
        second.sendall(request_bytes("/hola.txt"))
        answer = read_to_eof(second)
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections from 127.0.0.1" in answer
    assert counted.calls == 1
    first.close()
    wait_for(lambda: policy.count("127.0.0.1") == 0)
    with open_one() as third:  # the address's count went back down
        third.sendall(request_bytes("/hola.txt", {"Connection": "close"}))
        assert read_to_eof(third).startswith(b"HTTP/1.1 200")


# -- wss:// and the token -----------------------------------------------------------------


class CountingChat(ChatService):
    """The real chat, counting the clients it was handed."""

    handlers = 0

    def handler(self) -> StreamHandler:
        self.handlers += 1
        return super().handler()


@pytest.fixture
def chat_site(web: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    def start(**options: Any) -> Any:
        chat = CountingChat(flood_burst=None)
        endpoint = WebSocketEndpoint(chat, **options)
        server = web(None, ssl=server_ssl(), websocket=endpoint)
        server.chat = chat
        server.wss = f"wss://localhost:{server.address[1]}/ws"
        return server

    yield start


def ping(ws: Any) -> Any:
    ws.send(json.dumps({"id": 1, "cmd": "ping"}))
    while True:
        message = ws.recv(timeout=5)
        if message.startswith("{") and json.loads(message).get("id") == 1:
            return json.loads(message)


def test_wss_chat_with_the_right_token_and_refusals_without_it(chat_site, caplog):
    caplog.set_level(logging.INFO, logger="enlace.web")
    site = chat_site(token="s3cret", fail_delay=0.2)
    options: dict[str, Any] = {"ssl": client_ssl(), "open_timeout": 5}
    with ws_connect(site.wss + "?token=s3cret", **options) as ws:
        assert ping(ws)["result"] == "pong"
    assert site.chat.handlers == 1
    for url, headers in (
        (site.wss, {}),
        (site.wss + "?token=wrong", {}),
        (site.wss, {"Authorization": "Bearer nope"}),
    ):
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, additional_headers=headers, **options)
        assert refused.value.response.status_code == 403
        assert b"token" in refused.value.response.body
        assert time.monotonic() - started >= 0.2  # each guess costs the delay
    assert site.chat.handlers == 1  # refused clients never reached the chat
    with ws_connect(site.wss, additional_headers={"Authorization": "Bearer s3cret"}, **options):
        pass
    assert site.chat.handlers == 2
    # One access-log line per upgrade, with the status decided, and never the token.
    wait_for(lambda: caplog.text.count('"GET /ws') == 5)
    statuses = [
        int(line.split('" ')[1].split()[0])
        for line in caplog.text.splitlines()
        if '"GET /ws' in line
    ]
    assert statuses == [101, 403, 403, 403, 101]
    assert "s3cret" not in caplog.text and "wrong" not in caplog.text
    assert "token=<hidden>" in caplog.text


def test_a_plain_get_of_ws_says_whether_the_token_is_the_problem(chat_site):
    site = chat_site(token="s3cret", fail_delay=0.1)
    assert https_get(site.address, "/ws")[0] == 403
    assert https_get(site.address, "/ws", {"Authorization": "Bearer nope"})[0] == 403
    status, headers, _ = https_get(site.address, "/ws", {"Authorization": "Bearer s3cret"})
    assert status == 426 and headers["upgrade"] == "websocket"
    # The files stay public: the token guards the chat only.
    assert https_get(site.address, "/chat.html")[0] == 200
    assert site.chat.handlers == 0
