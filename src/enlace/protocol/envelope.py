"""The message server's payloads: text commands, JSON requests, replies and events.

This is the sans-I/O half of the message server (docs/protocol.md is the
normative description). :class:`ServerConnection` keeps one client's protocol
state: which *kind* of client it is (length-prefixed frames or text lines,
decided by the first byte), which *form* its latest request had (text or JSON,
which server-initiated events follow), and it turns bytes into
:data:`Request` objects and replies into bytes.

Bad input becomes a :class:`BadRequest` rather than an exception, because most
bad input is answered and survived (invalid JSON, unknown command); a
``BadRequest`` with ``fatal=True`` (an oversize frame, a line too long) means
the stream cannot be resynchronised, so the reply is sent and the connection closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from enlace.exceptions import RemoteProtocolError
from enlace.limits import MAX_FRAME, MAX_JSON, MAX_JSON_DEPTH, MAX_LINE
from enlace.protocol.fastpath import cut_text_commands, frame_text
from enlace.protocol.framing import (
    DelimiterDecoder,
    LengthPrefixDecoder,
    pack_header,
)

__all__ = [
    "MAX_ID",
    "BadRequest",
    "ChatText",
    "Form",
    "JsonRequest",
    "JsonTooDeep",
    "Kind",
    "Request",
    "ServerConnection",
    "TextCommand",
    "dumps",
    "loads",
    "parse_payload",
    "render_event",
    "render_result",
    "tls_hello_refusal",
]

Kind = Literal["unknown", "framed", "lines"]
Form = Literal["text", "json"]


@dataclass(slots=True)
class TextCommand:
    """``/name rest of line``: ``name`` is lower-cased, ``rest`` has no leading space."""

    name: str
    rest: str
    form: Form = "text"


@dataclass(slots=True)
class JsonRequest:
    """``{"id": ..., "cmd": ..., "args": [...]}``; ``id`` is echoed in the reply.

    Instead of ``args``, a request may carry ``"line"``: the rest of a typed
    command line, split by the server exactly as for a text command. Clients
    use it to send what a person typed while still matching replies by id.
    """

    id: str | int | None
    cmd: str
    args: list[Any]
    line: str | None = None
    form: Form = "json"


@dataclass(slots=True)
class ChatText:
    """Plain text, not a command: a chat message for the client's current room."""

    text: str
    form: Form = "text"


@dataclass(slots=True)
class BadRequest:
    """Input that cannot be served; answered with an error (and a close if ``fatal``)."""

    code: str
    message: str
    form: Form = "text"
    id: str | int | None = None
    fatal: bool = False


Request = TextCommand | JsonRequest | ChatText


#: Longest string id accepted, so that an error reply (which echoes it) stays small.
MAX_ID = 256


class JsonTooDeep(ValueError):
    """A JSON document nests deeper than the limit."""


