"""The web server: listening, the connection cap, shutdown, and a thread runner.

:class:`WebServer` serves static files (:mod:`enlace.web.static`) over
HTTP/1.1, one :class:`~enlace.web.connection.HttpConnection` per client (see
there for keep-alive, pipelining, sendfile and the timeouts), and hands
``/ws`` WebSocket upgrades to an :class:`UpgradeEndpoint`.

With ``ssl=`` it serves HTTPS: clients are accepted by a
:class:`~enlace.asyncio.tlsaccept.TLSAcceptor`, so a plain HTTP request on the
HTTPS port gets a clear ``400`` (as nginx says it: "The plain HTTP request was
sent to HTTPS port") instead of a failed handshake. A
:class:`~enlace.policy.ConnectionPolicy` (allow-list, per-address cap) is
checked before any request is read. Over HTTPS, a client past a cap is refused
by the acceptor before its handshake (``ListeningServer._tls_refusal``): it gets
the same 503 as over plain HTTP, encrypted, with a lingering close.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import ssl as _ssl
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from enlace.asyncio.listener import ListeningServer
from enlace.exceptions import EnlaceError
from enlace.limits import (
    DRAIN_TIMEOUT,
    HTTP_HEAD_TIMEOUT,
    HTTP_KEEPALIVE_TIMEOUT,
    MAX_BODY,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_PER_IP,
    MAX_REQUEST_LINE,
    SLOW_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
)
from enlace.policy import ConnectionPolicy
from enlace.web.connection import LOGGER, Clock, HttpConnection, error_response, refusal_detail
from enlace.web.pages import SITE, ServiceInfo, render_home
from enlace.web.static import StaticFiles

__all__ = [
    "PLAIN_HTTP_DETAIL",
    "UpgradeEndpoint",
    "WebServer",
    "WebServerThread",
    "plain_http_answer",
]


#: What a plain HTTP request on the HTTPS port is told (nginx's words).
PLAIN_HTTP_DETAIL = "The plain HTTP request was sent to HTTPS port"


class UpgradeEndpoint(Protocol):
    """What the server hands a WebSocket upgrade to (``enlace.web.websocket``).

    The protocol :meth:`upgrade` returns may say how the handshake was answered
    (an ``int`` attribute ``status``: 101, or the refusal's 400, 403, 426...)
    and the size of a refusal's body (``body_size``), for the access log; without
    them the request is logged as 101. A ``GET /ws`` that is not an upgrade gets
    ``426``, or ``403`` (after ``fail_delay`` seconds) when :meth:`authorized`
    says its token is missing or wrong: the browser chat asks that way, since a
    page cannot see why its WebSocket was refused.
    """

    #: Seconds before a request with a missing or wrong token is answered (None: at once).
    fail_delay: float | None

    def authorized(self, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether a request (target, header fields) carries the token, if one is required."""
        ...

    def upgrade(
        self,
        transport: asyncio.Transport,
        head: bytes,
        rest: bytes,
        *,
        on_close: Callable[[], None],
    ) -> asyncio.BaseProtocol: ...


def plain_http_answer(first: bytes) -> bytes:
    """The ``400`` a plain HTTP client on the HTTPS port gets, then the connection closes."""
    return error_response(400, PLAIN_HTTP_DETAIL, email.utils.formatdate(usegmt=True).encode())


class WebServer(ListeningServer[HttpConnection]):
    """Serve static files (and a WebSocket endpoint) on the running event loop.

    ``root`` is the directory served; ``None`` serves the built-in site, whose
    home page lists the services given to :meth:`set_services`::

        async with WebServer("public", "127.0.0.1", 8088) as server:
            await server.serve_forever()
    """

    def __init__(
        self,
        root: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        listing: bool = False,
        websocket: UpgradeEndpoint | None = None,
        max_connections: int | None = MAX_CONNECTIONS,
        max_request_line: int | None = MAX_REQUEST_LINE,
        max_headers: int | None = MAX_HEADERS,
        max_header_bytes: int | None = MAX_HEADER_BYTES,
        max_body: int | None = MAX_BODY,
        head_timeout: float | None = HTTP_HEAD_TIMEOUT,
        keepalive_timeout: float | None = HTTP_KEEPALIVE_TIMEOUT,
        send_timeout: float | None = SLOW_TIMEOUT,
        drain_timeout: float | None = DRAIN_TIMEOUT,
        backlog: int = 128,
        ssl: _ssl.SSLContext | None = None,
        handshake_timeout: float | None = TLS_HANDSHAKE_TIMEOUT,
        allow: Sequence[str] | None = None,
        max_per_ip: int | None = MAX_PER_IP,
        policy: ConnectionPolicy | None = None,
    ) -> None:
        super().__init__()
        self.builtin = root is None
        self.root = SITE if root is None else root
        try:
            self.files = StaticFiles(self.root, listing=listing)
        except OSError as exc:
            raise EnlaceError(f"cannot serve {self.root!r}: not a readable directory") from exc
        self.host = host
        self.port = port
        self.websocket = websocket
        self.max_connections = max_connections
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self.drain_timeout = drain_timeout
        self.backlog = backlog
        #: TLS context (see :func:`enlace.tls.server_context`); None serves plain HTTP.
        self.ssl = ssl
        self.handshake_timeout = handshake_timeout
        #: Who may connect; built from ``allow`` and ``max_per_ip`` unless given.
        self.policy = policy or ConnectionPolicy(allow, max_per_ip=max_per_ip)
        self._clock = Clock()
        self._log_requests = False
        self.set_services(())

    def set_services(self, services: Sequence[ServiceInfo]) -> None:
        """List ``services`` on the built-in home page (no effect with a ``root``)."""
        if not self.builtin:
            return
        with open(os.path.join(SITE, "index.html"), encoding="utf-8") as file:
            page = render_home(file.read(), services)
        self.files.pages = {"/": page, "/index.html": page}

    async def start(self) -> None:
        """Listen and start accepting; returns once the port is open."""
        if self._listener is not None:
            return
        self._log_requests = LOGGER.isEnabledFor(logging.INFO)
        await self._listen(
            lambda: HttpConnection(self),
            plain_answer=plain_http_answer,
            logger=LOGGER,
            refusal_answer=self._refusal_answer,
        )

    def _refusal_answer(self, reason: str) -> bytes:
        """The 503 an HTTPS client refused before its handshake is sent, encrypted."""
        self._clock.tick()
        return error_response(503, refusal_detail(reason), self._clock.date)

    def _drain(self, connection: HttpConnection) -> None:
        connection.drain()  # idle ones close now, the others after their response

    def _force_close(self, connection: HttpConnection) -> None:
        connection.force_close()

    def _gone(self, connection: HttpConnection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        if connection.counted:
            self._active -= 1
            self.policy.release(connection.peer)
        if not self._connections and self._drained is not None:
            self._drained.set()


class WebServerThread:
    """A :class:`WebServer` on an event loop of its own thread (``enlace up --runtime threads``)."""

    def __init__(
        self,
        server: WebServer,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self.server = server
        self._loop = (loop_factory or asyncio.new_event_loop)()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="enlace-web", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def start(self) -> None:
        """Start the loop thread and listen; raises what :meth:`WebServer.start` raises."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise

    def shutdown(self, drain_timeout: float | None = -1.0) -> None:
        """Drain and stop the server, then the loop thread."""
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(
                self.server.shutdown(drain_timeout), self._loop
            )
            future.result()
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()
