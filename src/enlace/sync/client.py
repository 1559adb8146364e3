"""The thread runtime's message client: a socket and a listener thread.

As in the classic material, a listener thread reads everything the server
sends while the caller's thread sends requests. Replies are matched to
requests by id, so any number of threads may call :meth:`Client.request` at
once, and pushed events never get mixed up with replies::

    with Client.connect("127.0.0.1", 8080) as client:
        print(client.request("upper", "hola"))       # HOLA
        for event in client.events(timeout=1.0):
            print(event)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl as _ssl
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from enlace.addresses import format_address
from enlace.exceptions import (
    ConnectionClosed,
    RemoteProtocolError,
    RequestError,
    Timeout,
    translate_oserror,
)
from enlace.limits import (
    MAX_EVENTS,
    MAX_FRAME,
    READ_SIZE,
    REQUEST_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
)
from enlace.logs import lost_reason
from enlace.protocol.client import ClientConnection, Event, EventQueue, Reply, Text, as_event
from enlace.sockets import connect_tcp
from enlace.tls import TLSSocket, client_handshake, resolve_context

__all__ = ["Client"]

logger = logging.getLogger("enlace.client")
EventCallback = Callable[[dict[str, Any]], None]


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Reply | None = None


class Client:
    """A connection to a message server. Connects on creation; close it when done."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float | None = 10.0,
        request_timeout: float | None = REQUEST_TIMEOUT,
        on_event: EventCallback | None = None,
        on_close: Callable[[str], None] | None = None,
        max_frame: int | None = MAX_FRAME,
        max_events: int = MAX_EVENTS,
        trace: Callable[[str, bytes], None] | None = None,
        ssl: _ssl.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = TLS_HANDSHAKE_TIMEOUT,
        token: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.request_timeout = request_timeout
        self.on_event = on_event
        #: Called once with the reason when the connection ends.
        self.on_close = on_close
        self.max_events = max_events
        self._protocol = ClientConnection(max_frame=max_frame)
        self._protocol.trace = trace
        sock = connect_tcp(host, port, timeout=connect_timeout)
        context = resolve_context(ssl)
        self._sock: socket.socket | TLSSocket = sock
        if context is not None:
            self._sock = client_handshake(
                sock,
                context,
                server_hostname=server_hostname or host,
                timeout=handshake_timeout,
                where=format_address(host, port),
            )
        self._send_lock = threading.Lock()
        self._state = threading.Condition()
        self._pending: dict[int, _Pending] = {}
        self._events = EventQueue(max_events)
        self._closed_reason: str | None = None
        self._last_text = ""
        self._listener = threading.Thread(
            target=self._listen, name=f"enlace-client-{host}:{port}", daemon=True
        )
        self._listener.start()
        if token is not None:
            self._present_token(token)

    @classmethod
    def connect(cls, host: str, port: int, **options: Any) -> Client:
        """Connect to ``host:port``; the same as calling the class."""
        return cls(host, port, **options)

    @property
    def dropped_events(self) -> int:
        """Events dropped because nobody consumed them and ``max_events`` were queued."""
        return self._events.dropped

    @property
    def closed(self) -> bool:
        with self._state:
            return self._closed_reason is not None

    def request(self, cmd: str, *args: Any, timeout: float | None = -1.0) -> Any:
        """Send the command ``cmd`` with ``args``; return its result or raise.

        Raises :class:`RequestError` (with the server's ``code``) for an error
        reply, :class:`Timeout` after ``timeout`` seconds (default: the
        client's ``request_timeout``), :class:`ConnectionClosed` if the
        connection ends first.
        """
        return self._call(cmd, list(args), None, timeout)

    def _call(self, cmd: str, args: list[Any], line: str | None, timeout: float | None) -> Any:
        limit = self.request_timeout if timeout is not None and timeout < 0 else timeout
        request_id, data = self._protocol.request(cmd, args, line)
        pending = _Pending()
        with self._state:
            self._check_open()
            self._pending[request_id] = pending
        try:
            self._write(data)
            if not pending.done.wait(limit):
                raise Timeout(f"no reply to /{cmd} within {limit} s")
        finally:
            with self._state:
                self._pending.pop(request_id, None)
        reply = pending.reply
        if reply is None:
            self._check_open()
            raise ConnectionClosed("the connection closed before the reply")
        if not reply.ok:
            raise RequestError(reply.code or "error", reply.message)
        return reply.result

    def command(self, line: str, *, timeout: float | None = -1.0) -> Any:
        """Run a typed command line such as ``/upper hola servidor``; return its result.

        The server splits the line as if a person typed it (the last argument
        takes the rest of the line). Text without a leading ``/`` is a chat
        message (the command ``/say``). Raises as :meth:`request` does.
        """
        if line.startswith("/") and not line.startswith("//"):
            name, _, rest = line[1:].partition(" ")
        else:
            name, rest = "say", line[1:] if line.startswith("//") else line
        return self._call(name, [], rest.strip() if name != "say" else rest, timeout)

    def send(self, text: str) -> None:
        """Send one text payload (a ``/command`` or a chat message) without waiting."""
        self._write(self._protocol.payload(text.encode()))

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield pushed events as they arrive; stops when the connection closes,
        or when none arrives for ``timeout`` seconds."""
        while True:
            with self._state:
                if not self._events and self._closed_reason is None:
                    self._state.wait(timeout)
                event = self._events.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        """Close the connection; pending requests fail with ConnectionClosed."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._listener.join(5)
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _present_token(self, token: str) -> None:
        # First of all, as a JSON request with an id, so its reply is told apart from
        # anything else and a wrong token fails here, as RequestError("bad_token").
        try:
            self.request("token", token)
        except RequestError as exc:
            if exc.code != "unknown_command":  # a server without --token: nothing to prove
                self.close()
                raise
        except BaseException:
            self.close()
            raise

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)

    def _write(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            raise translate_oserror(exc, action="send to", host=self.host, port=self.port) from exc

    def _listen(self) -> None:
        reason = "the server closed the connection"
        try:
            while chunk := self._sock.recv(READ_SIZE):
                for item in self._protocol.receive(chunk):
                    self._dispatch(item)
        except RemoteProtocolError as exc:
            reason = f"the server broke the protocol: {exc}"
        except OSError as exc:
            reason = lost_reason(exc)
        if self._last_text:
            reason += f" (it said: {self._last_text})"
        with self._state:
            self._closed_reason = reason
            pending = list(self._pending.values())
            self._state.notify_all()
        for waiter in pending:
            waiter.done.set()
        if self.on_close is not None:
            try:
                self.on_close(reason)
            except Exception:
                logger.exception("error in the on_close callback")

    def _dispatch(self, item: Reply | Event | Text) -> None:
        if isinstance(item, Reply) and isinstance(item.id, int):
            with self._state:
                waiter = self._pending.get(item.id)
            if waiter is not None:
                waiter.reply = item
                waiter.done.set()
                return
        if isinstance(item, Text):
            self._last_text = item.text
        event = as_event(item)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.exception("error in the on_event callback")
            return
        with self._state:
            if self._events.put(event):
                logger.warning("dropping events: %d queued, none consumed", self.max_events)
            self._state.notify_all()
