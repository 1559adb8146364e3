"""The HTTP/1.1 server: one :class:`asyncio.Protocol` per connection, static files, upgrades.

Requests are parsed by :class:`~enlace.protocol.http.RequestParser` and
answered in order (keep-alive and pipelining); every response written during
one read leaves in one ``transport.write``. File bodies above
:data:`~enlace.web.static.SMALL_FILE` go out with ``os.sendfile`` on the
socket itself: when the transport has nothing buffered, the head is sent with
``MSG_MORE`` and the file follows without passing through Python, waiting
for writability on a duplicate of the socket's descriptor (the transport owns
the original). uvloop transports have no native sendfile, and asyncio's
fallback reads the file into memory, hence doing it here.

Timeouts: a request head must arrive within ``head_timeout`` of its first
byte (else 408 and a close: slowloris), an idle keep-alive connection is
closed after ``keepalive_timeout``, and output that makes no progress for
``send_timeout`` drops the connection. A request for ``/ws`` with
``Upgrade: websocket`` is handed, transport and all, to the WebSocket endpoint.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol, cast

from enlace.exceptions import EnlaceError
from enlace.limits import (
    DRAIN_TIMEOUT,
    HTTP_HEAD_TIMEOUT,
    HTTP_KEEPALIVE_TIMEOUT,
    MAX_BODY,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    SLOW_TIMEOUT,
    WRITE_BUFFER_HIGH,
)
from enlace.protocol.http import REASONS, HttpError, Request, RequestParser, response_head
from enlace.sockets import listen_tcp, peer_address
from enlace.web.pages import SITE, ServiceInfo, error_page, render_home
from enlace.web.static import Reply, StaticFiles

__all__ = ["UpgradeEndpoint", "WebServer", "WebServerThread"]

LOGGER = logging.getLogger("enlace.web")
_monotonic = time.monotonic

# Responses queued behind a file being sent before we stop reading a pipelining client.
_MAX_QUEUED = 64
# After our last response on a closing connection, how long we read and discard
# what the client still sends, so that its unread bytes do not reset our reply.
_LINGER_TIMEOUT = 2.0
_NO_BODY_STATUS = (204, 304)
_STATUS_LINES = {
    status: f"HTTP/1.1 {status} {reason}\r\nServer: enlace\r\nDate: ".encode()
    for status, reason in REASONS.items()
}
_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class UpgradeEndpoint(Protocol):
    """What the server hands a WebSocket upgrade to (``enlace.web.websocket``)."""

    def upgrade(
        self,
        transport: asyncio.Transport,
        head: bytes,
        rest: bytes,
        *,
        on_close: Callable[[], None],
    ) -> asyncio.BaseProtocol: ...


class _Clock:
    """``Date`` and access-log times, formatted once a second (not once a request)."""

    def __init__(self) -> None:
        self._second = -1
        self.date = b""
        self.log_time = ""

    def tick(self) -> None:
        now = int(time.time())
        if now != self._second:
            self._second = now
            t = time.gmtime(now)
            self.date = (
                f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
            ).encode()
            local = time.localtime(now)
            self.log_time = time.strftime("%d/", local) + _MONTHS[local.tm_mon - 1]
            self.log_time += time.strftime("/%Y:%H:%M:%S %z", local)


class _FileSend:
    """A file body waiting for, or in, ``os.sendfile``."""

    __slots__ = ("fd", "head", "offset", "remaining")

    def __init__(self, head: bytes, fd: int, offset: int, length: int) -> None:
        self.head = head
        self.fd = fd
        self.offset = offset
        self.remaining = length


class _Connection(asyncio.Protocol):
    def __init__(self, server: WebServer) -> None:
        self.server = server
        self.loop = server._loop
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.parser = RequestParser(
            max_request_line=server.max_request_line,
            max_headers=server.max_headers,
            max_header_bytes=server.max_header_bytes,
            max_body=server.max_body,
        )
        self.queue: collections.deque[bytes | _FileSend] = collections.deque()
        self.corked: list[bytes] | None = None
        self.sock: socket.socket | None = None  # a dup of the transport's, for sendfile
        self.writer_on = False
        self.waiting_drain = False
        self.write_paused = False
        self.read_paused = False
        self.closing = False  # no more requests: finish the output, then close
        self.lingering = False
        self.counted = False
        self.upgraded: asyncio.BaseProtocol | None = None
        self.now = _monotonic()
        self.last_activity = self.now
        self.head_started = self.now
        self.progress: tuple[int, int] = (0, 0)
        self.last_progress = self.now
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.eof = False

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        host, _ = peer_address(transport.get_extra_info("peername"))
        self.peer = host
        server = self.server
        server._connections.add(self)
        if server._shutting_down:
            transport.abort()
            return
        if server.max_connections is not None and server._active >= server.max_connections:
            LOGGER.warning(
                "%s refused: too many connections (limit %d)", host, server.max_connections
            )
            self._final(503, "too many connections; try again later")
            return
        server._active += 1
        self.counted = True
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._arm(server.keepalive_timeout)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        parser = self.parser
        self.last_activity = now = _monotonic()
        if parser.idle:
            self.head_started = now
        corked: list[bytes] = []
        self.corked = corked
        try:
            events = parser.feed(data)
            while events:
                for event in events:
                    if self.closing:
                        break
                    if isinstance(event, HttpError):
                        self._refuse(event)
                    else:
                        self._request(event)
                events = []
                if parser.upgrade_rest is not None and self.upgraded is None and not self.closing:
                    events = parser.resume()  # an upgrade we did not take: on with HTTP
        finally:
            self.corked = None
            if corked:
                self._write(corked[0] if len(corked) == 1 else b"".join(corked))
        if self.closing and not self.queue:
            self._linger()
            return
        if len(self.queue) > _MAX_QUEUED:
            self._pause_reading()
        timeout = self.server.head_timeout
        if parser.in_head and timeout is not None and self.timer_due > now + timeout:
            self._arm(self.head_started + timeout - now)

    def eof_received(self) -> bool:
        self.eof = True
        if self.lingering or not self.queue:
            return False  # the transport closes itself
        self.closing = True  # answer what was asked, then close
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()
        self._watch_output()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.waiting_drain:
            self.waiting_drain = False
            assert self.transport is not None
            self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            self._flush_queue()
        self._maybe_resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_file()
        if self.timer is not None:
            self.timer.cancel()
        for item in self.queue:
            if isinstance(item, _FileSend):
                os.close(item.fd)
        self.queue.clear()
        self.server._gone(self)

    # -- requests ----------------------------------------------------------------

    def _request(self, request: Request) -> None:
        server = self.server
        path = request.path
        if request.upgrade and path == b"/ws" and server.websocket is not None:
            upgrade = (request.header(b"upgrade") or b"").lower()
            if upgrade == b"websocket":
                self._upgrade(request)
                return
        keep = request.keep_alive and not server._shutting_down
        if request.method not in ("GET", "HEAD"):
            reply = Reply(405, [("Allow", "GET, HEAD")])
        elif path == b"/ws":
            reply = Reply(404)  # no endpoint, or not an upgrade
        else:
            try:
                reply = server.files.serve(request)
            except Exception:
                LOGGER.exception("error serving %r", request.target)
                reply, keep = Reply(500), False
        self._reply(request, reply, keep)

    def _reply(self, request: Request | None, reply: Reply, keep: bool) -> None:
        # Replies may be shared (the static files' cache): read them, never change them.
        status = reply.status
        body, fd = reply.body, reply.fd
        clock = self.server._clock
        clock.tick()
        if reply.fields is not None:
            head = b"".join(
                (
                    _STATUS_LINES[status],
                    clock.date,
                    reply.fields,
                    _KEEP_ALIVE if keep else _CLOSE,
                )
            )
        else:
            headers = reply.headers
            if status >= 400:
                if not body and reply.size is None:
                    body = error_page(status)
                headers = [*headers, ("Content-Type", "text/html; charset=utf-8")]
            if status not in _NO_BODY_STATUS:
                length = (
                    reply.size
                    if reply.size is not None
                    else (reply.length if fd is not None else len(body))
                )
                headers = [*headers, ("Content-Length", str(length))]
            head = response_head(status, headers, date=clock.date, keep_alive=keep)
        sent = 0
        if request is not None and request.method == "HEAD":
            if fd is not None:
                os.close(fd)
            self._emit(head)
        elif fd is not None:
            sent = reply.length
            self._send_file(_FileSend(head, fd, reply.offset, reply.length))
        elif body and status not in _NO_BODY_STATUS:
            sent = len(body)
            self._emit(head + body)
        else:
            self._emit(head)
        if self.server._log_requests:
            self._log(request, status, sent)
        if not keep:
            self.closing = True

    def _refuse(self, error: HttpError) -> None:
        LOGGER.info("%s bad request (%s): %s", self.peer, error.code, error)
        self._reply(None, Reply(error.status, body=error_page(error.status, str(error))), False)

    def _final(self, status: int, detail: str) -> None:
        """Answer ``status`` and close, with no request read (refusals, timeouts)."""
        self.corked = None
        self._reply(None, Reply(status, body=error_page(status, detail)), False)
        if not self.queue:
            self._linger()

    def _upgrade(self, request: Request) -> None:
        if self.queue or self.corked:
            # A pipelined response is still on its way: the switch would overtake it.
            self._refuse(HttpError(400, "bad_request", "upgrade behind pipelined requests"))
            return
        transport = self.transport
        endpoint = self.server.websocket
        assert transport is not None and endpoint is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rest = self.parser.upgrade_rest or b""
        if self.server._log_requests:
            self._log(request, 101, 0)
        proto = endpoint.upgrade(transport, request.head(), rest, on_close=self._upgraded_gone)
        self.upgraded = proto
        transport.set_protocol(proto)

    def _upgraded_gone(self) -> None:
        self.server._gone(self)

    def _log(self, request: Request | None, status: int, size: int) -> None:
        if request is None:
            line = "-"
        else:
            # Escaped, so a request cannot forge log lines (CR, LF) or split fields (").
            target = request.target.decode("latin-1").encode("unicode_escape").decode("ascii")
            target = target.replace('"', '\\"')
            line = f"{request.method} {target} HTTP/{request.version}"
        LOGGER.info(
            '%s - - [%s] "%s" %d %s',
            self.peer,
            self.server._clock.log_time,
            line,
            status,
            size or "-",
        )

    # -- output ------------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        if self.queue:
            self.queue.append(data)
        elif self.corked is not None:
            self.corked.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _send_file(self, item: _FileSend) -> None:
        corked = self.corked
        if corked:
            self._write(corked[0] if len(corked) == 1 else b"".join(corked))
            corked.clear()
        self.queue.append(item)
        if len(self.queue) == 1:
            self._flush_queue()

    def _flush_queue(self) -> None:
        """Send queued output in order until a file must wait, or all is sent."""
        transport = self.transport
        while self.queue and transport is not None and not transport.is_closing():
            item = self.queue[0]
            if isinstance(item, bytes):
                self.queue.popleft()
                transport.write(item)
                continue
            if transport.get_write_buffer_size():
                # Earlier output is still buffered in the transport: wait until it
                # is all sent (a high-water mark of 0 makes it tell us), then sendfile.
                self.waiting_drain = True
                transport.set_write_buffer_limits(high=0, low=0)
                return
            if not self._pump_file(item):
                return
            self.queue.popleft()
        if not self.queue:
            if self.closing:
                self._linger()
            elif self.server._shutting_down and self.parser.idle and transport is not None:
                transport.close()
            else:
                self._maybe_resume_reading()

    def _pump_file(self, item: _FileSend) -> bool:
        """Send what the socket takes now; ``True`` once the whole file is sent."""
        sock = self.sock
        if sock is None:
            assert self.transport is not None
            raw = self.transport.get_extra_info("socket")
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
                self.loop.add_writer(sock.fileno(), self._on_writable)
                self.writer_on = True
                self._watch_output()
            return False
        except OSError as exc:
            LOGGER.info("%s dropped while sending a file: %s", self.peer, exc)
            self._abort()
            return False
        if item.remaining:
            LOGGER.warning("%s dropped: the file shrank while being sent", self.peer)
            self._abort()
            return False
        os.close(item.fd)
        if self.writer_on:
            self.loop.remove_writer(sock.fileno())
            self.writer_on = False
        return True

    def _watch_output(self) -> None:
        # Output is waiting for the client: make sure the timer checks its progress in time.
        timeout = self.server.send_timeout
        if timeout is not None and self.timer_due > _monotonic() + timeout:
            self._arm(timeout)

    def _on_writable(self) -> None:
        self._flush_queue()

    def _stop_file(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            if self.writer_on:
                self.loop.remove_writer(sock.fileno())
                self.writer_on = False
            sock.close()

    # -- closing, timeouts, flow -----------------------------------------------

    def _linger(self) -> None:
        transport = self.transport
        if transport is None or self.lingering:
            return
        self.lingering = True
        self._stop_file()
        if transport.is_closing():
            return
        if not self.eof and transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()  # read and discard until the client's EOF
            self._arm(_LINGER_TIMEOUT)
        else:
            transport.close()

    def _abort(self) -> None:
        self._stop_file()
        if self.transport is not None:
            self.transport.abort()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.lingering:
            self.read_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if self.read_paused and not self.write_paused and len(self.queue) <= _MAX_QUEUED:
            self.read_paused = False
            if self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def _arm(self, delay: float | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if delay is not None:
            self.timer = self.loop.call_later(delay, self._check)
            self.timer_due = _monotonic() + delay

    def _check(self) -> None:
        """The connection's one timer: which deadline applies depends on its state."""
        self.timer = None
        transport = self.transport
        if transport is None or self.upgraded is not None:
            return
        server = self.server
        now = _monotonic()
        if self.lingering:
            transport.close()
            return
        if self.queue or transport.get_write_buffer_size():
            head = self.queue[0] if self.queue else None
            mark = (
                head.remaining if isinstance(head, _FileSend) else -1,
                transport.get_write_buffer_size(),
            )
            if mark != self.progress:
                self.progress, self.last_progress = mark, now
            deadline, timeout = self.last_progress, server.send_timeout
            if timeout is not None and now >= deadline + timeout:
                LOGGER.info("%s dropped: output unread for %g s", self.peer, timeout)
                self._abort()
                return
            self._arm(1.0 if timeout is None else min(1.0, deadline + timeout - now + 0.01))
            return
        if self.parser.in_head:
            deadline, timeout = self.head_started, server.head_timeout
            if timeout is not None and now >= deadline + timeout:
                LOGGER.info("%s request head not complete after %g s", self.peer, timeout)
                self._final(408, f"the request head took longer than {timeout:g} s")
                return
        else:
            deadline, timeout = self.last_activity, server.keepalive_timeout
            if server._shutting_down and self.parser.idle:
                timeout = 0.0
            if timeout is not None and now >= deadline + timeout:
                transport.close()  # idle keep-alive: a silent close, as nginx does
                return
        self._arm(1.0 if timeout is None else max(deadline + timeout - now, 0.01))

    def drain(self) -> None:
        """Shutdown: idle connections close now, busy ones after their response."""
        if self.upgraded is not None:
            close = getattr(self.upgraded, "close", None)
            if callable(close):
                close()
            return
        if self.parser.idle and not self.queue and not self.lingering:
            if self.transport is not None:
                self.transport.close()
            return
        self._arm(0.0)  # re-evaluate at once with the shutdown deadline

    def force_close(self) -> None:
        self._abort()


