"""File bodies of the web server: ``os.sendfile`` on the socket, or chunks into a TLS transport.

:class:`FileSender` sends the file bodies of one
:class:`~enlace.web.connection.HttpConnection`, one :class:`FileBody` at a time,
as fast as the client takes them. On a plain connection the head goes out with
``MSG_MORE`` and the file follows with ``os.sendfile`` on a duplicate of the
socket's descriptor (the transport owns the original), without passing through
Python; when the socket is full, a writer on that descriptor says when to go on.
uvloop transports have no native sendfile, and asyncio's fallback reads the
file into memory, hence doing it here. Over TLS the bytes must pass through the
encryption, so the file is read in chunks into the transport: reading stops
at the transport's high-water mark and resumes when it drains, which bounds
the memory per connection.

The connection keeps the order of its output (a file waits behind earlier
responses) and its timers; this module only moves a file's bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

__all__ = ["TLS_FILE_CHUNK", "FileBody", "FileSender"]

LOGGER = logging.getLogger("enlace.web")

# Bytes of a file read per write into a TLS transport: large enough to amortize the
# call and the encryption's per-write cost, small beside the write buffer's high mark.
TLS_FILE_CHUNK = 64 * 1024


class FileBody:
    """A response whose body is a file: its head, then ``remaining`` bytes from ``offset``."""

    __slots__ = ("fd", "head", "offset", "remaining")

    def __init__(self, head: bytes, fd: int, offset: int, length: int) -> None:
        self.head = head
        self.fd = fd
        self.offset = offset
        self.remaining = length


class FileSender:
    """Moves the file bodies of one connection to its client.

    ``writable`` is called when a full socket takes bytes again, ``waiting`` when
    a file starts waiting for the client (the connection's send timeout applies),
    and ``paused`` says whether the transport is above its high-water mark.
    Both send methods return ``True`` once the whole file is sent (its descriptor
    closed) and ``False`` while it waits or after the connection was aborted (a
    read or send error, or a file that shrank: its announced length cannot be kept).
    """

    __slots__ = ("loop", "paused", "sock", "waiting", "writable", "writer_on")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        writable: Callable[[], None],
        waiting: Callable[[], None],
        paused: Callable[[], bool],
    ) -> None:
        self.loop = loop
        self.writable = writable
        self.waiting = waiting
        self.paused = paused
        self.sock: socket.socket | None = None  # a dup of the transport's, for sendfile
        self.writer_on = False

    def sendfile(self, transport: asyncio.Transport, item: FileBody, peer: str) -> bool:
        """Send what the socket takes now; ``True`` once the whole file is sent."""
        sock = self.sock
        if sock is None:
            raw = transport.get_extra_info("socket")
            sock = self.sock = socket.socket(fileno=os.dup(raw.fileno()))
            sock.setblocking(False)
        try:
            while item.head:
                sent = sock.send(item.head, socket.MSG_MORE)
                item.head = item.head[sent:]
            while item.remaining:
                sent = os.sendfile(sock.fileno(), item.fd, item.offset, item.remaining)
                if sent == 0:
                    break  # the file shrank since it was measured: the length cannot be kept
                item.offset += sent
                item.remaining -= sent
        except BlockingIOError:
            if not self.writer_on:
                self.loop.add_writer(sock.fileno(), self.writable)
                self.writer_on = True
                self.waiting()
            return False
        except OSError as exc:
            LOGGER.info("%s dropped while sending a file: %s", peer, exc)
            self._abort(transport)
            return False
        if item.remaining:
            LOGGER.warning("%s dropped: the file shrank while being sent", peer)
            self._abort(transport)
            return False
        os.close(item.fd)
        if self.writer_on:
            self.loop.remove_writer(sock.fileno())
            self.writer_on = False
        return True

    def write_tls(self, transport: asyncio.Transport, item: FileBody, peer: str) -> bool:
        """Write the file into the TLS transport until it is full; ``True`` once all is sent."""
        if item.head:
            transport.write(item.head)
            item.head = b""
        # write() calls the protocol's pause_writing() itself once the buffer passes its
        # high mark, which ``paused`` then reports.
        while item.remaining and not self.paused():
            try:
                chunk = os.pread(item.fd, min(TLS_FILE_CHUNK, item.remaining), item.offset)
            except OSError as exc:
                LOGGER.warning("%s dropped: cannot read the file being sent: %s", peer, exc)
                self._abort(transport)
                return False
            if not chunk:
                LOGGER.warning("%s dropped: the file shrank while being sent", peer)
                self._abort(transport)
                return False
            transport.write(chunk)
            item.offset += len(chunk)
            item.remaining -= len(chunk)
        if item.remaining:
            self.waiting()
            return False
        os.close(item.fd)
        return True

    def close(self) -> None:
        """Stop watching the socket and close its duplicate (the transport keeps its own)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            if self.writer_on:
                self.loop.remove_writer(sock.fileno())
                self.writer_on = False
            sock.close()

    def _abort(self, transport: asyncio.Transport) -> None:
        self.close()
        transport.abort()
