"""Accepting TLS clients on asyncio: accept, look at the first byte, then the loop's handshake.

``loop.create_server(ssl=...)`` starts a handshake with whoever connects, so a
plain client only ever sees a failed handshake it does not know it was in.
:class:`TLSAcceptor` accepts by itself instead: an address outside the
allow-list is closed at once, the client's first byte is peeked at, a plain
client gets a clear-text answer in its own protocol (``plain_answer``: a line
for the TCP services, a ``400`` for HTTP), and a TLS client is handed to
``loop.connect_accepted_socket(ssl=...)`` (uvloop's TLS is in C), whose
protocol then runs as on a plain port. Handshakes in progress are bounded, and
each has ``handshake_timeout`` seconds, first byte included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
from collections.abc import Callable

from enlace.limits import LINGER_TIMEOUT, READ_SIZE
from enlace.logs import log_handshake_failed, log_refused
from enlace.policy import ConnectionPolicy
from enlace.sockets import peer_address
from enlace.tls import handshake_failure_reason, is_tls_hello

__all__ = ["TLSAcceptor"]

# Back-off after a failed accept (out of descriptors or memory) instead of spinning.
_ACCEPT_BACKOFF = 0.1


class TLSAcceptor:
    """Accept on ``listener`` and start TLS for each client, on the running loop.

    ``protocol_factory`` makes the protocol of each TLS connection;
    ``plain_answer(first_byte)`` is what a client that does not start with a TLS
    handshake is told, in clear text, before the close.
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        ssl: _ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        plain_answer: Callable[[bytes], bytes],
        policy: ConnectionPolicy,
        logger: logging.Logger,
        max_handshakes: int,
        handshake_timeout: float | None,
    ) -> None:
        self.listener = listener
        self.ssl = ssl
        self.protocol_factory = protocol_factory
        self.plain_answer = plain_answer
        self.policy = policy
        self.logger = logger
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start accepting (the listener is made non-blocking)."""
        self.listener.setblocking(False)
        self._accepting = self._loop.create_task(self._accept())

    async def stop(self) -> None:
        """Stop accepting, give up the handshakes in progress, close the listener."""
        tasks = [t for t in (self._accepting, *self._handshakes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.listener.close()

    async def _accept(self) -> None:
        loop = self._loop
        while True:
            try:
                sock, address = await loop.sock_accept(self.listener)
            except OSError:
                self.logger.exception("accept failed")
                await asyncio.sleep(_ACCEPT_BACKOFF)
                continue
            peer = peer_address(address)
            if not self.policy.allowed(peer[0]):
                log_refused(self.logger, peer, "not in the allow-list")
                sock.close()
                continue
            if len(self._handshakes) >= self.max_handshakes:
                log_refused(self.logger, peer, f"{self.max_handshakes} TLS handshakes in progress")
                sock.close()
                continue
            task = loop.create_task(self._start_tls(sock, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        reason = "timed out"
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self.handshake_timeout):
                first = await self._peek(sock)
            if not first:
                reason = "closed before the TLS handshake"
            elif not is_tls_hello(first):
                reason = "a plain (not TLS) client"
                await self._tell_plain_client(sock, first)
            else:
                await self._loop.connect_accepted_socket(
                    self.protocol_factory,
                    sock,
                    ssl=self.ssl,
                    ssl_handshake_timeout=self.handshake_timeout,
                )
                return
        except TimeoutError:
            pass
        except OSError as exc:  # ssl.SSLError included
            reason = handshake_failure_reason(exc)
        except asyncio.CancelledError:
            sock.close()
            raise
        sock.close()
        log_handshake_failed(self.logger, peer, reason)

    async def _peek(self, sock: socket.socket) -> bytes:
        ready: asyncio.Future[None] = self._loop.create_future()
        fd = sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(fd)
        return sock.recv(1, socket.MSG_PEEK)

    async def _tell_plain_client(self, sock: socket.socket, first: bytes) -> None:
        # Read what the client sent before answering, or closing with unread data
        # would reset the connection and destroy our answer in its receive buffer.
        with contextlib.suppress(BlockingIOError):
            sock.recv(READ_SIZE)
        await self._loop.sock_sendall(sock, self.plain_answer(first))
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_TIMEOUT):
                while await self._loop.sock_recv(sock, READ_SIZE):
                    pass
