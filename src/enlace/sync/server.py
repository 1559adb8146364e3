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

import asyncio
import contextlib
import logging
import selectors
import socket
import ssl as _ssl
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, cast

from enlace.addresses import format_address
from enlace.exceptions import EnlaceError, TLSError
from enlace.limits import (
    DRAIN_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS_THREADS,
    MAX_OUTBOUND,
    MAX_PER_IP,
    READ_SIZE,
    SLOW_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
)
from enlace.logs import log_closed, log_handshake_failed, log_refused, logger_for
from enlace.policy import ConnectionPolicy
from enlace.services.base import StreamHandler, StreamService
from enlace.sockets import listen_tcp, peer_address
from enlace.sync.outbound import Outbound
from enlace.tls import TLSSocket, server_handshake

__all__ = ["Server"]

# After the server closes a connection, it keeps reading (and discarding) for a
# moment so that a client still sending does not get a reset that would destroy
# our last reply in its receive buffer (the "lingering close" of Apache and nginx).
_LINGER_TIMEOUT = 2.0
_LINGER_BYTES = 1024 * 1024
# Refused sockets lingering at once; past this, refusals close straight away.
_MAX_LINGERING_REFUSALS = 64


_get_ident = threading.get_ident  # bound once: called for every reply

# Each client thread has its own buffer, so it starts smaller than the asyncio
# runtime's shared one, and grows to READ_SIZE once a read fills it.
_THREAD_READ_SIZE = 64 * 1024


def _set_kernel_timeouts(sock: socket.socket, timeout: float | None) -> None:
    """Bound blocking recv/send with SO_RCVTIMEO/SO_SNDTIMEO.

    Python's own socket timeouts poll() before every call, one extra system call
    per read and write; the kernel's timeouts cost nothing until they fire, and
    then the call fails with EAGAIN (BlockingIOError).
    """
    sock.settimeout(None)
    if timeout is None:
        return
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


_helper: asyncio.AbstractEventLoop | None = None
_helper_lock = threading.Lock()


def _helper_loop() -> asyncio.AbstractEventLoop:
    """The event loop that runs ``async`` handlers for the thread runtime, started once."""
    global _helper  # noqa: PLW0603 - one loop per process, started on first use
    with _helper_lock:
        if _helper is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="enlace-async", daemon=True).start()
            _helper = loop
        return _helper


