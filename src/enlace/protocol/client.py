"""The client side of the message server's protocol, sans I/O.

A client always speaks frames and sends JSON requests with ids, so replies are
matched to requests however they interleave with pushed events.
:class:`ClientConnection` numbers the requests, encodes them, and sorts what
arrives into :class:`Reply`, :class:`Event` and :class:`Text` (a payload that
is not JSON: a text-form reply or event, or the server's "busy" refusal).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from enlace.limits import MAX_FRAME
from enlace.protocol.envelope import dumps
from enlace.protocol.framing import LengthPrefixDecoder, encode_length_prefixed

__all__ = ["ClientConnection", "Event", "EventQueue", "Reply", "Text", "as_event"]


@dataclass(slots=True)
class Reply:
    """The answer to request ``id``: a result if ``ok``, else an error code and message."""

    id: int | str | None
    ok: bool
    result: Any = None
    code: str = ""
    message: str = ""


@dataclass(slots=True)
class Event:
    """A server-initiated event (it has no id)."""

    data: dict[str, Any]


@dataclass(slots=True)
class Text:
    """A payload that is not JSON."""

    text: str


class ClientConnection:
    """Frames out, frames in; raises :class:`~enlace.exceptions.FrameTooLarge` on oversize."""

    def __init__(self, *, max_frame: int | None = MAX_FRAME) -> None:
        self._decoder = LengthPrefixDecoder(max_size=max_frame)
        self._ids = itertools.count(1)
        self._max_frame = max_frame
        #: Called with ``("in" | "out", payload)`` for every payload, for ``--trace``.
        self.trace: Callable[[str, bytes], None] | None = None

    def request(self, cmd: str, args: list[Any], line: str | None = None) -> tuple[int, bytes]:
        """A new request: its id and the bytes to send.

        With ``line``, the server splits that text into arguments as it does
        for a typed command (and ``args`` must be empty).
        """
        request_id = next(self._ids)
        body: dict[str, Any] = {"id": request_id, "cmd": cmd}
        if line is not None:
            body["line"] = line
        else:
            body["args"] = args
        return request_id, self.payload(dumps(body))

    def payload(self, payload: bytes) -> bytes:
        """Any payload (a text command, a chat message), framed."""
        if self.trace is not None:
            self.trace("out", payload)
        return encode_length_prefixed(payload, max_size=self._max_frame)

    def receive(self, data: bytes) -> list[Reply | Event | Text]:
        """Feed bytes from the server; return what they complete, in order."""
        items: list[Reply | Event | Text] = []
        payloads = self._decoder.feed(data)
        if self._decoder.error is not None:
            raise self._decoder.error  # the server broke the protocol: the connection is over
        for payload in payloads:
            if self.trace is not None:
                self.trace("in", payload)
            if payload:
                items.append(_classify(payload))
        return items


def _classify(payload: bytes) -> Reply | Event | Text:
    if payload[:1] == b"{":
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            if "ok" in value:
                error = value.get("error")
                if error is None:
                    error = {}
                elif not isinstance(error, dict):
                    error = {"code": "error", "message": str(error)}
                return Reply(
                    value.get("id"),
                    bool(value["ok"]),
                    value.get("result"),
                    str(error.get("code", "")),
                    str(error.get("message", "")),
                )
            if "event" in value:
                return Event(value)
    return Text(payload.decode("utf-8", "replace"))


def as_event(item: Event | Text | Reply) -> dict[str, Any]:
    """What a client hands its user for anything that is not the reply it awaits.

    An event as it came; a text payload as ``{"event": "text", ...}``; a reply
    nobody awaits (an error without an id is about the connection itself) as
    ``{"event": "error", ...}``.
    """
    if isinstance(item, Event):
        return item.data
    if isinstance(item, Text):
        return {"event": "text", "text": item.text}
    return {"event": "error", "code": item.code, "text": item.message}


class EventQueue:
    """Pushed events waiting for the user, bounded: past ``max_events`` the oldest go.

    Dropping is counted in :attr:`dropped`, and :meth:`put` returns True for the
    first drop so the caller can say so once; a client that never reads its
    events must not grow without bound.
    """

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.dropped = 0
        self._events: deque[dict[str, Any]] = deque()

    def put(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; return True when this is the first event dropped."""
        first_drop = False
        if len(self._events) >= self.max_events:
            self._events.popleft()
            self.dropped += 1
            first_drop = self.dropped == 1
        self._events.append(event)
        return first_drop

    def get(self) -> dict[str, Any] | None:
        """The oldest event, or None."""
        return self._events.popleft() if self._events else None

    def __len__(self) -> int:
        return len(self._events)
