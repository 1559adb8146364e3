"""The server around the files: upgrades handed to an endpoint, shutdown, the thread runner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable

import pytest

from enlace.exceptions import EnlaceError
from enlace.web import ServiceInfo, WebServer, WebServerThread
from tests.conftest import connect
from tests.web.httpkit import Conn, get, request_bytes, web

__all__ = ["web"]

UPGRADE = (
    b"GET /ws?room=x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class EchoAfterUpgrade(asyncio.Protocol):
    """A test endpoint's protocol: says hello, then echoes; ``close()`` says bye and closes."""

    def __init__(self, transport: asyncio.Transport, on_close: Callable[[], None]) -> None:
        self.transport = transport
        self.on_close = on_close
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        self.transport.write(b"bye")
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_close()


class StubEndpoint:
    """Stands in for enlace.web.websocket.WebSocketEndpoint: records what the server hands over."""

    fail_delay = None

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []

    def authorized(self, target: bytes, headers: object) -> bool:
        return b"token=no" not in target

    def upgrade(
        self,
        transport: asyncio.Transport,
        head: bytes,
        rest: bytes,
        *,
        on_close: Callable[[], None],
    ) -> asyncio.BaseProtocol:
        self.calls.append((head, rest))
        protocol = EchoAfterUpgrade(transport, on_close)
        protocol.data_received(rest)
        return protocol


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_websocket_upgrade_is_handed_over_with_its_head_and_the_bytes_after_it(web, tmp_path):
    endpoint = StubEndpoint()
    server = web(tmp_path, websocket=endpoint)
    with Conn(server.address) as conn:
        conn.send(UPGRADE + b"early")
        assert conn.response(head_only=True).status == 101
        assert conn.read(5) == b"early"  # the bytes after the head reached the endpoint
        conn.send(b"ping")
        assert conn.read(4) == b"ping"
        assert server.server.connection_count == 1
    head, rest = endpoint.calls[0]
    assert head == UPGRADE and rest in (b"early", b"")  # "" if it came in a later read
    wait_for(lambda: server.server.connection_count == 0)  # on_close kept the count right


def test_without_an_endpoint_ws_is_404_and_without_an_upgrade_426_or_403(web, tmp_path):
    plain = web(tmp_path)
    assert (
        get(plain.address, "/ws", {"Upgrade": "websocket", "Connection": "Upgrade"}).status == 404
    )
    with_endpoint = web(tmp_path, websocket=StubEndpoint())
    no_upgrade = get(with_endpoint.address, "/ws")
    assert no_upgrade.status == 426 and no_upgrade.headers["upgrade"] == "websocket"
    other = get(with_endpoint.address, "/ws", {"Upgrade": "h2c", "Connection": "Upgrade"})
    assert other.status == 426
    # What the chat page asks to tell a token refusal from a server that is down.
    refused = get(with_endpoint.address, "/ws?token=no")
    assert refused.status == 403 and b"token" in refused.body
    assert refused.headers["connection"] == "close"


def test_an_upgrade_elsewhere_is_served_as_plain_http(web, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    server = web(tmp_path, websocket=StubEndpoint())
    with Conn(server.address) as conn:
        conn.send(
            b"GET /a.txt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            + request_bytes("/a.txt")
        )
        assert conn.response().body == b"a"
        assert conn.response().body == b"a"  # and the next request is still parsed


def test_shutdown_lets_a_download_finish_closes_idle_ones_and_says_goodbye_to_upgraded(
    web, tmp_path
):
    data = os.urandom(4 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "a.txt").write_text("a")
    server = web(tmp_path, websocket=StubEndpoint())
    idle = Conn(server.address)
    idle.send(request_bytes("/a.txt"))
    assert idle.response().body == b"a"
    upgraded = Conn(server.address)
    upgraded.send(UPGRADE)
    assert upgraded.response(head_only=True).status == 101
    downloading = Conn(server.address)
    downloading.sock.setsockopt(1, 8, 65536)  # SO_RCVBUF: the file cannot all be sent at once
    downloading.send(request_bytes("/big.bin"))
    downloading.buffer = downloading.sock.recv(10)  # the response has started
    done = threading.Event()
    threading.Thread(target=lambda: (server.shutdown(5.0), done.set())).start()
    assert idle.closed()
    assert upgraded.read(3) == b"bye"
    response = downloading.response()  # read on: it finishes, then the server closes
    assert response.body == data
    assert response.headers["connection"] == "keep-alive"  # it was sent before the shutdown
    assert downloading.closed()
    assert done.wait(5)
    with pytest.raises(OSError):
        connect(server.address, timeout=1)
    for conn in (idle, upgraded, downloading):
        conn.sock.close()


class ForgetfulEndpoint(StubEndpoint):
    """A broken endpoint: its protocol never calls ``on_close``, so the server never sees it go."""

    def upgrade(
        self,
        transport: asyncio.Transport,
        head: bytes,
        rest: bytes,
        *,
        on_close: Callable[[], None],
    ) -> asyncio.BaseProtocol:
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        return asyncio.Protocol()


def test_shutdown_ends_even_when_an_endpoint_never_says_its_connection_is_gone(web, tmp_path):
    server = web(tmp_path, websocket=ForgetfulEndpoint())
    with Conn(server.address) as conn:
        conn.send(UPGRADE)
        assert conn.response(head_only=True).status == 101
        started = time.monotonic()
        # The drain times out, the connection is dropped, and after 1 s more the
        # server stops waiting for an on_close() that never comes.
        server.shutdown(0.05)
        assert time.monotonic() - started < 3
        with contextlib.suppress(ConnectionResetError):  # a reset is a close all the same
            assert conn.sock.recv(1) == b""
    with pytest.raises(OSError):
        connect(server.address, timeout=1)


def test_the_home_page_lists_the_services_it_is_given(web):
    server = web()
    server.server.set_services(
        [ServiceInfo("chat", "tcp", "127.0.0.1:8080", "nc 127.0.0.1 8080 <&>")]
    )
    page = get(server.address, "/").body.decode()
    assert "<td>chat</td><td>tcp 127.0.0.1:8080</td>" in page
    assert "nc 127.0.0.1 8080 &lt;&amp;&gt;" in page
    assert 'href="/chat.html"' in page


def test_a_root_that_is_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(EnlaceError, match="not a readable directory"):
        WebServer(str(tmp_path / "missing"))


def test_the_thread_runner_serves_on_its_own_loop(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    runner = WebServerThread(WebServer(str(tmp_path), "127.0.0.1", 0))
    runner.start()
    address = runner.address
    try:
        assert get(address, "/a.txt").body == b"a"
    finally:
        runner.shutdown(1.0)
    with pytest.raises(OSError):
        connect(address, timeout=1)