class _Connection:
    """One client: its socket, its thread's receive loop, and its Transport methods."""

    def __init__(
        self, server: Server, sock: socket.socket, peer: tuple[str, int], handler: StreamHandler
    ) -> None:
        self._server = server
        self._sock = sock
        self._peer = peer
        self._handler = handler
        self._close_requested = threading.Event()
        # The event's flag as a plain attribute, for the per-chunk and per-reply checks.
        self._closing = False
        self._owner: int | None = None
        # Replies written by the handler during a callback, sent together after it.
        self._corked: list[bytes] | None = None
        self._eof = False
        self._send_failure: tuple[str, OSError | None] | None = None
        self._outbound = Outbound(
            sock,
            self._send_failed,
            max_outbound=server.max_outbound,
            slow_timeout=server.slow_timeout,
        )
        self.bytes_in = 0

    @property
    def bytes_out(self) -> int:
        return self._outbound.sent

    # -- Transport ---------------------------------------------------------

    @property
    def peer(self) -> tuple[str, int]:
        return self._peer

    def write(self, data: bytes) -> None:
        if not data or self._closing:
            return  # as in the asyncio runtime: nothing is sent after close()
        if self._corked is not None and _get_ident() == self._owner:
            self._corked.append(data)
        else:
            self._send(data)

    def close(self) -> None:
        if self._close_requested.is_set():
            return
        self._closing = True
        self._close_requested.set()
        if threading.get_ident() != self._owner:
            # Wake the connection's thread from recv(); it sends what is still
            # waiting before it closes, so only the reading side is shut here.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)

    def pause_reading(self) -> None:
        # Nothing to do: this thread reads only between callbacks, so a handler
        # that is still busy already holds the client's next bytes back.
        pass

    def resume_reading(self) -> None:
        pass

    def call_async(
        self,
        work: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        if self._corked and threading.get_ident() == self._owner:
            # Replies already written in this callback go out before we block, so
            # events pushed meanwhile by other threads cannot overtake them.
            corked, self._corked = self._corked, []
            self._send(corked[0] if len(corked) == 1 else b"".join(corked))
        future = asyncio.run_coroutine_threadsafe(work, _helper_loop())
        try:
            result, error = future.result(), None
        except BaseException as exc:  # noqa: BLE001 - handed to done(), which decides
            result, error = None, exc
        if threading.get_ident() == self._owner:
            done(result, error)  # already inside a corked callback
        else:
            self._call(done, result, error)

    # -- the connection's thread -------------------------------------------

    def _send(self, data: bytes) -> None:
        # Never blocks another client's thread (a broadcast); see enlace.sync.outbound.
        self._outbound.send(data, own_thread=_get_ident() == self._owner)

    def _send_failed(self, reason: str, error: OSError | None) -> None:
        self._send_failure = (reason, error)
        self._closing = True
        self._close_requested.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wake the connection's thread

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        """Run a handler callback with writes corked, then send them in one go."""
        self._corked = []
        try:
            callback(*args)
        finally:
            corked, self._corked = self._corked, None
            if corked:
                self._send(corked[0] if len(corked) == 1 else b"".join(corked))

    def run(self) -> None:
        self._owner = threading.get_ident()
        started = time.monotonic()
        reason = "closed by client"
        error: BaseException | None = None
        sock, handler = self._sock, self._handler
        _set_kernel_timeouts(sock, self._server.idle_timeout)
        # recv_into one buffer per connection: recv(n) would allocate n bytes per
        # call, and above 128 KiB that means mapping and unmapping memory each time.
        buffer = memoryview(bytearray(_THREAD_READ_SIZE))
        try:
            self._call(handler.connection_made, self)
            recv_into, received, send = sock.recv_into, handler.data_received, self._outbound.send
            while not self._closing:
                size = recv_into(buffer)
                data = buffer[:size].tobytes()
                if size == len(buffer) < READ_SIZE:
                    buffer = memoryview(bytearray(READ_SIZE))  # a bulk sender: read more at once
                if not data:
                    if self._close_requested.is_set():
                        break  # woken by close() from another thread, not a client EOF
                    self._eof = True
                    self._call(handler.eof_received)
                    if not self._close_requested.wait(self._server.idle_timeout):
                        reason = "idle timeout after client EOF"
                    break
                self.bytes_in += size
                # _call(), inlined: this runs for every chunk received.
                self._corked = []
                try:
                    received(data)
                finally:
                    corked, self._corked = self._corked, None
                    if corked:  # _send(), on the connection's own thread
                        send(corked[0] if len(corked) == 1 else b"".join(corked), own_thread=True)
            if self._send_failure is not None:
                reason, error = self._send_failure
            elif self._close_requested.is_set():
                reason = "closed by server" if not self._eof else "done"
        except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO ran out: EAGAIN
            reason = "idle timeout"
        except OSError as exc:
            reason, error = f"connection lost: {exc.strerror or exc}", exc
        except Exception as exc:  # a handler bug must cost one connection, not the server
            reason, error = f"handler error: {exc!r}", exc
            self._server.logger.exception("handler error on %s", format_address(*self._peer))
        finally:
            self._finish(reason, error, started)

    def _finish(self, reason: str, error: BaseException | None, started: float) -> None:
        if self._send_failure is None and error is None:
            self._outbound.drain(self._server.slow_timeout)
            if not self._eof:
                self._linger()
        if self._send_failure is not None:
            reason = self._send_failure[0]
        self._outbound.stop(reason)
        self._sock.close()
        try:
            self._handler.connection_lost(error)
        except Exception:
            self._server.logger.exception(
                "error in connection_lost on %s", format_address(*self._peer)
            )
        log_closed(
            self._server.logger,
            self._peer,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=time.monotonic() - started,
            reason=reason,
        )

    def _linger(self) -> None:
        sock = self._sock
        deadline = time.monotonic() + _LINGER_TIMEOUT
        discarded = 0
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            while discarded < _LINGER_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                chunk = sock.recv(READ_SIZE)
                if not chunk:
                    break
                discarded += len(chunk)


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
        self._connections: set[_Connection] = set()
        self._starting = 0  # threads handshaking, not yet in _connections
        self._tls_refusals = 0
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
            leftovers = list(self._connections)
        for connection in leftovers:
            connection.close()
        with self._idle:
            # Closing wakes each thread from recv(); their last step is quick.
            self._idle.wait_for(lambda: not self._connections, timeout=_LINGER_TIMEOUT + 1.0)
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
                    else:
                        self._discard(key.fileobj, selector, lingering)  # type: ignore[arg-type]
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
        if len(lingering) >= _MAX_LINGERING_REFUSALS:
            sock.close()
            return
        lingering[sock] = time.monotonic() + _LINGER_TIMEOUT
        selector.register(sock, selectors.EVENT_READ, "linger")

    def _refuse_tls(self, sock: socket.socket, peer: tuple[str, int], reason: str) -> None:
        # The refusal must be encrypted to be read, so it costs a handshake: done on
        # a short-lived thread, at most _MAX_LINGERING_REFUSALS at once (past that,
        # a plain close), so a flood cannot make threads without bound.
        with self._idle:
            if self._tls_refusals >= _MAX_LINGERING_REFUSALS:
                sock.close()
                return
            self._tls_refusals += 1

        def refuse() -> None:
            try:
                tls = self._handshake(sock, peer)
                if tls is not None:
                    with contextlib.suppress(OSError):
                        tls.sendall(self.service.refusal(reason))
                        tls.shutdown(socket.SHUT_WR)
                        tls.raw.settimeout(_LINGER_TIMEOUT)
                        tls.raw.recv(READ_SIZE)
            finally:
                sock.close()
                with self._idle:
                    self._tls_refusals -= 1

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
        sock: socket.socket, selector: selectors.BaseSelector, lingering: dict[socket.socket, float]
    ) -> None:
        try:
            done = not sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            done = True
        if done:
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

    def _setup(self, sock: socket.socket, peer: tuple[str, int]) -> _Connection | None:
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
        return _Connection(self, cast(socket.socket, stream), peer, handler)

    def _serve(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        connection = None
        try:
            connection = self._setup(sock, peer)
            with self._idle:
                self._starting -= 1
                if connection is not None:
                    self._connections.add(connection)
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
