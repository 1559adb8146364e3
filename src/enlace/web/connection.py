"""One HTTP/1.1 connection of the web server: requests in order, responses, timers.

:class:`HttpConnection` is the :class:`asyncio.Protocol` of one client.
Requests are parsed by :class:`~enlace.protocol.http.RequestParser` and
answered in order (keep-alive and pipelining); every response written during
one read leaves in one ``transport.write``. File bodies above
:data:`~enlace.web.static.SMALL_FILE` wait in the connection's output queue
behind earlier responses; a plain connection sends one with ``os.sendfile``
once the transport has nothing buffered, a TLS one writes it in chunks into
the transport (:class:`~enlace.web.body.FileSender` moves the bytes).

One timer per connection applies the deadline of its state: the request head
(``head_timeout`` from its first byte: 408 and a close), output that makes no
progress (``send_timeout``: dropped), or an idle keep-alive (``keepalive_timeout``:
a silent close).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import time
from typing import TYPE_CHECKING, cast

from enlace.limits import LINGER_BYTES, LINGER_TIMEOUT, WRITE_BUFFER_HIGH
from enlace.protocol.http import REASONS, HttpError, Request, RequestParser, response_head
from enlace.sockets import peer_address
from enlace.web.body import FileBody, FileSender
from enlace.web.pages import error_page
from enlace.web.static import Reply

if TYPE_CHECKING:
    from enlace.web.server import WebServer

__all__ = ["LOGGER", "Clock", "HttpConnection", "error_response", "refusal_detail"]

LOGGER = logging.getLogger("enlace.web")
_monotonic = time.monotonic

# Responses queued behind a file being sent before we stop reading a pipelining client.
_MAX_QUEUED = 64
_NO_BODY_STATUS = (204, 304)
# A WebSocket token in a logged request target (browsers can only send it there).
_TOKEN_IN_TARGET = re.compile(rb"([?&]token=)[^&#]*")
_STATUS_LINES = {
    status: f"HTTP/1.1 {status} {reason}\r\nServer: enlace\r\nDate: ".encode()
    for status, reason in REASONS.items()
}
_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def error_response(status: int, detail: str, date: bytes) -> bytes:
    """A whole error response (``detail`` on its page) that ends the connection.

    What a client is sent with no request read, by the connection (:meth:`HttpConnection._final`)
    or before one exists (the HTTPS port's answers to a plain client and to a refused one).
    """
    head, body = _head_and_body(_error_reply(status, detail), False, date)
    return head + body


def refusal_detail(reason: str) -> str:
    """The 503 page's text for a client refused for ``reason`` (a connection cap)."""
    return f"{reason}; try again later"


def _error_reply(status: int, detail: str) -> Reply:
    return Reply(status, body=error_page(status, detail))


def _head_and_body(reply: Reply, keep: bool, date: bytes) -> tuple[bytes, bytes]:
    """The head of a ``reply`` without cached ``fields``, and the body it goes with.

    An error with no body gets its page; ``Content-Length`` is the body's, the file
    span's or, for a reply to HEAD, ``size``.
    """
    status, body, headers = reply.status, reply.body, reply.headers
    if status >= 400:
        if not body and reply.size is None:
            body = error_page(status)
        headers = [*headers, ("Content-Type", "text/html; charset=utf-8")]
    if status not in _NO_BODY_STATUS:
        if reply.size is not None:
            length = reply.size
        else:
            length = reply.length if reply.fd is not None else len(body)
        headers = [*headers, ("Content-Length", str(length))]
    return response_head(status, headers, date=date, keep_alive=keep), body


class Clock:
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


class HttpConnection(asyncio.Protocol):
    """One client of a :class:`~enlace.web.server.WebServer`."""

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
        self.queue: collections.deque[bytes | FileBody] = collections.deque()
        self.corked: list[bytes] | None = None
        self.file_sender = FileSender(
            self.loop,
            writable=self._on_writable,
            waiting=self._watch_output,
            paused=lambda: self.write_paused,
        )
        self.waiting_drain = False
        self.write_paused = False
        self.read_paused = False
        self.closing = False  # no more requests: finish the output, then close
        self.lingering = False
        self.discarded = 0  # bytes thrown away while lingering
        self.counted = False
        self.tls = server.ssl is not None
        self.held: asyncio.TimerHandle | None = None  # a refusal answered after a delay
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
        if not server.policy.allowed(host):
            LOGGER.warning("%s refused: not in the allow-list", host)
            transport.abort()
            return
        # Over HTTPS the acceptor already refused, before the handshake, whoever these
        # checks would (handshakes counted as connections): here they refuse plain clients.
        refused = server._over_capacity() or server.policy.acquire(host)
        if refused is not None:
            LOGGER.warning("%s refused: %s", host, refused)
            self._final(503, refusal_detail(refused))
            return
        server._active += 1
        self.counted = True
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._arm(server.keepalive_timeout)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._discard(len(data))
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
        if self.closing and not self.queue and self.held is None:
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
        elif self.tls and self.queue:
            self._flush_queue()  # a file waits for room in the TLS transport
        self._maybe_resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.held is not None:
            self.held.cancel()
            self.held = None
        self.file_sender.close()
        if self.timer is not None:
            self.timer.cancel()
        for item in self.queue:
            if isinstance(item, FileBody):
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
            endpoint = server.websocket
            if endpoint is None:
                reply = Reply(404)
            elif not endpoint.authorized(request.target, request.headers):
                # What the chat page asks when its WebSocket failed: was it the token?
                self._refuse_token(request, endpoint.fail_delay)
                return
            else:
                reply = Reply(426, [("Upgrade", "websocket")])
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
            head, body = _head_and_body(reply, keep, clock.date)
        sent = 0
        if request is not None and request.method == "HEAD":
            if fd is not None:
                os.close(fd)
            self._emit(head)
        elif fd is not None:
            sent = reply.length
            self._send_file(FileBody(head, fd, reply.offset, reply.length))
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
        self._reply(None, _error_reply(error.status, str(error)), False)

    def _refuse_token(self, request: Request, delay: float | None) -> None:
        """403 for a missing or wrong token, after ``delay`` (as the upgrade's), then close."""
        self.closing = True
        self._pause_reading()
        reply = _error_reply(403, "a valid token is required")
        if not delay:
            self._reply(request, reply, False)
            return
        self.held = self.loop.call_later(delay, self._answer_held, request, reply)

    def _answer_held(self, request: Request, reply: Reply) -> None:
        self.held = None
        self._reply(request, reply, False)
        if not self.queue:
            self._linger()

    def _final(self, status: int, detail: str) -> None:
        """Answer ``status`` and close, with no request read (refusals, timeouts)."""
        self.corked = None
        self._reply(None, _error_reply(status, detail), False)
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
        proto = endpoint.upgrade(transport, request.head(), rest, on_close=self._upgraded_gone)
        self.upgraded = proto
        transport.set_protocol(proto)
        if self.server._log_requests:
            # Logged once the endpoint has decided: 101, or its refusal (400, 403, 426).
            status = getattr(proto, "status", 101)
            size = getattr(proto, "body_size", 0)
            self._log(request, status if isinstance(status, int) else 101, int(size or 0))

    def _upgraded_gone(self) -> None:
        self.server._gone(self)

    def _log(self, request: Request | None, status: int, size: int) -> None:
        if request is None:
            line = "-"
        else:
            # A token is a secret: the log shows that one was sent, never its value.
            raw = request.target
            if b"token=" in raw:
                raw = _TOKEN_IN_TARGET.sub(rb"\1<hidden>", raw)
            # Escaped, so a request cannot forge log lines (CR, LF) or split fields (").
            target = raw.decode("latin-1").encode("unicode_escape").decode("ascii")
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

    def _send_file(self, item: FileBody) -> None:
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
            if self.tls:
                if not self.file_sender.write_tls(transport, item, self.peer):
                    return
                self.queue.popleft()
                continue
            if transport.get_write_buffer_size():
                # Earlier output is still buffered in the transport: wait until it
                # is all sent (a high-water mark of 0 makes it tell us), then sendfile.
                self.waiting_drain = True
                transport.set_write_buffer_limits(high=0, low=0)
                return
            if not self.file_sender.sendfile(transport, item, self.peer):
                return
            self.queue.popleft()
        if not self.queue:
            if self.closing:
                if self.held is None:
                    self._linger()
            elif self.server._shutting_down and self.parser.idle and transport is not None:
                transport.close()
            else:
                self._maybe_resume_reading()

    def _watch_output(self) -> None:
        # Output is waiting for the client: make sure the timer checks its progress in time.
        timeout = self.server.send_timeout
        if timeout is not None and self.timer_due > _monotonic() + timeout:
            self._arm(timeout)

    def _on_writable(self) -> None:
        self._flush_queue()

    # -- closing, timeouts, flow -----------------------------------------------

    def _linger(self) -> None:
        transport = self.transport
        if transport is None or self.lingering:
            return
        self.lingering = True
        self.file_sender.close()
        if transport.is_closing():
            return
        if (
            not self.eof
            and transport.can_write_eof()
            and (self.counted or self.server._may_linger_refused())
        ):
            transport.write_eof()
            transport.resume_reading()  # read and discard until the client's EOF
            self._arm(LINGER_TIMEOUT)
        else:
            transport.close()

    def _discard(self, size: int) -> None:
        # A client still sending this much after our last response is not reading it.
        self.discarded += size
        if self.discarded > LINGER_BYTES and self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self.file_sender.close()
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
                head.remaining if isinstance(head, FileBody) else -1,
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
