"""The browser chat's WebSocket endpoint: an upgraded HTTP connection becomes a chat client.

The web server hands over a connection that asked for ``Upgrade: websocket``
with :meth:`WebSocketEndpoint.upgrade`; from then on a
:class:`WebSocketConnection` (an :class:`asyncio.Protocol`) owns it. The
decisions (handshake, Origin, token, message limits, ping timing) are
:class:`enlace.protocol.websocket.ServerProtocol`'s; this module moves bytes
and keeps time.

The bridge to the chat reuses :class:`~enlace.services.chat.ChatService`
unchanged: every WebSocket connection is one *framed* client of the service.
Each text message from the browser is fed to a handler of the service as one
frame (4-byte length, then the UTF-8 payload), and every frame the handler
writes back goes to the browser as one text message. So the browser speaks the
message protocol of docs/protocol.md in JSON (``{"id":1,"cmd":"nick","args":
["ana"]}``), and the chat's limits, flood control and nick rules apply to it as
to any other client. The handler sees this connection as its
:class:`~enlace.services.base.Transport`; like the asyncio runtime's, its
``write`` and ``close`` may be called from any thread (the chat's other
clients may run on the thread runtime, under ``enlace up --runtime threads``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from enlace.addresses import format_address
from enlace.limits import (
    MAX_OUTBOUND,
    MAX_WS_MESSAGE,
    SLOW_TIMEOUT,
    TOKEN_FAIL_DELAY,
    WRITE_BUFFER_HIGH,
    WS_CLOSE_TIMEOUT,
    WS_PING_INTERVAL,
    WS_PING_TIMEOUT,
)
from enlace.logs import log_closed, logger_for, lost_reason
from enlace.protocol.framing import LengthPrefixDecoder, pack_header
from enlace.protocol.websocket import CloseCode, ServerProtocol, token_matches
from enlace.services.base import StreamHandler, StreamService
from enlace.sockets import peer_address

__all__ = ["WebSocketConnection", "WebSocketEndpoint"]

_monotonic = time.monotonic
_thread_id = threading.get_ident


class WebSocketEndpoint:
    """Where the web server sends WebSocket upgrades (``GET /ws``): the browser chat.

    ``chat`` is the service the browsers join (normally a
    :class:`~enlace.services.chat.ChatService`, shared with ``enlace serve
    chat``'s TCP clients). ``token`` requires ``?token=...`` or
    ``Authorization: Bearer ...``; ``allowed_origins`` lists the web pages of
    other origins that may connect (``scheme://host[:port]``, ``*`` for any).
    Past ``max_outbound`` bytes of output waiting, or with output unread for
    ``slow_timeout`` seconds, a browser is dropped so that the chat never waits
    for it. A missing or wrong token is answered ``403`` after ``fail_delay``
    seconds (then the connection closes), so that each guess costs time; the
    chat never sees such a client.
    """

    def __init__(
        self,
        chat: StreamService,
        *,
        token: str | None = None,
        allowed_origins: Iterable[str] = (),
        max_message: int | None = MAX_WS_MESSAGE,
        ping_interval: float | None = WS_PING_INTERVAL,
        ping_timeout: float | None = WS_PING_TIMEOUT,
        close_timeout: float | None = WS_CLOSE_TIMEOUT,
        max_outbound: int | None = MAX_OUTBOUND,
        slow_timeout: float | None = SLOW_TIMEOUT,
        fail_delay: float | None = TOKEN_FAIL_DELAY,
    ) -> None:
        self.chat = chat
        self.token = token
        self.fail_delay = fail_delay
        self.allowed_origins = tuple(allowed_origins)
        self.max_message = max_message
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_outbound = max_outbound
        self.slow_timeout = slow_timeout
        self.logger = logger_for("websocket")
        #: The connections open now (handshake done or in progress).
        self.connections: set[WebSocketConnection] = set()

    def authorized(self, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether a request carries the token (``?token=`` or a Bearer header), if one is set."""
        if self.token is None:
            return True
        return token_matches(target.decode("latin-1"), headers, self.token)

    def upgrade(
        self,
        transport: asyncio.Transport,
        head: bytes,
        rest: bytes,
        *,
        on_close: Callable[[], None],
    ) -> asyncio.BaseProtocol:
        """Take over ``transport``: answer the handshake in ``head``, then serve frames.

        ``head`` is the request's head (request line, headers, blank line) and
        ``rest`` the bytes already read after it. The caller then calls
        ``transport.set_protocol()`` with the returned protocol. ``on_close`` is
        called exactly once, when the connection is gone. Call on the loop's thread.
        """
        connection = WebSocketConnection(self, transport, on_close)
        connection.start(head, rest)
        return connection


class WebSocketConnection(asyncio.Protocol):
    """One browser: WebSocket on one side, a chat client (``Transport``) on the other."""

    def __init__(
        self,
        endpoint: WebSocketEndpoint,
        transport: asyncio.Transport,
        on_close: Callable[[], None],
    ) -> None:
        self._endpoint = endpoint
        self._transport = transport
        self._on_close: Callable[[], None] | None = on_close
        self._loop = asyncio.get_running_loop()
        self._loop_thread = _thread_id()
        self._peer = peer_address(transport.get_extra_info("peername"))
        self._ws = ServerProtocol(
            token=endpoint.token,
            allowed_origins=endpoint.allowed_origins,
            max_message=endpoint.max_message,
            ping_interval=endpoint.ping_interval,
            ping_timeout=endpoint.ping_timeout,
            close_timeout=endpoint.close_timeout,
        )
        # Frames come from our own chat handler, whose replies its own limits bound.
        self._frames = LengthPrefixDecoder(max_size=None)
        self._handler: StreamHandler | None = None
        self._corked = False
        self._gone = False
        self._reason = ""
        self._paused_by: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._slow_timer: asyncio.TimerHandle | None = None
        self._held: asyncio.TimerHandle | None = None  # a token refusal, answered late
        self._started = _monotonic()
        self.bytes_in = 0
        self.bytes_out = 0

    # -- set-up, called by WebSocketEndpoint.upgrade --------------------------------

    def start(self, head: bytes, rest: bytes) -> None:
        """Answer the handshake; on success, connect a chat handler and serve ``rest``."""
        self._endpoint.connections.add(self)
        self.bytes_in += len(head)
        if self._ws.handshake(head, _monotonic()):
            self._transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            try:
                self._handler = self._endpoint.chat.handler()
            except Exception:
                self._endpoint.logger.exception("could not set up a chat client for a browser")
                self._ws.close(CloseCode.INTERNAL_ERROR, "server error", _monotonic())
            else:
                self._callback(self._handler.connection_made, _ChatTransport(self))
        # The web server may have stopped reading while it decided; the connection is ours now.
        self._transport.resume_reading()
        refusal = self._ws.refusal
        delay = self._endpoint.fail_delay
        if refusal is not None and refusal.token and delay:
            self._held = self._loop.call_later(delay, self._answer_held)
        elif rest and not self._ws.should_close:
            self.data_received(rest)
        else:
            self._flush()

    @property
    def status(self) -> int:
        """How the handshake was answered: 101, or the refusal's status (for the access log)."""
        refusal = self._ws.refusal
        return 101 if refusal is None else refusal.status

    @property
    def body_size(self) -> int:
        """Bytes of the refusal's body (0 once switched)."""
        refusal = self._ws.refusal
        return 0 if refusal is None else len(refusal.body)

    # -- asyncio.Protocol (what the loop calls) --------------------------------------

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._corked = True
        try:
            messages = self._ws.receive_data(data, _monotonic())
            handler = self._handler
            if handler is not None:
                for text in messages:
                    payload = text.encode()
                    try:
                        handler.data_received(pack_header(len(payload)) + payload)
                    except Exception as exc:  # noqa: BLE001 - a handler bug costs one connection
                        self._handler_failed(exc)
                        break
        finally:
            self._corked = False
        self._flush()

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._flush()
        return False  # the transport closes

    def pause_writing(self) -> None:
        self._pause("writing")
        timeout = self._endpoint.slow_timeout
        if timeout is not None and self._slow_timer is None:
            reason = f"slow consumer: output unread for {timeout:g} s"
            self._slow_timer = self._loop.call_later(timeout, self._drop, reason)

    def resume_writing(self) -> None:
        self._resume("writing")
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._gone:
            return
        self._gone = True
        for timer in (self._timer, self._slow_timer, self._held):
            if timer is not None:
                timer.cancel()
        for task in self._tasks:
            task.cancel()
        self._endpoint.connections.discard(self)
        if not self._reason:
            ws = self._ws
            if exc is not None:
                self._reason = lost_reason(exc)
            elif ws.close_code is not None:
                self._reason = f"close {ws.close_code}" + (
                    f" {ws.close_reason}" if ws.close_reason else ""
                )
            else:
                self._reason = ws.close_reason or "closed"
        if self._handler is not None:
            try:
                self._handler.connection_lost(exc)
            except Exception:
                self._endpoint.logger.exception("error in connection_lost on %s", self._peer_text())
        log_closed(
            self._endpoint.logger,
            self._peer,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=_monotonic() - self._started,
            reason=f"websocket {self._reason}",
        )
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    # -- used by the server's shutdown ------------------------------------------------

    def close(self) -> None:
        """Close with 1001 (going away): the browser is told, then the connection ends."""
        self._close(CloseCode.GOING_AWAY, "server shutting down")

    # -- what the chat handler's Transport does ------------------------------------------

    def _write(self, data: bytes) -> None:
        if _thread_id() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._write, data)
            return
        if self._gone or not data:
            return
        for frame in self._frames.feed(data):
            # The chat writes UTF-8 (JSON, or text replies); "replace" keeps a bad byte visible.
            self._ws.send_text(frame.decode("utf-8", "replace"))
        if not self._corked:
            self._flush()

    def _close(self, code: CloseCode, reason: str) -> None:
        if _thread_id() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._close, code, reason)
            return
        if self._gone:
            return
        self._ws.close(code, reason, _monotonic())
        if not self._corked:
            self._flush()

    def _call_async(
        self,
        work: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(lambda task: self._task_done(task, done))

    # -- internals ---------------------------------------------------------------------

    def _task_done(
        self, task: asyncio.Task[Any], done: Callable[[Any, BaseException | None], None]
    ) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._gone:
            return  # the connection is gone; nobody is waiting for the answer
        error = task.exception()
        self._callback(done, None if error else task.result(), error)

    def _callback(self, callback: Callable[..., None], *args: object) -> None:
        """Run a handler callback with writes corked, then send them in one go."""
        self._corked = True
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - a handler bug costs one connection only
            self._handler_failed(exc)
        finally:
            self._corked = False
        self._flush()

    def _answer_held(self) -> None:
        self._held = None
        self._flush()

    def _flush(self) -> None:
        """Write what the protocol has for the peer; close if it says so; re-arm the timer."""
        if self._gone or self._held is not None:
            return
        ws, transport = self._ws, self._transport
        data = ws.data_to_send()
        if data and not transport.is_closing():
            limit = self._endpoint.max_outbound
            if limit is not None and (waiting := transport.get_write_buffer_size()) > limit:
                self._drop(f"slow consumer: {waiting} bytes of output waiting (limit {limit})")
                return
            self.bytes_out += len(data)
            transport.write(data)
        if ws.should_close:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            transport.close()
            return
        deadline = ws.next_deadline
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = deadline
            if deadline is not None:
                delay = max(0.0, deadline - _monotonic())
                self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self._ws.tick(_monotonic())
        self._flush()

    def _drop(self, reason: str) -> None:
        # Its output cannot be delivered anyway: drop it, so that the memory is freed
        # now and the chat never waits for this browser.
        self._reason = reason
        self._transport.abort()

    def _pause(self, reason: str) -> None:
        if not self._paused_by and not self._transport.is_closing():
            self._transport.pause_reading()
        self._paused_by.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused_by.discard(reason)
        if not self._paused_by and not self._transport.is_closing():
            self._transport.resume_reading()

    def _handler_failed(self, exc: Exception) -> None:
        self._endpoint.logger.error("chat error on %s", self._peer_text(), exc_info=exc)
        self._ws.close(CloseCode.INTERNAL_ERROR, "server error", _monotonic())

    def _peer_text(self) -> str:
        return format_address(*self._peer)


class _ChatTransport:
    """The connection as the chat handler sees it: a :class:`Transport` of framed bytes.

    A separate object because ``close`` means two things: for the server's
    shutdown, :meth:`WebSocketConnection.close` says "going away" (1001); for the
    chat, closing a client is a normal end (1000).
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: WebSocketConnection) -> None:
        self._connection = connection

    @property
    def peer(self) -> tuple[str, int]:
        return self._connection._peer

    def write(self, data: bytes) -> None:
        self._connection._write(data)

    def close(self) -> None:
        # The chat ended this client (/quit, flooding, a broken request): a normal close.
        self._connection._close(CloseCode.NORMAL, "closed by the chat")

    def pause_reading(self) -> None:
        self._connection._pause("handler")

    def resume_reading(self) -> None:
        self._connection._resume("handler")

    def call_async(
        self,
        work: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        self._connection._call_async(work, done)
