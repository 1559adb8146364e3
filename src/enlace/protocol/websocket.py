"""The server side of a WebSocket connection, sans-I/O, over wsproto.

wsproto parses and writes the frames and the opening handshake (RFC 6455);
this module adds the decisions a server makes around them, and keeps them out
of the runtime, which only moves bytes and keeps time:

- **whether to accept** an upgrade request: the Origin check that stops other
  web sites from using a visitor's browser to talk to us (cross-site WebSocket
  hijacking), and an optional access token (``?token=`` or
  ``Authorization: Bearer``), compared in constant time;
- **what to refuse**: binary messages (close 1003), messages over
  ``max_message`` bytes (close 1009, decided while the message is still
  arriving, so it is never buffered whole), invalid UTF-8 (close 1007);
- **when** to ping, to give up on a peer that does not answer, and to stop
  waiting for a peer's close frame. The caller passes ``now`` (any monotonic
  clock) to every call and asks :attr:`ServerProtocol.next_deadline` when to
  call :meth:`ServerProtocol.tick` next.

Usage, as a runtime drives it::

    ws = ServerProtocol(allowed_origins=["https://chat.example.org"])
    ws.handshake(head, now)          # 101, or a refusal (then should_close)
    for text in ws.receive_data(data, now): ...
    ws.send_text("...")
    transport.write(ws.data_to_send())
    if ws.should_close: transport.close()
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as HandshakeError

from enlace.limits import MAX_WS_MESSAGE, WS_CLOSE_TIMEOUT, WS_PING_INTERVAL, WS_PING_TIMEOUT

__all__ = [
    "CloseCode",
    "Refusal",
    "ServerProtocol",
    "State",
    "check_request",
    "origin_allowed",
    "token_matches",
]

State = Literal["connecting", "open", "closing", "closed"]


class CloseCode(IntEnum):
    """The close codes this server sends (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006  # never sent: the connection ended without a close frame
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


@dataclass(frozen=True, slots=True)
class Refusal:
    """An upgrade request turned down: an HTTP status and a one-line reason."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    #: Refused for a missing or wrong token: the runtime answers after a delay, so
    #: that guessing costs time.
    token: bool = False

    @property
    def body(self) -> bytes:
        """The response's body: the reason, on one line."""
        return (self.reason + "\n").encode()

    def to_bytes(self) -> bytes:
        """The whole HTTP response, body included; the connection closes after it."""
        body = self.body
        phrase = HTTPStatus(self.status).phrase
        lines = [
            f"HTTP/1.1 {self.status} {phrase}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_allowed(origin: str | None, host: str, allowed_origins: Iterable[str] = ()) -> bool:
    """Whether a browser page from ``origin`` may open a WebSocket to ``host``.

    No Origin header (a program, not a browser) is allowed: the check protects
    browsers' users, and a program can send any Origin it likes anyway. A browser
    Origin is allowed when its host and port are the request's ``Host`` (the
    page came from this server), or when it is listed in ``allowed_origins``
    (``scheme://host[:port]``, or ``*`` for any). ``null`` (a sandboxed page, a
    ``file:`` URL) is allowed only when listed or with ``*``.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    listed = {allowed.strip().lower().rstrip("/") for allowed in allowed_origins}
    if "*" in listed or origin in listed:
        return True
    page = urlsplit(origin)
    default = _DEFAULT_PORTS.get(page.scheme)
    if default is None or not page.hostname:
        return False
    served = urlsplit("//" + host.strip().lower())
    try:
        page_port, served_port = page.port or default, served.port or default
    except ValueError:  # a port that is not a number, or out of range
        return False
    return page.hostname == served.hostname and page_port == served_port


def token_matches(target: str, headers: Sequence[tuple[bytes, bytes]], token: str) -> bool:
    """Whether the request carries ``token`` as ``?token=`` or ``Authorization: Bearer``.

    Compared with :func:`hmac.compare_digest`, so the time taken says nothing
    about how much of a guess was right.
    """
    expected = token.encode()
    given = [value.encode() for value in parse_qs(urlsplit(target).query).get("token", [])]
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                given.append(credentials.strip())
    # Every candidate is compared, so the number of comparisons does not depend on which matched.
    return sum(hmac.compare_digest(candidate, expected) for candidate in given) > 0


def check_request(
    request: Request, *, token: str | None = None, allowed_origins: Iterable[str] = ()
) -> Refusal | None:
    """Why the upgrade ``request`` must be refused, or ``None`` to accept it."""
    origins = [value for name, value in request.extra_headers if name.lower() == b"origin"]
    if len(origins) > 1:
        return Refusal(400, "more than one Origin header")
    origin = origins[0].decode("latin-1") if origins else None
    if not origin_allowed(origin, request.host, allowed_origins):
        return Refusal(403, f"origin {origin} may not connect here")
    if token is not None and not token_matches(request.target, request.extra_headers, token):
        return Refusal(
            403, "a valid token is required (?token=... or Authorization: Bearer)", token=True
        )
    return None


class ServerProtocol:
    """One WebSocket connection, server side: bytes in, text messages out, and back.

    Outgoing bytes accumulate until :meth:`data_to_send`; once
    :attr:`should_close` is true the caller sends them and closes the TCP
    connection. :attr:`close_code` and :attr:`close_reason` then say why (for
    the log). ``None`` disables a limit or a timer.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        allowed_origins: Iterable[str] = (),
        max_message: int | None = MAX_WS_MESSAGE,
        ping_interval: float | None = WS_PING_INTERVAL,
        ping_timeout: float | None = WS_PING_TIMEOUT,
        close_timeout: float | None = WS_CLOSE_TIMEOUT,
    ) -> None:
        self.token = token
        self.allowed_origins = tuple(allowed_origins)
        self.max_message = max_message
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        #: The accepted request (target, Host, headers), once :meth:`handshake` accepted it.
        self.request: Request | None = None
        self.refusal: Refusal | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.should_close = False
        self._ws = WSConnection(ConnectionType.SERVER)
        self._out: list[bytes] = []
        self._parts: list[str] = []  # the text message being received
        self._size = 0
        self._next_ping: float | None = None
        self._pong_deadline: float | None = None
        self._ping_payload: bytes | None = None
        self._pings = 0
        self._close_deadline: float | None = None

    @property
    def state(self) -> State:
        """``connecting``, ``open``, ``closing`` (a close frame sent or received) or ``closed``."""
        if self.should_close:
            return "closed"
        state = self._ws.state
        if state is ConnectionState.CONNECTING:
            return "connecting"
        if state is ConnectionState.OPEN:
            return "open"
        return "closing"

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (on the clock of ``now``), or ``None``."""
        if self.should_close:
            return None
        deadlines = [
            t for t in (self._next_ping, self._pong_deadline, self._close_deadline) if t is not None
        ]
        return min(deadlines, default=None)

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer now (and forget)."""
        out, self._out = self._out, []
        return b"".join(out)

    # -- the opening handshake -----------------------------------------------------

    def handshake(self, head: bytes, now: float) -> bool:
        """Answer the HTTP request ``head`` (request line, headers, blank line).

        Returns whether the connection is open. A refusal (400 for a request
        that is not a valid upgrade, 426 for an unsupported WebSocket version,
        403 for a refused Origin or token) is queued as a complete HTTP
        response, :attr:`refusal` says why, and :attr:`should_close` is set.
        """
        try:
            self._ws.receive_data(head)
            requests = [event for event in self._ws.events() if isinstance(event, Request)]
        except HandshakeError as exc:
            hint = exc.event_hint
            status = getattr(hint, "status_code", 400)
            headers = tuple(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in getattr(hint, "headers", ())
                if name.lower() != b"content-length"
            )
            return self._refuse(Refusal(status, f"not a WebSocket upgrade: {exc}", headers))
        except UnicodeError:
            return self._refuse(Refusal(400, "not a WebSocket upgrade: bad Host header"))
        if not requests:
            return self._refuse(Refusal(400, "not a WebSocket upgrade: incomplete request"))
        refusal = check_request(requests[0], token=self.token, allowed_origins=self.allowed_origins)
        if refusal is not None:
            return self._refuse(refusal)
        self.request = requests[0]
        self._out.append(self._ws.send(AcceptConnection()))
        if self.ping_interval is not None:
            self._next_ping = now + self.ping_interval
        return True

    def _refuse(self, refusal: Refusal) -> bool:
        self.refusal = refusal
        self.close_reason = f"refused: {refusal.status} {refusal.reason}"
        self._out.append(refusal.to_bytes())
        self.should_close = True
        return False

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[str]:
        """Feed bytes from the peer; return the text messages they complete, in order."""
        if self.should_close or self._ws.state is ConnectionState.CONNECTING:
            return []
        self._ws.receive_data(data)
        messages: list[str] = []
        for event in self._ws.events():
            if isinstance(event, TextMessage):
                if self._ws.state is ConnectionState.OPEN:
                    self._receive_text(event, messages, now)
            elif isinstance(event, BytesMessage):
                if self._ws.state is ConnectionState.OPEN:
                    self.close(
                        CloseCode.UNSUPPORTED_DATA,
                        "binary messages are not supported: send JSON as text",
                        now,
                    )
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    self._out.append(self._ws.send(event.response()))
            elif isinstance(event, Pong):
                if event.payload == self._ping_payload:
                    self._ping_payload = self._pong_deadline = None
            elif isinstance(event, CloseConnection):
                self._receive_close(event)
            if self.should_close:
                break
        return messages

    def _receive_text(self, event: TextMessage, messages: list[str], now: float) -> None:
        piece = event.data
        # isascii() is O(1) on CPython; only other text needs encoding to be measured.
        self._size += len(piece) if piece.isascii() else len(piece.encode())
        limit = self.max_message
        if limit is not None and self._size > limit:
            self._parts.clear()
            self.close(CloseCode.MESSAGE_TOO_BIG, f"message over the {limit}-byte limit", now)
            return
        self._parts.append(piece)
        if event.message_finished:
            parts = self._parts
            messages.append(parts[0] if len(parts) == 1 else "".join(parts))
            parts.clear()
            self._size = 0

    def _receive_close(self, event: CloseConnection) -> None:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer closes: answer with the same code, then the TCP connection ends.
            self.close_code, self.close_reason = event.code, event.reason or "closed by peer"
            self._out.append(self._ws.send(event.response()))
        elif state is not ConnectionState.CLOSED:
            # wsproto could not parse the peer's bytes (bad UTF-8: 1007, a broken frame:
            # 1002); its parser is finished, so fail the connection without waiting.
            if state is ConnectionState.OPEN:
                self._out.append(self._ws.send(CloseConnection(event.code, event.reason)))
            self.close_code, self.close_reason = event.code, event.reason or ""
        self.should_close = True

    def receive_eof(self) -> None:
        """The peer's TCP side ended; without a close frame first, that is code 1006."""
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL, "connection lost"
        self.should_close = True

    # -- sending ---------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Queue one text message; ignored once the connection is closing."""
        if self._ws.state is ConnectionState.OPEN and not self.should_close:
            self._out.append(self._ws.send(TextMessage(text)))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", now: float = 0.0) -> None:
        """Start the closing handshake; the TCP connection ends at the peer's answer.

        If the peer does not answer within ``close_timeout`` seconds,
        :meth:`tick` gives up on it. Before the handshake is complete there is
        nothing to close gracefully, and :attr:`should_close` is set at once.
        """
        if self._ws.state is not ConnectionState.OPEN or self.should_close:
            if self._ws.state is ConnectionState.CONNECTING:
                self.should_close = True
            return
        self._out.append(self._ws.send(CloseConnection(code, reason)))
        self.close_code, self.close_reason = code, reason
        self._next_ping = self._pong_deadline = None
        if self.close_timeout is not None:
            self._close_deadline = now + self.close_timeout

    # -- timers ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: give up on a silent peer, or send a ping."""
        if self.should_close:
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            self.close_reason = f"{self.close_reason or 'closing'}; no close frame from the peer"
            self.should_close = True
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            # A peer that does not answer pings will not answer a close frame either.
            self._send_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self.should_close = True
            return
        if self._next_ping is not None and now >= self._next_ping:
            self._pings += 1
            self._ping_payload = self._pings.to_bytes(4, "big")
            self._out.append(self._ws.send(Ping(self._ping_payload)))
            assert self.ping_interval is not None  # _next_ping is only set with an interval
            self._next_ping = now + self.ping_interval
            if self.ping_timeout is not None and self._pong_deadline is None:
                self._pong_deadline = now + self.ping_timeout

    def _send_close(self, code: int, reason: str) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._out.append(self._ws.send(CloseConnection(code, reason)))
        self.close_code, self.close_reason = code, reason
