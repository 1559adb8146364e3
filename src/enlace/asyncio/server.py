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
checked before any handler exists. Over TLS, a client past a cap is refused by
the acceptor before its handshake (``ListeningServer._tls_refusal``), which can
linger after the encrypted refusal as a plain refusal does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import threading

from enlace.asyncio.connection import Connection, connection_class
from enlace.asyncio.listener import ListeningServer
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


class Server(ListeningServer[Connection]):
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
        super().__init__()
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
        self._read_buffer = memoryview(bytearray(READ_SIZE))

    async def start(self) -> None:
        """Listen and start accepting; returns once the port is open."""
        if self._listener is not None:
            return
        self._loop_thread = threading.get_ident()
        connection = connection_class(asyncio.get_running_loop())
        await self._listen(
            lambda: connection(self),
            plain_answer=tls_required_answer,
            logger=self.logger,
            refusal_answer=self.service.refusal,
        )

    def _force_close(self, connection: Connection) -> None:
        connection.force_close("server shutting down")

    def _abort(self, connection: Connection) -> None:
        connection.abort()
