"""The thread runtime's TCP server: an accept thread and one thread per client.

This is the classic model of the course material, made dependable: the number
of client threads is bounded by a semaphore (a client past the cap gets the
service's "busy" refusal), silent clients are closed at the idle timeout, and
:meth:`Server.shutdown` stops accepting, lets connections finish for up to
``drain_timeout`` seconds, then closes the rest.

With ``ssl``, each connection's thread runs the TLS handshake (bounded by
``handshake_timeout``) before the handler exists, over
:class:`enlace.tls.TLSSocket`; a plain client is told ``ERR tls_required``.
A :class:`~enlace.policy.ConnectionPolicy` (allow-list, per-address cap) is
checked on accept, before any thread or handler.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl as _ssl
import threading
import time
from types import TracebackType
from typing import cast

from enlace.addresses import format_address
from enlace.exceptions import EnlaceError, TLSError
from enlace.limits import (
    DRAIN_TIMEOUT,
    IDLE_TIMEOUT,
    LINGER_BYTES,
    LINGER_TIMEOUT,
    MAX_CONNECTIONS_THREADS,
    MAX_LINGERING_REFUSALS,
    MAX_OUTBOUND,
    MAX_PER_IP,
    READ_SIZE,
    SLOW_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
)
from enlace.logs import log_handshake_failed, log_refused, logger_for
from enlace.policy import ConnectionPolicy
from enlace.services.base import StreamService
from enlace.sockets import discard_input, listen_tcp, peer_address
from enlace.sync.connection import Connection
from enlace.tls import TLSSocket, server_handshake

__all__ = ["Server"]


class Server:
    """Serve a :class:`~enlace.services.base.StreamService` with a thread per client.

    Use it as a context manager, or call :meth:`start` and :meth:`shutdown`::

        with Server(EchoService(), "127.0.0.1", 6543) as server:
            server.serve_forever()
    """

    def __init__(
        self,
        service: StreamService,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int | None = MAX_CONNECTIONS_THREADS,
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
        self._listener: socket.socket | None = None
        self._slots = (
            threading.BoundedSemaphore(max_connections) if max_connections is not None else None
        )
        self._connections: set[Connection] = set()
        self._starting = 0  # threads handshaking, not yet in _connections
        self._closing = False  # shutdown has closed the connections it found
        self._tls_refusals: set[socket.socket] = set()  # refused TLS clients, on their threads
        self._idle = threading.Condition()
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the real port when 0 was asked for)."""
        if self._listener is None:
            raise EnlaceError("the server is not started")
        return peer_address(self._listener.getsockname())

    @property
    def connection_count(self) -> int:
        """Connections being served right now."""
        with self._idle:
            return len(self._connections)

    def start(self) -> None:
        """Listen and start accepting in a background thread; returns at once."""
        if self._listener is not None:
            return
        self._listener = listen_tcp(self.host, self.port, backlog=self.backlog)
        self._listener.setblocking(False)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"enlace-{self.service.name}-accept", daemon=True
        )
        self._accept_thread.start()

    def serve_forever(self) -> None:
        """Start if needed, then block until :meth:`shutdown` is called (from another thread)."""
        self.start()
        self._stopped.wait()

    def shutdown(self, drain_timeout: float | None = -1.0) -> None:
        """Stop accepting, let connections finish, then close the rest.

        ``drain_timeout`` defaults to the server's; ``None`` waits for ever.
        """
        if drain_timeout is not None and drain_timeout < 0:
            drain_timeout = self.drain_timeout
        if self._accept_thread is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self._accept_thread.join()
            self._accept_thread = None
        deadline = None if drain_timeout is None else time.monotonic() + drain_timeout
        with self._idle:
            while self._connections or self._starting:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)
            self._closing = True
            leftovers = list(self._connections)
            refused = list(self._tls_refusals)
        for connection in leftovers:
            connection.close()
        for sock in refused:
            # Wakes its thread from the handshake or the lingering read; it then closes it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._idle:
            # Closing wakes each thread from recv(); their last step is quick.
            self._idle.wait_for(
                lambda: not self._connections and not self._tls_refusals,
                timeout=LINGER_TIMEOUT + 1.0,
            )
            stuck = list(self._connections)
        for connection in stuck:
            # Held up in a handler, which no thread can interrupt: its client at least
            # learns now that the connection is over (the asyncio runtime aborts too).
            connection.abort()
        self._wake_r.close()
        self._wake_w.close()
        self._stopped.set()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- accepting -------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        lingering: dict[socket.socket, float] = {}
        paused_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                deadlines = list(lingering.values())
                if paused_until is not None:
                    deadlines.append(paused_until)
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                for key, _ in selector.select(timeout):
                    if key.data == "wake":
                        return
                    if key.data == "accept":
                        if not self._accept_ready(listener, selector, lingering):
                            # Out of descriptors or memory: back off instead of spinning.
                            selector.unregister(listener)
                            paused_until = time.monotonic() + 0.1
                    else:  # a lingering refusal: its data counts the bytes discarded
                        self._discard(key.fileobj, key.data, selector, lingering)  # type: ignore[arg-type]
                now = time.monotonic()
                for sock, deadline in list(lingering.items()):
                    if deadline <= now:
                        selector.unregister(sock)
                        del lingering[sock]
                        sock.close()
                if paused_until is not None and paused_until <= now:
                    selector.register(listener, selectors.EVENT_READ, "accept")
                    paused_until = None
        finally:
            for sock in lingering:
                sock.close()
            selector.close()
            listener.close()

    def _accept_ready(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        lingering: dict[socket.socket, float],
    ) -> bool:
        # Bounded per wake-up so that lingering refusals and shutdown stay responsive.
        for _ in range(64):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return True
            except OSError:
                self.logger.exception("accept failed")
                return False
            peer = peer_address(address)
            if not self.policy.allowed(peer[0]):
                log_refused(self.logger, peer, "not in the allow-list")
                sock.close()
                continue
            refused = self.policy.acquire(peer[0])
            if (
                refused is None
                and self._slots is not None
                and not self._slots.acquire(blocking=False)
            ):
                self.policy.release(peer[0])
                refused = f"too many connections (limit {self.max_connections})"
            if refused is not None:
                self._refuse(sock, peer, selector, lingering, refused)
                continue
            self._begin(sock, peer)
        return True

    def _refuse(
        self,
        sock: socket.socket,
        peer: tuple[str, int],
        selector: selectors.BaseSelector,
        lingering: dict[socket.socket, float],
        reason: str,
    ) -> None:
        log_refused(self.logger, peer, reason)
        if self.ssl is not None:
            self._refuse_tls(sock, peer, reason)
            return
        sock.setblocking(False)
        try:
            sock.send(self.service.refusal(reason))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(lingering) >= MAX_LINGERING_REFUSALS:
            sock.close()
            return
        lingering[sock] = time.monotonic() + LINGER_TIMEOUT
        selector.register(sock, selectors.EVENT_READ, [0])

    def _refuse_tls(self, sock: socket.socket, peer: tuple[str, int], reason: str) -> None:
        # The refusal must be encrypted to be read, so it costs a handshake: done on
        # a short-lived thread, at most MAX_LINGERING_REFUSALS at once (past that,
        # a plain close), so a flood cannot make threads without bound.
        with self._idle:
            if len(self._tls_refusals) >= MAX_LINGERING_REFUSALS:
                sock.close()
                return
            self._tls_refusals.add(sock)

        def refuse() -> None:
            try:
                tls = self._handshake(sock, peer)
                if tls is not None:
                    with contextlib.suppress(OSError):
                        tls.sendall(self.service.refusal(reason))
                        tls.shutdown(socket.SHUT_WR)
                        discard_input(tls.raw, timeout=LINGER_TIMEOUT, max_bytes=LINGER_BYTES)
            finally:
                with self._idle:
                    self._tls_refusals.discard(sock)
                    self._idle.notify_all()
                sock.close()

        threading.Thread(target=refuse, name="enlace-refuse", daemon=True).start()

    def _handshake(self, sock: socket.socket, peer: tuple[str, int]) -> TLSSocket | None:
        """Run the server side of the TLS handshake on ``sock``; None if it failed (logged)."""
        assert self.ssl is not None
        try:
            return server_handshake(sock, self.ssl, timeout=self.handshake_timeout)
        except TLSError as exc:
            log_handshake_failed(self.logger, peer, str(exc))
            return None

    @staticmethod
    def _discard(
        sock: socket.socket,
        discarded: list[int],
        selector: selectors.BaseSelector,
        lingering: dict[socket.socket, float],
    ) -> None:
        try:
            size = len(sock.recv(READ_SIZE))
        except BlockingIOError:
            return
        except OSError:
            size = 0
        discarded[0] += size
        if not size or discarded[0] > LINGER_BYTES:
            selector.unregister(sock)
            del lingering[sock]
            sock.close()

    def _begin(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        with self._idle:
            self._starting += 1
        thread = threading.Thread(
            target=self._serve,
            args=(sock, peer),
            name=f"enlace-{self.service.name}-{peer[0]}:{peer[1]}",
            daemon=True,
        )
        thread.start()

    def _setup(self, sock: socket.socket, peer: tuple[str, int]) -> Connection | None:
        # On the connection's own thread, so a slow TLS handshake holds up no one else.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream: socket.socket | TLSSocket = sock
            if self.ssl is not None:
                tls = self._handshake(sock, peer)
                if tls is None:
                    sock.close()
                    return None
                stream = tls
            handler = self.service.handler()
        except Exception:
            self.logger.exception("could not set up a connection from %s", format_address(*peer))
            sock.close()
            return None
        # A TLSSocket has every socket method the connection and Outbound use.
        return Connection(self, cast(socket.socket, stream), peer, handler)

    def _serve(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        connection = None
        try:
            connection = self._setup(sock, peer)
            with self._idle:
                self._starting -= 1
                if connection is not None:
                    self._connections.add(connection)
                    if self._closing:
                        # Set up (a TLS handshake) after shutdown closed the others:
                        # closed the same way, instead of served.
                        connection.close()
            if connection is not None:
                connection.run()
        finally:
            if self._slots is not None:
                self._slots.release()
            self.policy.release(peer[0])
            with self._idle:
                if connection is not None:
                    self._connections.discard(connection)
                self._idle.notify_all()
