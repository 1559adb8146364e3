"""A client of OpenAI-compatible Chat Completions endpoints, streaming included.

The endpoint's side of the AI assistant (:mod:`enlace.services.assistant`): its
configuration (:class:`AssistantConfig`, from ``ENLACE_AI_URL``,
``ENLACE_AI_MODEL`` and ``ENLACE_AI_KEY``), one request (:func:`complete`), and
the parsing of what comes back: a Server-Sent Events stream of
``choices[0].delta.content`` fragments ending with ``data: [DONE]``, or a
plain JSON answer. Every part is bounded: connecting, silence between reads,
the whole answer, one line of the stream, the answer's size; and every failure
becomes an :class:`AssistantError` whose message says what the endpoint did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from enlace.exceptions import EnlaceError
from enlace.limits import (
    AI_CONNECT_TIMEOUT,
    AI_READ_TIMEOUT,
    AI_TOTAL_TIMEOUT,
    MAX_AI_ANSWER,
    MAX_AI_CONTEXT,
    MAX_AI_LINE,
)

if TYPE_CHECKING:
    import ssl

    import httpx

__all__ = [
    "AssistantConfig",
    "AssistantConfigError",
    "AssistantError",
    "complete",
]

# What an answer may not contain: C0 controls but tab and newline, DEL and C1
# controls. Escape sequences would reach the terminal of every nc user in the room.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_END_OF_LINE = re.compile(rb"\r\n|\r|\n")

# An error body says what went wrong in its first lines; more is not worth holding.
_MAX_ERROR_BODY = 64 * 1024
# Quoting the endpoint's error message: one sentence or two, not a page of HTML.
_MAX_QUOTE = 300

# Why a model stopped, when that leaves the answer incomplete: said in the answer.
_CUT_SHORT = {
    "length": "the model reached its length limit",
    "content_filter": "the endpoint's content filter stopped it",
}


class AssistantConfigError(EnlaceError):
    """The assistant's configuration (``ENLACE_AI_*``) is unusable; the message says why."""

    code = "ai_config"


