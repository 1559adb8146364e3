"""The sending side of one connection in the thread runtime.

Any thread may send to any client (a broadcast runs on the sender's thread), so
a send must never wait for the receiving client: it is tried without blocking,
and what the socket cannot take at once waits in a bounded buffer that a
flusher thread (started only while output is waiting) sends as the client
reads. The client's own thread is the exception: it waits while more than
``WRITE_BUFFER_HIGH`` is waiting, which throttles a client that sends without
reading, as the asyncio runtime pauses reading from it.

A client that lets more than ``max_outbound`` wait, or keeps more than
``WRITE_BUFFER_HIGH`` waiting for ``slow_timeout`` seconds, is a slow consumer:
its output is dropped and ``on_failure`` is told why, so the others lose nothing.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable

from enlace.limits import MAX_OUTBOUND, SLOW_TIMEOUT, WRITE_BUFFER_HIGH
from enlace.logs import lost_reason

__all__ = ["Outbound"]

_DONTWAIT = int(socket.MSG_DONTWAIT)  # a plain int: the flag enum converts on every call
_CHUNK = 256 * 1024  # sent per system call by the flusher
_TICK = 1.0  # how often a waiting flusher looks at the slow-consumer clock


class Outbound:
    """Non-blocking, bounded sending for one socket."""

    def __init__(
        self,
        sock: socket.socket,
        on_failure: Callable[[str, OSError | None], None],
        *,
        max_outbound: int | None = MAX_OUTBOUND,
        slow_timeout: float | None = SLOW_TIMEOUT,
    ) -> None:
        self._sock = sock
        self._sock_send = sock.send  # bound once: looked up for every reply otherwise
        self._on_failure = on_failure
        self._max_outbound = max_outbound
        self._slow_timeout = slow_timeout
        self._pending = bytearray()
        # A plain lock under the condition: send() takes it once per reply, and
        # ``with`` on a Lock is a C call where a Condition's __enter__ is Python.
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._flusher: threading.Thread | None = None
        self._high_since: float | None = None  # when more than WRITE_BUFFER_HIGH began waiting
        #: Why sending stopped, once it has.
        self.failure: str | None = None
        #: Bytes the socket has taken.
        self.sent = 0

    @property
    def waiting(self) -> int:
        """Bytes accepted but not yet taken by the socket."""
        with self._lock:
            return len(self._pending)

    def send(self, data: bytes | memoryview, own_thread: bool) -> None:
        """Send ``data``, or queue it; with ``own_thread``, wait while the client lags."""
        # acquire/release, not ``with``: this runs once per reply, and the with
        # statement's special-method lookups cost more than the lock itself.
        self._mutex.acquire()
        try:
            if self._pending or self.failure is not None:
                self._send_behind(data, own_thread)
                return
            # The common case: nothing waits, so the socket may take it all now.
            try:
                taken = self._sock_send(data, _DONTWAIT)
            except BlockingIOError:
                self._queue(data)
                return
            except OSError as exc:
                self._fail(lost_reason(exc), exc)
                return
            self.sent += taken
            if taken != len(data):
                self._send_rest(memoryview(data)[taken:])
        finally:
            self._mutex.release()

    def drain(self, timeout: float | None) -> bool:
        """Wait until everything waiting is sent (before a graceful close)."""
        with self._lock:
            return (
                self._lock.wait_for(lambda: not self._pending or self.failure is not None, timeout)
                and self.failure is None
            )

    def stop(self, reason: str) -> None:
        """Give up sending (the connection is closing); wakes the flusher."""
        with self._lock:
            if self.failure is None:
                self.failure = reason
            self._pending.clear()
            self._lock.notify_all()

    # -- internals (called with the lock held) -----------------------------------

    def _send_behind(self, data: bytes | memoryview, own_thread: bool) -> None:
        """Send ``data`` when output is already waiting, or sending has failed."""
        if own_thread and len(self._pending) > WRITE_BUFFER_HIGH:
            self._wait_below(WRITE_BUFFER_HIGH)
        if self.failure is not None:
            return
        limit = self._max_outbound
        if limit is not None and len(self._pending) > limit:
            waiting = len(self._pending)
            self._fail(f"slow consumer: {waiting} bytes of output waiting (limit {limit})")
            return
        if self._pending:
            self._queue(data)
        else:
            self._send_rest(data)  # the flusher sent everything while we waited

    def _send_rest(self, data: bytes | memoryview) -> None:
        """Send what the socket did not take at once; queue what it still refuses."""
        # Again while the socket takes some: a TLSSocket takes at most 256 KiB per
        # call, and a flusher thread is dear for the rest.
        while data:
            try:
                taken = self._sock_send(data, _DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail(lost_reason(exc), exc)
                return
            if not taken:
                break
            self.sent += taken
            data = memoryview(data)[taken:]
        if data:
            self._queue(data)

    def _queue(self, data: bytes | memoryview) -> None:
        self._pending += data
        self._note_level()
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush, name="enlace-outbound", daemon=True
            )
            self._flusher.start()

    def _wait_below(self, level: int) -> None:
        timeout = self._slow_timeout
        if not self._lock.wait_for(
            lambda: len(self._pending) <= level or self.failure is not None, timeout
        ):
            self._fail(f"slow consumer: output unread for {timeout:g} s")

    def _note_level(self) -> None:
        if len(self._pending) > WRITE_BUFFER_HIGH:
            if self._high_since is None:
                self._high_since = time.monotonic()
        else:
            self._high_since = None

    def _fail(self, reason: str, error: OSError | None = None) -> None:
        if self.failure is not None:
            return
        self.failure = reason
        self._pending.clear()
        self._lock.notify_all()
        self._on_failure(reason, error)

    def _flush(self) -> None:
        poller = select.poll()  # not select(): descriptors above 1024 are fine
        poller.register(self._sock.fileno(), select.POLLOUT)
        while True:
            with self._lock:
                if self.failure is not None or not self._pending:
                    self._flusher = None
                    self._lock.notify_all()
                    return
                timeout = self._slow_timeout
                if (
                    timeout is not None
                    and self._high_since is not None
                    and time.monotonic() - self._high_since >= timeout
                ):
                    self._fail(f"slow consumer: output unread for {timeout:g} s")
                    continue
            if not poller.poll(_TICK * 1000):
                continue
            with self._lock:
                if self.failure is not None:
                    continue
                try:
                    taken = self._sock.send(self._pending[:_CHUNK], _DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._fail(lost_reason(exc), exc)
                    continue
                del self._pending[:taken]
                self.sent += taken
                self._note_level()
                self._lock.notify_all()