class WebServer:
    """Serve static files (and a WebSocket endpoint) on the running event loop.

    ``root`` is the directory served; ``None`` serves the built-in site, whose
    home page lists the services given to :meth:`set_services`::

        async with WebServer("public", "127.0.0.1", 8088) as server:
            await server.serve_forever()
    """

    def __init__(
        self,
        root: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        listing: bool = False,
        websocket: UpgradeEndpoint | None = None,
        max_connections: int | None = MAX_CONNECTIONS,
        max_request_line: int | None = MAX_REQUEST_LINE,
        max_headers: int | None = MAX_HEADERS,
        max_header_bytes: int | None = MAX_HEADER_BYTES,
        max_body: int | None = MAX_BODY,
        head_timeout: float | None = HTTP_HEAD_TIMEOUT,
        keepalive_timeout: float | None = HTTP_KEEPALIVE_TIMEOUT,
        send_timeout: float | None = SLOW_TIMEOUT,
        drain_timeout: float | None = DRAIN_TIMEOUT,
        backlog: int = 128,
    ) -> None:
        self.builtin = root is None
        self.root = SITE if root is None else root
        try:
            self.files = StaticFiles(self.root, listing=listing)
        except OSError as exc:
            raise EnlaceError(f"cannot serve {self.root!r}: not a readable directory") from exc
        self.host = host
        self.port = port
        self.websocket = websocket
        self.max_connections = max_connections
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self.drain_timeout = drain_timeout
        self.backlog = backlog
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._active = 0
        self._shutting_down = False
        self._drained: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._clock = _Clock()
        self._log_requests = False
        self._loop: asyncio.AbstractEventLoop
        self.set_services(())

    def set_services(self, services: Sequence[ServiceInfo]) -> None:
        """List ``services`` on the built-in home page (no effect with a ``root``)."""
        if not self.builtin:
            return
        with open(os.path.join(SITE, "index.html"), encoding="utf-8") as file:
            page = render_home(file.read(), services)
        self.files.pages = {"/": page, "/index.html": page}

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the real port when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            raise EnlaceError("the server is not started")
        return peer_address(self._server.sockets[0].getsockname())

    @property
    def connection_count(self) -> int:
        """Connections being served right now (WebSocket ones included)."""
        return self._active

    async def start(self) -> None:
        """Listen and start accepting; returns once the port is open."""
        if self._server is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._log_requests = LOGGER.isEnabledFor(logging.INFO)
        sock = listen_tcp(self.host, self.port, backlog=self.backlog)
        self._server = await self._loop.create_server(
            lambda: _Connection(self), sock=sock, backlog=self.backlog
        )

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`shutdown` is called."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def shutdown(self, drain_timeout: float | None = -1.0) -> None:
        """Stop accepting; idle connections close now, the others after their response.

        ``drain_timeout`` (default: the server's) bounds the wait; then the rest
        are closed. ``None`` waits for ever.
        """
        if self._server is None or self._shutting_down:
            return
        if drain_timeout is not None and drain_timeout < 0:
            drain_timeout = self.drain_timeout
        self._shutting_down = True
        if isinstance(self._loop, asyncio.selector_events.BaseSelectorEventLoop):
            # See enlace.asyncio.server: stop watching the listening socket first.
            for sock in self._server.sockets:
                self._loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
        self._server.close()
        self._drained = asyncio.Event()
        for connection in list(self._connections):
            connection.drain()
        if self._connections:
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except TimeoutError:
                for connection in list(self._connections):
                    connection.force_close()
                self._drained.clear()
                if self._connections:
                    await asyncio.wait_for(self._drained.wait(), 1.0)
        await self._server.wait_closed()
        assert self._stopped is not None
        self._stopped.set()

    def _gone(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        if connection.counted:
            self._active -= 1
        if not self._connections and self._drained is not None:
            self._drained.set()

    async def __aenter__(self) -> WebServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


class WebServerThread:
    """A :class:`WebServer` on an event loop of its own thread (``enlace up --runtime threads``)."""

    def __init__(
        self,
        server: WebServer,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self.server = server
        self._loop = (loop_factory or asyncio.new_event_loop)()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="enlace-web", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def start(self) -> None:
        """Start the loop thread and listen; raises what :meth:`WebServer.start` raises."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise

    def shutdown(self, drain_timeout: float | None = -1.0) -> None:
        """Drain and stop the server, then the loop thread."""
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(
                self.server.shutdown(drain_timeout), self._loop
            )
            future.result()
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()