class AssistantError(EnlaceError):
    """The endpoint did not give a usable answer.

    ``code`` is ``ai_failed`` (unreachable, timed out, an HTTP error, a
    malformed or unfinished stream, no answer) or ``answer_too_long``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class AssistantConfig:
    """Where the Chat Completions endpoint is, and how far to wait for it and trust it.

    ``url`` is the API's base URL (``http://127.0.0.1:8000/v1``) or the full
    ``.../chat/completions`` URL; ``key``, if given, is sent as a bearer token
    and never shown in ``repr``. Timeouts are in seconds and limits in bytes or
    messages; ``None`` disables one (``max_context`` is a count, 0 for none).
    Invalid values raise :class:`AssistantConfigError`.
    """

    url: str
    model: str
    key: str | None = dataclasses.field(default=None, repr=False)
    _: dataclasses.KW_ONLY
    # Seconds to connect (also to send the question, which is as quick).
    connect_timeout: float | None = AI_CONNECT_TIMEOUT
    # Seconds of silence allowed while waiting for the answer's next bytes.
    read_timeout: float | None = AI_READ_TIMEOUT
    # Seconds for the whole answer, from connecting to its last byte.
    total_timeout: float | None = AI_TOTAL_TIMEOUT
    # Earlier messages of the room sent along with the question.
    max_context: int = MAX_AI_CONTEXT
    # Bytes of answer (UTF-8); past it the answer is refused, never cut.
    max_answer: int | None = MAX_AI_ANSWER
    # Bytes of one line of the event stream, or of a whole JSON answer.
    max_line: int | None = MAX_AI_LINE

    def __post_init__(self) -> None:
        try:
            parts = urllib.parse.urlsplit(self.url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            valid = False
        if not valid:
            raise AssistantConfigError(
                f"the AI endpoint's URL must be http:// or https:// and name a host, "
                f"such as http://127.0.0.1:8000/v1 (got {self.url!r})"
            )
        if not self.model.strip():
            raise AssistantConfigError("the AI model's name is empty")
        if self.key is not None and not (self.key.isascii() and self.key.isprintable()):
            # It goes into an HTTP header, where anything else is refused or worse.
            raise AssistantConfigError("the AI key must be printable ASCII")
        if self.max_context < 0:
            raise AssistantConfigError(f"max_context must be 0 or more, not {self.max_context}")
        for limit in ("connect_timeout", "read_timeout", "total_timeout"):
            value = getattr(self, limit)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise AssistantConfigError(f"{limit} must be a positive number of seconds or None")
        for limit in ("max_answer", "max_line"):
            value = getattr(self, limit)
            if value is not None and value < 1:
                raise AssistantConfigError(f"{limit} must be a positive number of bytes or None")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **limits: Any
    ) -> AssistantConfig | None:
        """The configuration in ``ENLACE_AI_URL``, ``ENLACE_AI_MODEL``, ``ENLACE_AI_KEY``.

        ``environ`` defaults to :data:`os.environ`; ``limits`` are the keyword
        fields (timeouts, ``max_*``). Returns ``None`` when ``ENLACE_AI_URL`` is
        unset or empty (the assistant is then not configured); raises
        :class:`AssistantConfigError` when it is set but the model is not, or a
        value is invalid.
        """
        if environ is None:
            environ = os.environ
        url = environ.get("ENLACE_AI_URL", "").strip()
        if not url:
            return None
        model = environ.get("ENLACE_AI_MODEL", "").strip()
        if not model:
            raise AssistantConfigError(
                "ENLACE_AI_URL is set but ENLACE_AI_MODEL is not: set it to the name of "
                "the model the endpoint serves"
            )
        key = environ.get("ENLACE_AI_KEY", "").strip() or None
        return cls(url, model, key, **limits)

    @property
    def endpoint(self) -> str:
        """The URL the questions are posted to: ``{url}/chat/completions``."""
        parts = urllib.parse.urlsplit(self.url)
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        return urllib.parse.urlunsplit(parts._replace(path=path))


# -- the endpoint's wire format -------------------------------------------------------


class _EventStream:
    """Server-Sent Events, sans I/O: bytes in, the ``data`` of each complete event out.

    Lines end with CRLF, LF or CR; a blank line ends an event; lines starting
    with ``:`` are comments (keep-alives); fields other than ``data`` are
    ignored. A line, or an event's data, longer than ``max_line`` is an error,
    so a broken stream cannot make us buffer without bound.
    """

    def __init__(self, *, max_line: int | None) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._after_cr = False  # the last line ended with CR: a LF next completes it

    def feed(self, data: bytes) -> list[str]:
        """Bytes as they arrived; return the data of the events they complete."""
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]
        self._after_cr = False
        buffer = self._buffer
        # The buffer holds no line end (they are consumed below): scan only what is new.
        scanned = len(buffer)
        buffer += data
        events: list[str] = []
        end = 0
        for match in _END_OF_LINE.finditer(buffer, scanned):
            self._line(bytes(buffer[end : match.start()]), events)
            end = match.end()
        # A CR at the very end may be the first half of a CRLF cut by the network.
        self._after_cr = end == len(buffer) and buffer.endswith(b"\r")
        del buffer[:end]
        self._check(len(buffer))
        return events

    def close(self) -> list[str]:
        """The stream ended: a last line or event without its terminator still counts."""
        events: list[str] = []
        if self._buffer:
            self._line(bytes(self._buffer), events)
            self._buffer.clear()
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        self._check(len(line))
        if not line:
            if self._data:
                data = b"\n".join(self._data)
                self._data, self._size = [], 0
                try:
                    events.append(data.decode())
                except UnicodeDecodeError:
                    raise AssistantError(
                        "ai_failed", "the AI endpoint sent malformed data: not UTF-8"
                    ) from None
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            value = value.removeprefix(b" ")
            self._size += len(value)
            self._check(self._size)
            self._data.append(value)

    def _check(self, size: int) -> None:
        if self._max_line is not None and size > self._max_line:
            raise AssistantError(
                "ai_failed",
                f"the AI endpoint sent a line of its stream longer than {self._max_line} bytes",
            )


class _Answer:
    """The answer's text as it arrives: cleaned, and refused past ``max_answer`` bytes."""

    def __init__(self, max_answer: int | None) -> None:
        self._max_answer = max_answer
        self._pieces: list[str] = []
        self._size = 0
        self.finish_reason: str | None = None

    def add(self, text: str) -> str:
        """Add a fragment; return it as kept (without control characters)."""
        text = _CONTROL.sub("", text)
        self._size += len(text.encode())
        if self._max_answer is not None and self._size > self._max_answer:
            raise AssistantError(
                "answer_too_long",
                f"the answer grew past the {self._max_answer}-byte limit for an answer, so it "
                "was not posted (ask for a shorter one)",
            )
        self._pieces.append(text)
        return text

    def text(self) -> str:
        text = "".join(self._pieces).strip()
        if not text:
            raise AssistantError("ai_failed", "the AI endpoint sent an empty answer")
        note = _CUT_SHORT.get(self.finish_reason or "")
        return f"{text} [cut short: {note}]" if note else text


