"""The asyncio runtime's TCP server: :class:`Server`, on the running event loop.

Protocols rather than streams: no task per connection and no intermediate
``StreamReader`` buffer, so each chunk of bytes goes from the loop straight to
the service's handler (see :mod:`enlace.asyncio.connection`, which also says
why the protocol interface depends on the loop).

TLS (``ssl=``) is the event loop's own (uvloop's is in C); clients are
accepted by :class:`~enlace.asyncio.tlsaccept.TLSAcceptor`, which looks at the
first byte so that a plain client is told ``ERR tls_required`` in clear text
instead of failing a handshake it does not know it is in. A
:class:`~enlace.policy.ConnectionPolicy` (allow-list, per-address cap) is
checked before any handler exists.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import threading
from types import TracebackType

from enlace.asyncio.connection import Connection, connection_class
from enlace.asyncio.listener import Listener
from enlace.exceptions import EnlaceError
from enlace.limits import (
    DRAIN_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_OUTBOUND,
    MAX_PER_IP,
    READ_SIZE,
    SLOW_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
)
from enlace.logs import logger_for
from enlace.policy import ConnectionPolicy
from enlace.services.base import StreamService
from enlace.tls import tls_required_answer

__all__ = ["Server"]


class Server:
    """Serve a :class:`~enlace.services.base.StreamService` on the running event loop.

    Use it as an async context manager, or call :meth:`start` and :meth:`shutdown`::

        async with Server(EchoService(), "127.0.0.1", 6543) as server:
            await server.serve_forever()
    """

    def __init__(
        self,
        service: StreamService,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int | None = MAX_CONNECTIONS,
        idle_timeout: float | None = IDLE_TIMEOUT,
        drain_timeout: float | None = DRAIN_TIMEOUT,
        max_outbound: int | None = MAX_OUTBOUND,
        slow_timeout: float | None = SLOW_TIMEOUT,
        backlog: int = 128,
        ssl: _ssl.SSLContext | None = None,
        handshake_timeout: float | None = TLS_HANDSHAKE_TIMEOUT,
        allow: list[str] | None = None,
        max_per_ip: int | None = MAX_PER_IP,
        policy: ConnectionPolicy | None = None,
    ) -> None:
        self.service = service
        #: TLS context (see :func:`enlace.tls.server_context`); None serves plain TCP.
        self.ssl = ssl
        self.handshake_timeout = handshake_timeout
        #: Who may connect; built from ``allow`` and ``max_per_ip`` unless given.
        self.policy = policy or ConnectionPolicy(allow, max_per_ip=max_per_ip)
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.max_outbound = max_outbound
        self.slow_timeout = slow_timeout
        self.backlog = backlog
        self.logger: logging.Logger = logger_for(service.name)
        self._listener: Listener | None = None
        self._connections: set[Connection] = set()
        self._active = 0  # connections counted against max_connections (not refused ones)
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        self._shutting_down = False
        self._drained: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the real port when 0 was asked for)."""
        if self._listener is None:
            raise EnlaceError("the server is not started")
        return self._listener.address

    @property
    def connection_count(self) -> int:
        """Connections being served right now."""
        return self._active

    async def start(self) -> None:
        """Listen and start accepting; returns once the port is open."""
        if self._listener is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopped = asyncio.Event()
        connection = connection_class(self._loop)
        self._listener = Listener(
            self.host,
            self.port,
            lambda: connection(self),
            backlog=self.backlog,
            ssl=self.ssl,
            plain_answer=tls_required_answer,
            policy=self.policy,
            logger=self.logger,
            max_connections=self.max_connections,
            handshake_timeout=self.handshake_timeout,
        )
        await self._listener.start()

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`shutdown` is called."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def shutdown(self, drain_timeout: float | None = -1.0) -> None:
        """Stop accepting, let connections finish, then close the rest.

        ``drain_timeout`` defaults to the server's; ``None`` waits for ever.
        """
        if self._listener is None:
            return
        if drain_timeout is not None and drain_timeout < 0:
            drain_timeout = self.drain_timeout
        self._shutting_down = True
        await self._listener.stop()
        if self._connections:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except TimeoutError:
                for connection in list(self._connections):
                    connection.force_close("server shutting down")
                self._drained.clear()
                if self._connections:
                    try:
                        await asyncio.wait_for(self._drained.wait(), 1.0)
                    except TimeoutError:
                        for connection in list(self._connections):
                            connection.abort()
        await self._listener.wait_closed()
        assert self._stopped is not None
        self._stopped.set()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
