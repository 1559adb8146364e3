"""The asyncio runtime's listening side, plain or TLS, shared by every asyncio server.

A plain port is the loop's own ``create_server``; a TLS port is a
:class:`~enlace.asyncio.tlsaccept.TLSAcceptor`, which accepts by itself so
that a plain client can be told what is wrong. Either way the server sees one
object: its address, and a stop that works around a Python 3.11 bug (below).

:class:`ListeningServer` is what :class:`enlace.asyncio.Server` and
:class:`enlace.web.WebServer` build on: the listener, the set of connections
and the shutdown that drains them, so that both stop the same way.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
import ssl as _ssl
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

from enlace.asyncio.tlsaccept import TLSAcceptor
from enlace.exceptions import EnlaceError
from enlace.limits import MAX_CONNECTIONS, MAX_LINGERING_REFUSALS
from enlace.policy import ConnectionPolicy
from enlace.sockets import listen_tcp, peer_address

__all__ = ["Listener", "ListeningServer"]

_C = TypeVar("_C")

# Once the drain timeout is over: how long the connections left have to end after
# being closed, and then after being aborted, before shutdown stops waiting for them.
_CLOSE_GRACE = 1.0


class Listener:
    """Accept TCP connections on ``host:port`` and give each to ``protocol_factory``.

    With ``ssl``, clients get a TLS handshake; one that does not start with one
    is sent ``plain_answer(first_byte)`` in clear text and closed, and
    ``refusal_reason`` and ``refusal_answer`` (see
    :class:`~enlace.asyncio.tlsaccept.TLSAcceptor`) refuse a client before its
    handshake when the server is full.
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
        refusal_reason: Callable[[str, int, int], str | None] | None = None,
        refusal_answer: Callable[[str], bytes] | None = None,
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
                refusal_reason=refusal_reason,
                refusal_answer=refusal_answer,
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


class ListeningServer(ABC, Generic[_C]):
    """A server on the running loop: listening, its connections, and their drain at shutdown.

    A subclass sets the attributes annotated below in its ``__init__``, calls
    :meth:`_listen` from :meth:`start`, and says how to close one of its
    connections. Its connections add themselves to ``_connections`` when made
    (counting in ``_active`` those served) and, when lost, discard themselves and
    set ``_drained`` once the set is empty.
    """

    host: str
    port: int
    backlog: int
    ssl: _ssl.SSLContext | None
    handshake_timeout: float | None
    max_connections: int | None
    drain_timeout: float | None
    policy: ConnectionPolicy
    _loop: asyncio.AbstractEventLoop

    def __init__(self) -> None:
        self._listener: Listener | None = None
        self._connections: set[_C] = set()
        self._active = 0  # connections counted against max_connections (not refused ones)
        self._shutting_down = False
        self._drained: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the real port when 0 was asked for)."""
        if self._listener is None:
            raise EnlaceError("the server is not started")
        return self._listener.address

    @property
    def connection_count(self) -> int:
        """Connections being served right now (refused ones not counted)."""
        return self._active

    def _may_linger_refused(self) -> bool:
        """Whether a refused connection, already in ``_connections``, may linger after its refusal.

        At most MAX_LINGERING_REFUSALS refused connections (those not counted in
        ``_active``) are held at once, this one included: past that, a flood of them
        is closed right after the refusal, as on the thread runtime.
        """
        return len(self._connections) - self._active <= MAX_LINGERING_REFUSALS

    def _over_capacity(self, pending: int = 0) -> str | None:
        """Why ``max_connections`` refuses another client, ``pending`` more counted (None: room)."""
        limit = self.max_connections
        if limit is not None and self._active + pending >= limit:
            return f"too many connections (limit {limit})"
        return None

    def _tls_refusal(self, host: str, pending: int, pending_from_host: int) -> str | None:
        """Why a TLS client from ``host`` is refused before its handshake (None: admitted).

        The connection's own checks, with the ``pending`` handshakes admitted so far
        counted as the connections they are about to be (as the thread runtime holds
        a slot during a handshake), so that the connection made after the handshake
        is never the one to refuse: the loop's TLS transport cannot half-close, and
        closing it on bytes the client sent before reading resets the connection and
        destroys the refusal.
        """
        return self._over_capacity(pending) or self.policy.refusal(host, pending=pending_from_host)

    @abstractmethod
    async def start(self) -> None:
        """Listen and start accepting; returns once the port is open."""

    async def _listen(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        plain_answer: Callable[[bytes], bytes],
        logger: logging.Logger,
        refusal_answer: Callable[[str], bytes],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._listener = Listener(
            self.host,
            self.port,
            protocol_factory,
            backlog=self.backlog,
            ssl=self.ssl,
            plain_answer=plain_answer,
            policy=self.policy,
            logger=logger,
            max_connections=self.max_connections,
            handshake_timeout=self.handshake_timeout,
            refusal_reason=self._tls_refusal,
            refusal_answer=refusal_answer,
        )
        await self._listener.start()

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`shutdown` is called."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def shutdown(self, drain_timeout: float | None = -1.0) -> None:
        """Stop accepting, let the connections finish, then close the rest.

        ``drain_timeout`` (negative: the server's) bounds the wait; ``None`` waits
        for ever. The connections left are then closed, and those still there
        after 1 s aborted. A call while a shutdown runs waits for it to end.
        """
        if self._listener is None:
            return
        assert self._stopped is not None
        if self._shutting_down:
            await self._stopped.wait()
            return
        if drain_timeout is not None and drain_timeout < 0:
            drain_timeout = self.drain_timeout
        self._shutting_down = True
        try:
            await self._listener.stop()
            self._drained = asyncio.Event()
            for connection in list(self._connections):
                self._drain(connection)
            if not await self._wait_drained(drain_timeout):
                for connection in list(self._connections):
                    self._force_close(connection)
                if not await self._wait_drained(_CLOSE_GRACE):
                    for connection in list(self._connections):
                        self._abort(connection)
            await self._listener.wait_closed()
        finally:
            self._stopped.set()

    async def _wait_drained(self, timeout: float | None) -> bool:
        """Whether every connection ended within ``timeout`` seconds."""
        assert self._drained is not None
        self._drained.clear()
        if not self._connections:
            return True
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _drain(self, connection: _C) -> None:
        """Shutdown has begun: let ``connection`` know (by default it is left to finish)."""

    @abstractmethod
    def _force_close(self, connection: _C) -> None:
        """The drain timeout is over: close ``connection``."""

    def _abort(self, connection: _C) -> None:
        """``connection`` did not end within 1 s of :meth:`_force_close`: drop it."""
        self._force_close(connection)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