def loads(payload: bytes | str, *, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """Parse JSON strictly (no NaN or Infinity) and bound its nesting depth.

    Raises :class:`JsonTooDeep` or another :class:`ValueError` with a message
    fit for an error reply.
    """
    raw = payload.encode() if isinstance(payload, str) else payload
    # Counting brackets runs in C; only suspicious documents pay for measuring.
    if max_depth is not None and raw.count(b"[") + raw.count(b"{") > max_depth:
        _check_depth(raw, max_depth)
    return orjson.loads(raw)


def _check_depth(raw: bytes, max_depth: int) -> None:
    # Measured on the bytes, before any parser runs: orjson recurses on the C stack
    # and overflows it (killing the process) at about 150,000 levels, and the
    # standard library's parser gives up at a depth that depends on the stack in
    # use (and, on a valid document, builds it all first: 0.7 s for 1 MiB of
    # small arrays). Brackets outside strings are the nesting of valid JSON, and
    # measure invalid JSON the same way, so the answer never depends on a parser.
    if _bracket_depth_exceeds(raw, max_depth):
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")


# A JSON string, escapes included (unrolled, so that long strings match fast), or an
# unterminated one to the end: brackets inside one are not nesting.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_OPENING = frozenset(b"[{")


def _bracket_depth_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether ``[``/``{`` outside strings nest deeper than ``max_depth``, valid JSON or not."""
    depth = 0
    for byte in _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            if depth > max_depth:
                return True
        elif depth:
            depth -= 1
    return False


def dumps(value: Any) -> bytes:
    """Serialize to compact UTF-8 JSON."""
    return orjson.dumps(value)


def parse_payload(
    payload: bytes, *, max_json: int | None = MAX_JSON, max_json_depth: int | None = MAX_JSON_DEPTH
) -> Request | BadRequest | None:
    """Classify one payload; ``None`` for an empty one (a keep-alive)."""
    if not payload:
        return None
    if payload[:1] == b"{":
        return _parse_json(payload, max_json, max_json_depth)
    if payload[:1] == b"[" and _is_json(payload, max_json, max_json_depth):
        # A JSON array is a request gone wrong far more often than a chat message.
        return BadRequest("not_an_object", "a JSON request must be an object, not an array", "json")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRequest("invalid_utf8", f"payload is not valid UTF-8 (byte {exc.start})")
    if text.startswith("//"):
        return ChatText(text[1:])  # IRC's escape: "//x" is the message "/x"
    if text.startswith("/"):
        name, _, rest = text[1:].partition(" ")
        if not name or name != name.strip():
            return BadRequest("bad_request", "a command needs a name right after '/' (try /help)")
        return TextCommand(name.lower(), rest.strip())
    return ChatText(text)


def _is_json(payload: bytes, max_json: int | None, max_json_depth: int | None) -> bool:
    if max_json is not None and len(payload) > max_json:
        return False
    try:
        loads(payload, max_depth=max_json_depth)
    except JsonTooDeep:
        return True  # an array, certainly, and deep at that
    except ValueError:  # orjson.JSONDecodeError is a ValueError too
        return False
    return True


def _parse_json(
    payload: bytes, max_json: int | None, max_json_depth: int | None
) -> JsonRequest | BadRequest:
    if max_json is not None and len(payload) > max_json:
        return BadRequest(
            "json_too_large",
            f"JSON of {len(payload)} bytes exceeds the {max_json}-byte limit",
            "json",
        )
    try:
        value = loads(payload, max_depth=max_json_depth)
    except JsonTooDeep as exc:
        return BadRequest("json_too_deep", str(exc), "json")
    except ValueError as exc:  # orjson.JSONDecodeError
        code = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
        return BadRequest(code, f"invalid JSON: {exc}", "json")
    if not isinstance(value, dict):
        return BadRequest("not_an_object", "a JSON request must be an object", "json")
    request_id = value.get("id")
    if request_id is not None and (
        not isinstance(request_id, str | int) or isinstance(request_id, bool)
    ):
        return BadRequest("bad_request", '"id" must be a string or an integer', "json")
    if isinstance(request_id, str) and len(request_id) > MAX_ID:
        return BadRequest("bad_request", f'"id" is longer than {MAX_ID} characters', "json")
    cmd, args = value.get("cmd"), value.get("args", [])
    if not isinstance(cmd, str) or not cmd:
        return BadRequest("bad_request", '"cmd" must be a non-empty string', "json", request_id)
    if not isinstance(args, list):
        return BadRequest("bad_request", '"args" must be an array', "json", request_id)
    line = value.get("line")
    if line is not None and (not isinstance(line, str) or args):
        return BadRequest(
            "bad_request", '"line" must be a string, and not given with "args"', "json", request_id
        )
    if line is not None:
        line = line.strip()  # as the rest of a typed command is
    return JsonRequest(request_id, cmd.lower().lstrip("/"), args, line)


def render_result(result: Any) -> str:
    """A command's result in text form: strings as they are, ``None`` as ``ok``, else JSON."""
    if isinstance(result, str):
        return result
    if result is None:
        return "ok"
    return dumps(result).decode()


def render_event(event: dict[str, Any]) -> str:
    """An event in text form: ``[general] ana: hola`` for a message, ``* ...`` otherwise."""
    kind = event.get("event")
    if kind == "message" and "room" in event:
        return f"[{event['room']}] {event.get('from', '?')}: {event.get('text', '')}"
    if kind == "private":
        return (
            f"[private] {event.get('from', '?')} -> {event.get('to', '?')}: {event.get('text', '')}"
        )
    if "text" in event:
        return f"* {event['text']}"
    return f"* {dumps(event).decode()}"


# Replies to text commands depend on nothing else about the request.
_A_TEXT_COMMAND = TextCommand("", "")


def tls_hello_refusal() -> BadRequest:
    """What a TLS client on a plain port is told (in clear text, so its handshake fails at once)."""
    return BadRequest(
        "tls_not_supported",
        "this port speaks plain TCP, not TLS: connect without --tls",
        "text",
        fatal=True,
    )


def _is_tls_hello(data: bytes) -> bool:
    # A TLS record of type handshake (0x16), version 3.x: every ClientHello starts so,
    # and no person types Ctrl-V then Ctrl-C as the first bytes of a line.
    return len(data) >= 2 and data[0] == 0x16 and data[1] == 0x03


class ServerConnection:
    """One client's protocol state on the server side. Bytes in, requests out.

    The first byte decides the kind: ``0x00`` (every frame under 16 MiB starts
    with it) means length-prefixed frames, anything else text lines; but
    ``0x16`` waits for the second byte, as ``16 03`` is a TLS ClientHello,
    which is refused.
    """

    def __init__(
        self,
        *,
        max_frame: int | None = MAX_FRAME,
        max_line: int | None = MAX_LINE,
        max_json: int | None = MAX_JSON,
        max_json_depth: int | None = MAX_JSON_DEPTH,
    ) -> None:
        self.kind: Kind = "unknown"
        #: The form of the latest request; server-initiated events follow it.
        self.form: Form = "text"
        self.max_frame = max_frame
        self._max_line = max_line
        self._max_json = max_json
        self._max_json_depth = max_json_depth
        self._decoder: LengthPrefixDecoder | DelimiterDecoder | None = None
        self._tls_hello = False  # the first bytes were a TLS ClientHello: refuse them
        self._tls_answered = False
        # A first byte 0x16 waits here for the second: TCP may cut a ClientHello after it.
        self._held = b""
        #: Called with ``("in" | "out", payload)`` for every payload, for ``--trace``.
        self.trace: Callable[[str, bytes], None] | None = None

    @property
    def tls_hello(self) -> bool:
        """The client's first bytes were a TLS ClientHello: it is only to be refused.

        :meth:`receive` answers it with one fatal ``tls_not_supported``; a server
        checks this after :meth:`detect` so as never to greet such a client.
        """
        return self._tls_hello

    def detect(self, data: bytes) -> bool:
        """Decide the client's kind from its first bytes; return True once it is known.

        :meth:`receive` does this itself; a server calls it first when it wants
        to greet the client before serving what the same bytes ask for, then
        passes the same ``data`` to :meth:`receive`. A first byte ``0x16`` alone
        is not enough (a TLS ClientHello starts ``16 03``): it is kept, the
        result is False, and the caller passes only *new* bytes from then on;
        :meth:`receive` serves the kept byte with them.
        """
        if self._decoder is None and data:
            first = self._held + data if self._held else data
            if first[0] == 0:
                self.kind, self._decoder = "framed", LengthPrefixDecoder(max_size=self.max_frame)
            elif first[0] == 0x16 and len(first) < 2:
                self._held = first  # one byte, at most: a second one always decides
                return False
            else:
                self.kind, self._decoder = "lines", DelimiterDecoder(max_size=self._max_line)
                self._tls_hello = _is_tls_hello(first)
        return self._decoder is not None

    def receive(self, data: bytes) -> list[Request | BadRequest]:
        """Feed bytes from the client; return what they complete, in order."""
        if not self.detect(data):
            return []
        if self._tls_hello:
            # A TLS client on this plain port: answering in clear text makes its
            # handshake fail at once (not after its handshake timeout) and tells
            # whoever reads the bytes what went wrong. Nothing it sends is served.
            if self._tls_answered:
                return []
            self._tls_answered = True
            return [tls_hello_refusal()]
        assert self._decoder is not None
        if self._held:
            data, self._held = self._held + data, b""
        try:
            payloads = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            return [BadRequest(exc.code, str(exc), self.form, fatal=True)]
        items = self._parse(payloads)
        error = self._decoder.error
        if error is not None:
            # The requests before the bad frame are served; then the error, then a close.
            items.append(BadRequest(error.code, str(error), self.form, fatal=True))
        return items

    def receive_text_commands(self, data: bytes) -> list[tuple[str, str]] | None:
        """:meth:`receive` for the common case, as ``(name, rest)`` pairs, or ``None``.

        When ``data`` (added to what is buffered) completes only text commands
        and keep-alives, the result is what :meth:`receive` would return, each
        :class:`TextCommand` as its ``(name, rest)``, with the same effect on
        the connection's state; it costs a fraction, as the message server
        answers most requests this way (the frames are cut and read by
        :func:`enlace.protocol.fastpath.cut_text_commands`, in C when built).
        Otherwise (a line client, ``trace`` set, a frame pending from earlier
        bytes or over the limit, a payload that is JSON, chat text, invalid
        UTF-8, or a command name that is empty, long, not ASCII or has spaces
        around it) it returns ``None`` having consumed nothing, and the caller
        uses :meth:`receive`.
        """
        decoder = self._decoder
        if type(decoder) is not LengthPrefixDecoder or not decoder.at_boundary() or self.trace:
            return None
        cut = cut_text_commands(data, self.max_frame)
        if cut is None:
            return None  # receive() reads it: the frames before a bad one are served first
        commands, position = cut
        if position < len(data):
            decoder.feed(data[position:])  # part of a frame, its header within the limit
        if commands:
            self.form = "text"
        return commands

    def eof(self) -> list[Request | BadRequest]:
        """The client stopped sending: a final unterminated line still counts."""
        if self._decoder is None or self.kind == "framed":
            return []  # a frame cut short by the close gets no reply: nobody would read it
        try:
            return self._parse(self._decoder.eof())
        except RemoteProtocolError as exc:
            return [BadRequest(exc.code, str(exc), self.form, fatal=True)]

    def _parse(self, payloads: list[bytes]) -> list[Request | BadRequest]:
        items: list[Request | BadRequest] = []
        for payload in payloads:
            if self.trace is not None:
                self.trace("in", payload)
            item = parse_payload(
                payload, max_json=self._max_json, max_json_depth=self._max_json_depth
            )
            if item is not None:
                self.form = item.form
                items.append(item)
        return items

    # -- outgoing ---------------------------------------------------------------

    def encode(self, payload: bytes) -> bytes:
        """Wrap one payload for this client's kind: a frame, or a line."""
        if self.trace is not None:
            self.trace("out", payload)
        if self.kind == "lines":
            return payload + b"\n"
        return pack_header(len(payload)) + payload  # sizes are bounded by the callers

    def reply(self, request: Request, result: Any) -> bytes:
        """The success reply to ``request``."""
        if type(request) is JsonRequest:
            body: dict[str, Any] = {"ok": True, "result": result}
            if request.id is not None:
                body = {"id": request.id, **body}
            payload = dumps(body)
        else:
            payload = (result if type(result) is str else render_result(result)).encode()
        if self.max_frame is not None and len(payload) > self.max_frame:
            return self.error(
                request,
                "reply_too_large",
                f"the reply of {len(payload)} bytes exceeds the {self.max_frame}-byte limit",
            )
        if self.trace is None and self.kind == "framed":
            return pack_header(len(payload)) + payload  # encode(), for the common case
        return self.encode(payload)

    def text_reply(self, result: Any) -> bytes:
        """:meth:`reply` to a text command, at less cost (the message server's fast path)."""
        limit = self.max_frame
        if (
            type(result) is str
            and self.trace is None
            and self.kind == "framed"
            # n characters encode to at most 4n bytes: a short str fits unmeasured.
            and (limit is None or len(result) <= limit >> 2)
        ):
            return frame_text(result)
        return self.reply(_A_TEXT_COMMAND, result)

    def error(self, request: Request | BadRequest | None, code: str, message: str) -> bytes:
        """The error reply to ``request`` (or to the connection, if ``None``)."""
        form = request.form if request is not None else self.form
        request_id = getattr(request, "id", None)
        payload = self._error_payload(form, request_id, code, message)
        if self.max_frame is not None and len(payload) > self.max_frame:
            # Only a command's own long message can get here (ids are bounded): keep the code.
            payload = self._error_payload(form, request_id, code, "(message too long to send)")
        return self.encode(payload)

    @staticmethod
    def _error_payload(form: Form, request_id: str | int | None, code: str, message: str) -> bytes:
        if form == "json":
            body: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
            if request_id is not None:
                body = {"id": request_id, **body}
            return dumps(body)
        return f"ERR {code}: {message}".encode()

    def event(self, event: dict[str, Any]) -> bytes:
        """A server-initiated event, in the form of the client's latest request."""
        if self.form == "json":
            return self.encode(dumps(event))
        return self.encode(render_event(event).encode())