def _malformed(what: str, data: str | bytes) -> AssistantError:
    shown = data if isinstance(data, str) else data.decode(errors="replace")
    return AssistantError(
        "ai_failed", f"the AI endpoint sent malformed data: {what} ({_quote(shown, 80)})"
    )


def _quote(text: str, limit: int = _MAX_QUOTE) -> str:
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _endpoint_error(payload: Any) -> str | None:
    """The message of an error payload, in the shapes endpoints use, if it is one."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("message") or error.get("type") or error.get("code")
    if error is None:
        error = payload.get("message") or payload.get("detail")
    return None if error is None else _quote(str(error))


def _choice(payload: Any, data: str) -> dict[str, Any] | None:
    """The first choice of a completion (or chunk); ``None`` for a chunk without any."""
    if not isinstance(payload, dict):
        raise _malformed("expected a JSON object", data)
    message = _endpoint_error(payload) if "error" in payload else None
    if message is not None:
        raise AssistantError("ai_failed", f"the AI endpoint reported an error: {message}")
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise _malformed("expected 'choices'", data)
    # No choice: a chunk carrying usage or content-filter results only.
    if not choices:
        return None
    if not isinstance(choices[0], dict):
        raise _malformed("expected a choice object", data)
    return choices[0]


def _content(part: Any, data: str) -> str:
    if part is None:
        return ""  # the first chunk names the role only; the last one, the finish reason
    if not isinstance(part, dict):
        raise _malformed("expected a message object", data)
    content = part.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise _malformed("expected the content as a string", data)
    return content


async def _read_stream(
    response: httpx.Response, config: AssistantConfig, on_delta: Callable[[str], None] | None
) -> str:
    events = _EventStream(max_line=config.max_line)
    answer = _Answer(config.max_answer)
    seen = False

    def take(datas: list[str]) -> bool:
        """Add the text of these events to the answer; return whether it is complete."""
        nonlocal seen
        fresh: list[str] = []
        done = False
        for data in datas:
            seen = True
            if data.strip() == "[DONE]":
                done = True
                break
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise _malformed("expected JSON after 'data:'", data) from None
            choice = _choice(payload, data)
            if choice is None:
                continue
            text = _content(choice.get("delta"), data)
            if text:
                fresh.append(answer.add(text))
            if choice.get("finish_reason"):
                answer.finish_reason = str(choice["finish_reason"])
        # One push per read, however many events it held: as live, with fewer events.
        delta = "".join(fresh)
        if delta and on_delta is not None:
            on_delta(delta)
        return done

    async for chunk in response.aiter_bytes():
        if take(events.feed(chunk)):
            return answer.text()
    # The endpoint closed: an event without its blank line still counts.
    if take(events.close()):
        return answer.text()
    if not seen:
        kind = response.headers.get("content-type", "no content type")
        raise AssistantError(
            "ai_failed",
            f"the AI endpoint's answer was neither an event stream nor JSON ({_quote(kind, 60)}): "
            "is ENLACE_AI_URL the base URL of a Chat Completions API?",
        )
    if answer.finish_reason is None:
        # Without [DONE] or a finish reason, the answer may lack its end: refuse it.
        raise AssistantError("ai_failed", "the AI endpoint ended its stream before the answer")
    return answer.text()


async def _read_body(response: httpx.Response, limit: int | None) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if limit is not None and len(body) > limit:
            return bytes(body[:limit])
    return bytes(body)


async def _read_json(
    response: httpx.Response, config: AssistantConfig, on_delta: Callable[[str], None] | None
) -> str:
    limit = config.max_line
    body = await _read_body(response, None if limit is None else limit + 1)
    if limit is not None and len(body) > limit:
        raise AssistantError("ai_failed", f"the AI endpoint's answer exceeds {limit} bytes")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _malformed("expected JSON", body) from None
    choice = _choice(payload, body.decode(errors="replace"))
    answer = _Answer(config.max_answer)
    if choice is not None:
        answer.add(_content(choice.get("message"), "a completion"))
        reason = choice.get("finish_reason")
        answer.finish_reason = str(reason) if reason else None
    text = answer.text()
    if on_delta is not None:
        on_delta(text)  # the whole answer at once: the stream's one fragment
    return text


async def _http_error(response: httpx.Response, config: AssistantConfig) -> AssistantError:
    status = f"HTTP {response.status_code}"
    if response.reason_phrase:
        status += f" {response.reason_phrase}"
    body = await _read_body(response, _MAX_ERROR_BODY)
    try:
        message = _endpoint_error(orjson.loads(body))
    except orjson.JSONDecodeError:
        message = None
    if message is None:
        message = _quote(body.decode(errors="replace")) if body.strip() else ""
    if config.key:
        message = message.replace(config.key, "***")  # some endpoints echo a wrong key
    text = f"the AI endpoint answered {status}" + (f": {message}" if message else "")
    if response.status_code in (401, 403):
        text += " (check ENLACE_AI_KEY)"
    elif response.status_code == 404:
        text += " (check ENLACE_AI_URL, the API's base URL, and ENLACE_AI_MODEL)"
    elif response.is_redirect:
        text += f" (check ENLACE_AI_URL: it moved to {response.headers.get('location', '?')})"
    return AssistantError("ai_failed", text)


def _reason(exc: BaseException) -> str:
    """What the operating system said, from deep in a connection error's causes."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno:
            # The errno's own words: asyncio's messages also repeat the address.
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building a context loads the CA bundle (tens of ms): once, for every question.
    import httpx  # noqa: PLC0415 - see complete()

    return httpx.create_ssl_context()


