"""A client of :class:`enlace.asyncio.Server`: loop callbacks in, the handler's Transport out.

The logic is in :class:`Connection`; which protocol interface carries the bytes
in depends on the event loop (:func:`connection_class`). On asyncio's own loop,
a :class:`BufferedConnection` (``asyncio.BufferedProtocol``): a plain
``Protocol`` transport there reads with ``recv(256 KiB)``, allocating (and, at
that size, mapping and unmapping) 256 KiB for every read however small, so we
read into one buffer per server and hand the handler an exact-size copy. On
uvloop, a :class:`StreamConnection` (``asyncio.Protocol``): uvloop's own reads
already produce exact-size ``bytes`` in C, and a buffered protocol would only
add a Python call (``get_buffer``) and a copy per read.

Replies written during one callback leave in a single ``transport.write``.
Backpressure is explicit: when a client does not read, its transport pauses
writing and we pause reading from it, so a client that sends without reading
cannot make the server buffer without bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from enlace.addresses import format_address
from enlace.limits import LINGER_BYTES, LINGER_TIMEOUT, WRITE_BUFFER_HIGH
from enlace.logs import log_closed, log_refused, lost_reason
from enlace.services.base import StreamHandler
from enlace.sockets import peer_address

if TYPE_CHECKING:
    from enlace.asyncio.server import Server

__all__ = ["BufferedConnection", "Connection", "StreamConnection", "connection_class"]

# Bound once: this runs for every reply.
_thread_id = threading.get_ident

# The idle timeout is checked on a timer, this many times per timeout, by whether
# bytes arrived since the last check: no clock is read per chunk received (the
# hottest path), and a silent client is closed between 1 and 1.25 timeouts after
# its last byte.
_IDLE_CHECKS = 4


class Connection(asyncio.BaseProtocol):
    """One client: the loop's callbacks in, the service handler's Transport out.

    Not a protocol by itself: :class:`StreamConnection` and
    :class:`BufferedConnection` add the interface the loop reads through.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self._loop = server._loop
        self._transport: asyncio.Transport | None = None
        self._handler: StreamHandler | None = None
        self._peer: tuple[str, int] = ("?", 0)
        self._corked: list[bytes] | None = None
        self._closing = False
        self._eof = False
        self._discarded = 0  # bytes thrown away while lingering
        self._refused = False
        self._reason = "closed by client"
        self._started = time.monotonic()
        self._loop_thread = server._loop_thread
        self._idle_mark = 0  # bytes_in at the last idle check
        self._quiet_checks = 0  # idle checks in a row that saw no new bytes
        self._timer: asyncio.TimerHandle | None = None
        self._slow_timer: asyncio.TimerHandle | None = None
        self._paused_by: set[str] = set()
        self._lost = False  # connection_lost() has run
        self._tasks: set[asyncio.Task[Any]] = set()
        self._max_outbound = server.max_outbound
        # Whether _send must ask the transport how much output waits. Not while the
        # transport has not paused writing (less than its high-water mark waits) and
        # the limit is at least that mark: then nothing can be over the limit.
        self._watch_outbound = self._max_outbound is not None
        self.bytes_in = 0
        self.bytes_out = 0

    # -- Transport (what the handler calls) ----------------------------------

    @property
    def peer(self) -> tuple[str, int]:
        return self._peer

    def write(self, data: bytes) -> None:
        if _thread_id() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.write, data)
            return
        if not data or self._closing:
            return
        self.bytes_out += len(data)
        corked = self._corked
        if corked is not None:
            corked.append(data)
        else:
            self._send(data)

    def close(self) -> None:
        if _thread_id() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.close)
            return
        if self._closing:
            return
        self._closing = True
        if self._corked is None:
            self._shut()
        # else: _call() shuts after sending what the callback wrote

    def pause_reading(self) -> None:
        self._pause("handler")

    def resume_reading(self) -> None:
        self._resume("handler")

    def call_async(
        self,
        work: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(lambda task: self._task_done(task, done))

    def _task_done(
        self, task: asyncio.Task[Any], done: Callable[[Any, BaseException | None], None]
    ) -> None:
        self._tasks.discard(task)
        # Gone: cancelled by connection_lost(), or finished anyway (work that caught the
        # cancellation); either way the handler has been told the end and hears no more.
        if task.cancelled() or self._lost:
            return
        error = task.exception()
        self._call(done, None if error else task.result(), error)

    def _pause(self, reason: str) -> None:
        # Two independent reasons to stop reading: the client does not read our
        # replies (backpressure), or the handler has too many requests queued.
        if not self._paused_by and self._transport is not None and not self._closing:
            self._transport.pause_reading()
        self._paused_by.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused_by.discard(reason)
        if not self._paused_by and self._transport is not None and not self._closing:
            self._transport.resume_reading()

    # -- asyncio.Protocol (what the loop calls) --------------------------------

    def data_received(self, data: bytes) -> None:
        # The hottest path of the runtime: _call() and _send() inlined, one write per chunk.
        if self._closing:
            self._discard(len(data))
            return
        self.bytes_in += len(data)
        corked: list[bytes] = []
        self._corked = corked
        try:
            self._handler.data_received(data)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - a handler bug costs one connection only
            self._handler_failed(exc)
        self._corked = None
        if corked:
            data = corked[0] if len(corked) == 1 else b"".join(corked)
            transport = self._transport
            if self._watch_outbound or transport is None or transport.is_closing():
                self._send(data)  # the checks, and the drop, out of the common path
            else:
                transport.write(data)
        if self._closing:
            self._shut()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        self._peer = peer_address(transport.get_extra_info("peername"))
        server = self._server
        server._connections.add(self)
        if server._shutting_down:
            # Accepted by the loop in the same turn as shutdown(): too late to be served.
            self._refused = True
            transport.abort()
            return
        if not server.policy.allowed(self._peer[0]):
            self._refused = True
            log_refused(server.logger, self._peer, "not in the allow-list")
            transport.abort()
            return
        refused = server._over_capacity() or server.policy.acquire(self._peer[0])
        if refused is not None:
            self._refuse(refused)
            return
        server._active += 1
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        limit = self._max_outbound
        self._watch_outbound = limit is not None and limit < transport.get_write_buffer_limits()[1]
        if server.idle_timeout is not None:
            self._timer = self._loop.call_later(
                server.idle_timeout / _IDLE_CHECKS, self._check_idle
            )
        try:
            self._handler = server.service.handler()
        except Exception:
            server.logger.exception(
                "could not set up a connection from %s", format_address(*self._peer)
            )
            self._reason = "setup error"
            transport.abort()
            return
        self._call(self._handler.connection_made, self)

    @property
    def _keep_open_on_eof(self) -> bool:
        # asyncio's TLS cannot half-close (it warns when asked to): a TLS connection
        # ends once what the handler wrote so far is sent.
        return self._server.ssl is None

    def eof_received(self) -> bool:
        self._eof = True
        if self._closing:
            if self._transport is not None:
                self._transport.close()
            return self._keep_open_on_eof
        assert self._handler is not None
        self._call(self._handler.eof_received)
        # Keep the transport: the handler closes it once its replies are written.
        return self._keep_open_on_eof

    def pause_writing(self) -> None:
        self._watch_outbound = self._max_outbound is not None
        self._pause("writing")
        timeout = self._server.slow_timeout
        if timeout is not None and self._slow_timer is None:
            reason = f"slow consumer: output unread for {timeout:g} s"
            self._slow_timer = self._loop.call_later(timeout, self._drop_slow, reason)

    def resume_writing(self) -> None:
        limit = self._max_outbound
        if self._transport is not None and limit is not None:
            self._watch_outbound = limit < self._transport.get_write_buffer_limits()[1]
        self._resume("writing")
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
        if self._slow_timer is not None:
            self._slow_timer.cancel()
        for task in self._tasks:
            task.cancel()
        server = self._server
        server._connections.discard(self)
        if not server._connections and server._drained is not None:
            server._drained.set()
        if self._refused:
            return
        server._active -= 1
        server.policy.release(self._peer[0])
        if exc is not None and not self._reason.startswith("slow consumer"):
            self._reason = lost_reason(exc)
        if self._handler is not None:
            try:
                self._handler.connection_lost(exc)
            except Exception:
                server.logger.exception(
                    "error in connection_lost on %s", format_address(*self._peer)
                )
        log_closed(
            server.logger,
            self._peer,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=time.monotonic() - self._started,
            reason=self._reason,
        )

    # -- used by Server.shutdown -------------------------------------------------

    def force_close(self, reason: str) -> None:
        """Close now, after pending replies but without lingering for the client."""
        self._reason = reason
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection, pending replies included."""
        if self._transport is not None:
            self._transport.abort()

    # -- internals -------------------------------------------------------------

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        """Run a handler callback with writes corked, then send them in one go."""
        self._corked = []
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - a handler bug costs one connection only
            self._handler_failed(exc)
        finally:
            corked, self._corked = self._corked, None
            if corked:
                self._send(corked[0] if len(corked) == 1 else b"".join(corked))
            if self._closing:
                self._shut()

    def _send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        limit = self._max_outbound
        if (
            self._watch_outbound
            and limit is not None
            and (waiting := transport.get_write_buffer_size()) > limit
        ):
            self._drop_slow(f"slow consumer: {waiting} bytes of output waiting (limit {limit})")
            return
        transport.write(data)

    def _drop_slow(self, reason: str) -> None:
        # Its output cannot be delivered anyway: drop it, so that the memory is
        # freed now and the others never wait for this client.
        self._reason = reason
        self._closing = True
        if self._slow_timer is not None:
            self._slow_timer.cancel()
        if self._transport is not None:
            self._transport.abort()

    def _handler_failed(self, exc: Exception) -> None:
        self._server.logger.error("handler error on %s", format_address(*self._peer), exc_info=exc)
        self._reason = f"handler error: {exc!r}"
        self._closing = True

    def _shut(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._reason == "closed by client":
            self._reason = "done" if self._eof else "closed by server"
        if self._eof:
            transport.close()
            return
        if not transport.can_write_eof():
            # TLS: close() sends close_notify and waits for the client's, or its FIN,
            # which the transport reads only while reading is on (a refusal pauses it).
            transport.resume_reading()
            transport.close()
            return
        # Lingering close: send our FIN after the pending replies, keep reading
        # (and discarding) until the client's FIN or a short deadline.
        transport.write_eof()
        transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(LINGER_TIMEOUT, transport.close)

    def _discard(self, size: int) -> None:
        self._discarded += size
        if self._discarded > LINGER_BYTES and self._transport is not None:
            self._transport.close()

    def _check_idle(self) -> None:
        timeout = self._server.idle_timeout
        assert timeout is not None
        if self.bytes_in != self._idle_mark:
            self._idle_mark = self.bytes_in
            self._quiet_checks = 0
        else:
            self._quiet_checks += 1
            if self._quiet_checks >= _IDLE_CHECKS:
                self._reason = "idle timeout"
                self._closing = True
                if self._eof and self._transport is not None:
                    self._transport.abort()
                else:
                    self._shut()
                return
        self._timer = self._loop.call_later(timeout / _IDLE_CHECKS, self._check_idle)

    def _refuse(self, reason: str) -> None:
        assert self._transport is not None
        self._refused = True
        self._closing = True
        server = self._server
        log_refused(server.logger, self._peer, reason)
        self._transport.write(server.service.refusal(reason))
        # Refused clients linger like the others (see _shut), a bounded number at once.
        if server._may_linger_refused():
            self._shut()
        else:
            self._transport.close()


class StreamConnection(Connection, asyncio.Protocol):
    """A :class:`Connection` read through ``data_received`` (for uvloop)."""


class BufferedConnection(Connection, asyncio.BufferedProtocol):
    """A :class:`Connection` read into the server's one buffer (for asyncio's own loop)."""

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self._read_buffer = server._read_buffer

    def get_buffer(self, sizehint: int) -> memoryview:
        # Shared by all connections: the loop calls buffer_updated() right after
        # filling it, and buffer_updated() copies the bytes out before returning.
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes].tobytes())


def connection_class(loop: asyncio.AbstractEventLoop) -> type[Connection]:
    """The connection class for ``loop``: see the module's docstring for why it differs."""
    if type(loop).__module__.partition(".")[0] == "uvloop":
        return StreamConnection
    return BufferedConnection
