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

A client the server is too full for (``refusal_reason``) is refused here, before
any protocol exists, as the thread runtime refuses on accept: the loop's TLS
transport cannot half-close, and closing it with the client's request unread
resets the connection and destroys the refusal. So the refusal runs its own
handshake (:class:`ssl.SSLObject` between two :class:`ssl.MemoryBIO`), sends the
answer and close_notify, shuts the socket's sending side and reads and drops what
the client still sends, for at most ``LINGER_TIMEOUT`` seconds or ``LINGER_BYTES``
(a lingering close). At most ``MAX_LINGERING_REFUSALS`` do so at once; past that,
a refused client is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
from collections import Counter
from collections.abc import Callable

from enlace.limits import LINGER_BYTES, LINGER_TIMEOUT, MAX_LINGERING_REFUSALS, READ_SIZE
from enlace.logs import log_handshake_failed, log_refused
from enlace.policy import ConnectionPolicy
from enlace.sockets import peer_address
from enlace.tls import handshake_failure_reason, is_tls_hello

__all__ = ["TLSAcceptor"]

# Back-off after a failed accept (out of descriptors or memory) instead of spinning.
_ACCEPT_BACKOFF = 0.1
# Raw bytes read at once during a refusal's handshake: two full TLS records.
_HANDSHAKE_READ = 32 * 1024


class TLSAcceptor:
    """Accept on ``listener`` and start TLS for each client, on the running loop.

    ``protocol_factory`` makes the protocol of each TLS connection;
    ``plain_answer(first_byte)`` is what a client that does not start with a TLS
    handshake is told, in clear text, before the close.

    ``refusal_reason(host, pending, pending_from_host)`` says why a TLS client
    from ``host`` is turned away (None admits it), counting ``pending``
    handshakes admitted and not yet connected (``pending_from_host`` of them from
    ``host``): each will be a connection in a moment. A refused client is told
    ``refusal_answer(reason)``, encrypted, with a lingering close. Without them,
    every TLS client is handed to ``protocol_factory``.
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
        refusal_reason: Callable[[str, int, int], str | None] | None = None,
        refusal_answer: Callable[[str], bytes] | None = None,
    ) -> None:
        if (refusal_reason is None) != (refusal_answer is None):
            raise ValueError("refusal_reason and refusal_answer go together")
        self.listener = listener
        self.ssl = ssl
        self.protocol_factory = protocol_factory
        self.plain_answer = plain_answer
        self.policy = policy
        self.logger = logger
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self.refusal_reason = refusal_reason
        self.refusal_answer = refusal_answer
        self._loop = asyncio.get_running_loop()
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._refusals: set[asyncio.Task[None]] = set()
        # Admitted clients in the loop's handshake, by address: not connections yet,
        # but each is about to be one, so refusal_reason counts them.
        self._pending: Counter[str] = Counter()
        # Lingering refusals read into this and drop it: one buffer for them all.
        self._scratch = memoryview(bytearray(READ_SIZE))

    def start(self) -> None:
        """Start accepting (the listener is made non-blocking)."""
        self.listener.setblocking(False)
        self._accepting = self._loop.create_task(self._accept())

    async def stop(self) -> None:
        """Stop accepting, give up the handshakes and refusals in progress, close the listener."""
        tasks = [t for t in (self._accepting, *self._handshakes, *self._refusals) if t is not None]
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
            elif (refused := self._refusal(peer[0])) is not None:
                self._start_refusal(sock, peer, refused)
                return
            else:
                await self._connect(sock, peer[0])
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

    async def _connect(self, sock: socket.socket, host: str) -> None:
        self._pending[host] += 1
        try:
            await self._loop.connect_accepted_socket(
                self.protocol_factory,
                sock,
                ssl=self.ssl,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        finally:
            self._pending[host] -= 1
            if not self._pending[host]:
                del self._pending[host]

    def _refusal(self, host: str) -> str | None:
        if self.refusal_reason is None:
            return None
        return self.refusal_reason(host, self._pending.total(), self._pending[host])

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
            sock.recv_into(self._scratch)
        await self._linger(sock, self.plain_answer(first))

    # -- refusals ------------------------------------------------------------------

    def _start_refusal(self, sock: socket.socket, peer: tuple[str, int], reason: str) -> None:
        log_refused(self.logger, peer, reason)
        if len(self._refusals) >= MAX_LINGERING_REFUSALS:
            sock.close()
            return
        task = self._loop.create_task(self._refuse(sock, peer, reason))
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def _refuse(self, sock: socket.socket, peer: tuple[str, int], reason: str) -> None:
        assert self.refusal_answer is not None
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    tls, outgoing = await self._handshake(sock)
            except TimeoutError:
                log_handshake_failed(self.logger, peer, "timed out")
                return
            except OSError as exc:  # ssl.SSLError included
                log_handshake_failed(self.logger, peer, handshake_failure_reason(exc))
                return
            tls.write(self.refusal_answer(reason))
            # close_notify, TLS's end of stream: the client reads the refusal, then EOF.
            with contextlib.suppress(_ssl.SSLError):
                tls.unwrap()
            with contextlib.suppress(OSError):
                await self._linger(sock, outgoing.read())
        finally:
            sock.close()

    async def _handshake(self, sock: socket.socket) -> tuple[_ssl.SSLObject, _ssl.MemoryBIO]:
        """The server side of a handshake on ``sock``; returns the TLS object and its output."""
        incoming, outgoing = _ssl.MemoryBIO(), _ssl.MemoryBIO()
        tls = self.ssl.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
            except _ssl.SSLWantReadError:
                pass
            else:
                return tls, outgoing
            if data := outgoing.read():
                await self._loop.sock_sendall(sock, data)
            # Not into the shared scratch buffer: another refusal's read could land in
            # it before this task resumes to use what it read.
            data = await self._loop.sock_recv(sock, _HANDSHAKE_READ)
            if not data:
                raise ConnectionResetError("closed during the TLS handshake")
            incoming.write(data)

    async def _linger(self, sock: socket.socket, last: bytes) -> None:
        """Send ``last`` and a FIN, then drop input until EOF, LINGER_BYTES or LINGER_TIMEOUT.

        The timeout covers all of it, sending included, so a client that trickles
        bytes (or reads nothing) cannot stretch it.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_TIMEOUT):
                await self._loop.sock_sendall(sock, last)
                sock.shutdown(socket.SHUT_WR)
                discarded = 0
                while discarded < LINGER_BYTES:
                    size = await self._loop.sock_recv_into(sock, self._scratch)
                    if not size:
                        return
                    discarded += size