async def complete(
    config: AssistantConfig,
    messages: list[dict[str, str]],
    *,
    on_delta: Callable[[str], None] | None = None,
) -> str:
    """Ask the endpoint of ``config`` for the next message after ``messages``; return its text.

    ``messages`` are Chat Completions messages (``{"role": ..., "content":
    ...}``). The answer is requested as a stream; ``on_delta`` is called with
    each new fragment of text as it arrives (an endpoint that answers with
    plain JSON gives one fragment). The text returned is the whole answer,
    stripped, with control characters removed. Raises :class:`AssistantError`
    if no usable answer came, within the config's timeouts and limits.
    """
    # Imported here: httpx costs ~0.1 s at start-up, and a server without an
    # endpoint, or one nobody asks, never needs it.
    import httpx  # noqa: PLC0415

    timeout = httpx.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=config.connect_timeout,
        pool=config.connect_timeout,
    )
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream, application/json",
        # A compressed stream arrives in bursts, and could inflate past our limits.
        "Accept-Encoding": "identity",
    }
    if config.key:
        headers["Authorization"] = f"Bearer {config.key}"
    body = orjson.dumps({"model": config.model, "messages": messages, "stream": True})
    host = urllib.parse.urlsplit(config.url).netloc
    try:
        async with (
            asyncio.timeout(config.total_timeout),
            httpx.AsyncClient(timeout=timeout, verify=_tls()) as client,
            client.stream("POST", config.endpoint, content=body, headers=headers) as response,
        ):
            if response.status_code != 200:
                raise await _http_error(response, config)
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "application/json":
                return await _read_json(response, config, on_delta)
            return await _read_stream(response, config, on_delta)
    except TimeoutError:
        raise AssistantError(
            "ai_failed",
            f"the AI endpoint did not finish its answer within {config.total_timeout:g} s",
        ) from None
    except httpx.ConnectTimeout:
        raise AssistantError(
            "ai_failed",
            f"the AI endpoint at {host} did not accept a connection within "
            f"{config.connect_timeout:g} s",
        ) from None
    except httpx.ReadTimeout:
        raise AssistantError(
            "ai_failed", f"the AI endpoint went silent for {config.read_timeout:g} s"
        ) from None
    except httpx.TimeoutException:
        raise AssistantError(
            "ai_failed", f"the AI endpoint at {host} did not take the question in time"
        ) from None
    except httpx.ConnectError as exc:
        raise AssistantError(
            "ai_failed", f"cannot connect to the AI endpoint at {host}: {_reason(exc)}"
        ) from None
    except httpx.HTTPError as exc:
        raise AssistantError(
            "ai_failed", f"the connection to the AI endpoint at {host} failed: {_reason(exc)}"
        ) from None
