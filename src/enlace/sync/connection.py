"""One client of the thread runtime's TCP server: its thread's receive loop and its Transport.

:class:`Connection` is what a :class:`~enlace.services.base.StreamHandler` sees
as its transport on ``--runtime threads``: the connection's own thread reads
(the idle timeout is the kernel's ``SO_RCVTIMEO``), calls the handler with its
writes corked into one send, and hands output to
:class:`~enlace.sync.outbound.Outbound`, so a write from another thread (a
broadcast) never blocks on this client. Closing drains what is waiting, then
lingers reading for a moment so the client gets our last bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from enlace.addresses import format_address
from enlace.limits import LINGER_BYTES, LINGER_TIMEOUT, READ_SIZE
from enlace.logs import log_closed, lost_reason
from enlace.services.base import StreamHandler
from enlace.sockets import discard_input
from enlace.sync.outbound import Outbound

if TYPE_CHECKING:
    from enlace.sync.server import Server

__all__ = ["Connection"]


_get_ident = threading.get_ident  # bound once: called for every reply

# Each client thread has its own buffer, so it starts smaller than the asyncio
# runtime's shared one, and grows to READ_SIZE once a read fills it.
_THREAD_READ_SIZE = 64 * 1024


def _take(corked: list[bytes]) -> bytes:
    """The corked writes as one piece; the list is left empty, for the next callback."""
    data = corked[0] if len(corked) == 1 else b"".join(corked)
    corked.clear()
    return data


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


class Connection:
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
        # Replies written by the handler during a callback on the connection's own
        # thread, sent together after it: _cork while corked, else None. One list,
        # emptied after each callback, so the per-chunk path allocates none.
        self._cork: list[bytes] = []
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
        own = _get_ident() == self._owner
        if own and self._corked is not None:
            self._corked.append(data)
        else:
            # Never blocks another client's thread (a broadcast); see enlace.sync.outbound.
            self._outbound.send(data, own)

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

    def abort(self) -> None:
        """Cut the connection at once, both ways, from any thread (the end of a shutdown).

        For a connection whose thread is held up in a handler, where :meth:`close`
        would reach it only once the handler returns: its client sees the end now,
        and what the handler writes later is dropped.
        """
        self._closing = True
        self._close_requested.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

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
        corked = self._corked
        if corked and _get_ident() == self._owner:
            # Replies already written in this callback go out before we block, so
            # events pushed meanwhile by other threads cannot overtake them.
            self._outbound.send(_take(corked), True)
        future = asyncio.run_coroutine_threadsafe(work, _helper_loop())
        try:
            result, error = future.result(), None
        except BaseException as exc:  # noqa: BLE001 - handed to done(), which decides
            result, error = None, exc
        # On the connection's thread this is still inside a corked callback; on
        # another, done()'s writes go out as they come, in order.
        done(result, error)

    # -- the connection's thread -------------------------------------------

    def _send_failed(self, reason: str, error: OSError | None) -> None:
        self._send_failure = (reason, error)
        self._closing = True
        self._close_requested.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wake the connection's thread

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        """On the connection's thread: run a handler callback with writes corked, then send them."""
        corked = self._corked = self._cork
        try:
            callback(*args)
        finally:
            self._corked = None
            if corked:
                self._outbound.send(_take(corked), True)

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
            corked = self._cork
            while not self._closing:
                size = recv_into(buffer)
                if size == len(buffer) < READ_SIZE:
                    data = buffer.tobytes()
                    buffer = memoryview(bytearray(READ_SIZE))  # a bulk sender: read more at once
                else:
                    data = buffer[:size].tobytes()
                if not size:
                    if self._close_requested.is_set():
                        break  # woken by close() from another thread, not a client EOF
                    self._eof = True
                    self._call(handler.eof_received)
                    if not self._close_requested.wait(self._server.idle_timeout):
                        reason = "idle timeout after client EOF"
                    break
                self.bytes_in += size
                # _call(), inlined: this runs for every chunk received.
                self._corked = corked
                try:
                    received(data)
                finally:
                    self._corked = None
                    if corked:  # on the connection's own thread, so Outbound may throttle it
                        send(corked.pop() if len(corked) == 1 else _take(corked), True)
            if self._send_failure is not None:
                reason, error = self._send_failure
            elif self._close_requested.is_set():
                reason = "closed by server" if not self._eof else "done"
        except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO ran out: EAGAIN
            reason = "idle timeout"
        except OSError as exc:
            reason, error = lost_reason(exc), exc
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
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
            discard_input(self._sock, timeout=LINGER_TIMEOUT, max_bytes=LINGER_BYTES)
