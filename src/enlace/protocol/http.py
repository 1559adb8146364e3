"""HTTP/1.1 requests in, response heads out: sans-I/O glue over httptools.

:class:`RequestParser` is fed the bytes a client sends and returns the
complete :class:`Request` objects they contain, in order (pipelining), or an
:class:`HttpError` carrying the status to answer before closing. The parsing
itself is llhttp's (Node.js's parser, through httptools), which already
refuses most request-smuggling shapes: a Content-Length together with a
Transfer-Encoding, two Content-Lengths, bare CR or LF in the framing, obs-fold
continuation lines. On top of it this module enforces enlace's limits (request
line, header count and size, body size), checked while the bytes arrive so that
a client cannot make the server buffer an endless head, and the rules llhttp
leaves to the application (exactly one Host in HTTP/1.1, no transfer coding
but ``chunked``).

:func:`response_head` builds a status line and header block. Nothing here
reads a clock or a socket: the caller passes the ``Date`` value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import httptools

from enlace.exceptions import RemoteProtocolError
from enlace.limits import MAX_BODY, MAX_HEADER_BYTES, MAX_HEADERS, MAX_REQUEST_LINE

__all__ = [
    "REASONS",
    "HttpError",
    "Request",
    "RequestParser",
    "response_head",
]

REASONS: dict[int, str] = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HttpError(RemoteProtocolError):
    """A request the server refuses; ``status`` is the HTTP status to answer with.

    After one, the connection cannot go on (the next request's start is unknown),
    so the server answers and closes. ``code`` is a stable name of the reason.
    """

    code = "bad_request"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(slots=True)
class Request:
    """One parsed request head (a body, if any, has been read and discarded)."""

    method: str
    #: The request target exactly as sent (``/a%20b?x=1``).
    target: bytes
    #: ``"1.1"`` or ``"1.0"``.
    version: str
    #: Header fields as sent, names and values as bytes, in order.
    headers: list[tuple[bytes, bytes]]
    #: Whether the connection may carry another request after this one.
    keep_alive: bool
    #: Bytes of body the client sent (read and discarded: static files take none).
    body_size: int = 0
    #: The client asked to switch protocols (``Connection: upgrade`` + ``Upgrade``).
    upgrade: bool = False
    _index: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> bytes:
        """The target before any ``?`` or ``#``, still percent-encoded."""
        target = self.target
        end = len(target)
        for mark in (b"?", b"#"):
            at = target.find(mark)
            if 0 <= at < end:
                end = at
        return target[:end]

    @property
    def query(self) -> bytes:
        """What follows ``?`` in the target (without it), or ``b""``."""
        at = self.target.find(b"?")
        return b"" if at < 0 else self.target[at + 1 :].partition(b"#")[0]

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower-case bytes), the last one if repeated."""
        return self._index.get(name)

    def head(self) -> bytes:
        """The request head re-serialized from what was parsed: request line, fields, CRLF.

        Field names and values are exactly as received; only the separators are
        normalized (``Name: value``), which is how an upgrade handler gets the head.
        """
        lines = [f"{self.method} ".encode() + self.target + f" HTTP/{self.version}".encode()]
        lines.extend(name + b": " + value for name, value in self.headers)
        return b"\r\n".join(lines) + b"\r\n\r\n"


class RequestParser:
    """Parse a client's byte stream into :class:`Request` objects, enforcing limits.

    ``feed(data)`` returns what ``data`` completed: requests, and at most one
    :class:`HttpError` last (after it the parser is dead: answer it and close).
    When a request asks to switch protocols, parsing stops after it and
    :attr:`upgrade_rest` holds the bytes that followed its head; call
    :meth:`resume` to go on parsing HTTP if the server does not switch.
    """

    def __init__(
        self,
        *,
        max_request_line: int | None = MAX_REQUEST_LINE,
        max_headers: int | None = MAX_HEADERS,
        max_header_bytes: int | None = MAX_HEADER_BYTES,
        max_body: int | None = MAX_BODY,
    ) -> None:
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._out: list[Request | HttpError] = []
        self._dead = False
        #: Set after a request that asks to switch protocols; see :meth:`resume`.
        self.upgrade_rest: bytes | None = None
        self._reset_message()
        self._in_message = False

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._index: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._hosts = 0
        self._in_head = False
        self._body = 0
        self._pending_head = 0  # upper bound of a partial head's bytes held by llhttp
        self._error: HttpError | None = None

    @property
    def in_head(self) -> bool:
        """A request head has started and is not complete (for the head timeout)."""
        return self._in_head

    @property
    def idle(self) -> bool:
        """Between requests: nothing of a next one received yet."""
        return not self._in_message

    def feed(self, data: bytes) -> list[Request | HttpError]:
        """Parse ``data``; return the requests it completed, maybe an error last."""
        if self._dead or self.upgrade_rest is not None:
            return []
        out = self._out = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_rest = data[exc.args[0] :]
            if out and isinstance(out[-1], Request):
                out[-1].upgrade = True
            return out
        except (httptools.HttpParserError, _Stop) as exc:
            self._dead = True
            out.append(self._error or self._bad_framing(exc))
            return out
        if self._in_head:
            self._check_partial_head(data)
            if self._error is not None:
                self._dead = True
                out.append(self._error)
        return out

    def resume(self) -> list[Request | HttpError]:
        """Go on parsing HTTP after an upgrade request the server did not take."""
        rest, self.upgrade_rest = self.upgrade_rest or b"", None
        self._parser = httptools.HttpRequestParser(self)
        return self.feed(rest) if rest else []

    def _bad_framing(self, exc: Exception) -> HttpError:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            return HttpError(501 if text.startswith("Invalid method") else 400, "bad_method", text)
        if text.startswith("Invalid HTTP version"):
            return HttpError(505, "bad_version", text)
        return HttpError(400, "bad_request", f"malformed request: {text}")

    def _check_partial_head(self, data: bytes) -> None:
        # llhttp keeps the unfinished URL and header of a head split across reads
        # in its own buffers; bound them by counting what arrived since the head began.
        if self._pending_head:
            self._pending_head += len(data)
        else:
            # The head began inside this chunk, after the previous message's end
            # (a head contains no blank line, so it starts after the last one).
            last = data.rfind(b"\r\n\r\n")
            self._pending_head = len(data) - (last + 4 if last >= 0 else 0)
        limit = self._head_limit()
        if limit is not None and self._pending_head > limit:
            self._fail(431, "headers_too_large", f"request head larger than {limit} bytes")

    def _head_limit(self) -> int | None:
        if self.max_header_bytes is None or self.max_request_line is None:
            return None
        return self.max_request_line + self.max_header_bytes

    def _fail(self, status: int, code: str, message: str) -> None:
        if self._error is None:
            self._error = HttpError(status, code, message)

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_message()
        self._in_message = True
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        limit = self.max_request_line
        if limit is not None and len(self._url) > limit:
            self._fail(414, "uri_too_long", f"request target longer than {limit} bytes")
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        self._header_bytes += len(name) + len(value) + 4
        if self.max_headers is not None and len(headers) > self.max_headers:
            self._fail(431, "headers_too_large", f"more than {self.max_headers} header fields")
            raise _Stop
        if self.max_header_bytes is not None and self._header_bytes > self.max_header_bytes:
            limit = self.max_header_bytes
            self._fail(431, "headers_too_large", f"header fields larger than {limit} bytes")
            raise _Stop
        key = name.lower()
        if key == b"host":
            self._hosts += 1
        self._index[key] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._pending_head = 0
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(505, "bad_version", f"HTTP/{version} is not supported")
            raise _Stop
        if self._hosts > 1:
            self._fail(400, "bad_request", "more than one Host header")
            raise _Stop
        if self._hosts == 0 and version == "1.1":
            self._fail(400, "bad_request", "HTTP/1.1 request without a Host header")
            raise _Stop
        coding = self._index.get(b"transfer-encoding")
        if coding is not None and coding.strip().lower() != b"chunked":
            self._fail(501, "bad_transfer_encoding", "only Transfer-Encoding: chunked is supported")
            raise _Stop
        length = self._index.get(b"content-length")
        if length is not None and self.max_body is not None and int(length) > self.max_body:
            self._fail(413, "body_too_large", f"request body larger than {self.max_body} bytes")
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self.max_body is not None and self._body > self.max_body:
            self._fail(413, "body_too_large", f"request body larger than {self.max_body} bytes")
            raise _Stop

    def on_message_complete(self) -> None:
        parser = self._parser
        self._out.append(
            Request(
                method=parser.get_method().decode("ascii"),
                target=self._url,
                version=parser.get_http_version(),
                headers=self._headers,
                keep_alive=parser.should_keep_alive(),
                body_size=self._body,
                _index=self._index,
            )
        )
        self._in_message = False


class _Stop(Exception):
    """Raised from a callback to make llhttp stop; the reason is in ``_error``."""


def response_head(
    status: int,
    headers: Iterable[tuple[str, str]],
    *,
    date: bytes,
    keep_alive: bool,
    server: bytes = b"enlace",
) -> bytes:
    """``HTTP/1.1 STATUS REASON`` and the header block, ready to send.

    ``Date``, ``Server`` and ``Connection`` are added; ``headers`` must not
    contain CR or LF (they are built by the server, never copied from a request).
    """
    parts = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n".encode("ascii"),
        b"Server: " + server + b"\r\nDate: " + date + b"\r\n",
    ]
    parts.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    parts.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(parts)
