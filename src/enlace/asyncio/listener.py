"""The asyncio runtime's listening side, plain or TLS, shared by every asyncio server.

A plain port is the loop's own ``create_server``; a TLS port is a
:class:`~enlace.asyncio.tlsaccept.TLSAcceptor`, which accepts by itself so
that a plain client can be told what is wrong. Either way the server sees one
object: its address, and a stop that works around a Python 3.11 bug (below).
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
import ssl as _ssl
from collections.abc import Callable

from enlace.asyncio.tlsaccept import TLSAcceptor
from enlace.limits import MAX_CONNECTIONS
from enlace.policy import ConnectionPolicy
from enlace.sockets import listen_tcp, peer_address

__all__ = ["Listener"]


class Listener:
    """Accept TCP connections on ``host:port`` and give each to ``protocol_factory``.

    With ``ssl``, clients get a TLS handshake; one that does not start with one
    is sent ``plain_answer(first_byte)`` in clear text and closed.
    """

    def __init__(
        self,
        host: str,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        backlog: int,
        ssl: _ssl.SSLContext | None,
        plain_answer: Callable[[bytes], bytes],
        policy: ConnectionPolicy,
        logger: logging.Logger,
        max_connections: int | None,
        handshake_timeout: float | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = listen_tcp(host, port, backlog=backlog)
        #: The address listened on (the real port when 0 was asked for).
        self.address: tuple[str, int] = peer_address(self._sock.getsockname())
        self._factory = protocol_factory
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._acceptor: TLSAcceptor | None = None
        if ssl is not None:
            self._acceptor = TLSAcceptor(
                self._sock,
                ssl=ssl,
                protocol_factory=protocol_factory,
                plain_answer=plain_answer,
                policy=policy,
                logger=logger,
                # Handshakes in progress are bounded like connections: each holds a socket.
                max_handshakes=max_connections or MAX_CONNECTIONS,
                handshake_timeout=handshake_timeout,
            )

    async def start(self) -> None:
        """Start accepting."""
        if self._acceptor is not None:
            self._acceptor.start()
        else:
            self._server = await self._loop.create_server(
                self._factory, sock=self._sock, backlog=self._backlog
            )

    async def stop(self) -> None:
        """Stop accepting and close the listening socket (open connections go on)."""
        if self._acceptor is not None:
            await self._acceptor.stop()
            return
        assert self._server is not None
        # Python 3.11 loses a connection that its loop accepted in the same turn as
        # Server.close(): the transport is created after the close, Server._attach()
        # asserts, the error is swallowed and the socket is left open, so the client
        # hangs. Stop watching the listening sockets first, then let one turn of the
        # loop set up what was already accepted (the servers refuse those).
        if isinstance(self._loop, asyncio.selector_events.BaseSelectorEventLoop):
            for sock in self._server.sockets:
                self._loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
        self._server.close()

    async def wait_closed(self) -> None:
        """Wait until the loop has let go of the listening socket."""
        if self._server is not None:
            await self._server.wait_closed()
