"""A local stand-in for an OpenAI-compatible Chat Completions endpoint, for the tests.

No model runs in the tests (none could on these machines). This server speaks
the real wire format over real HTTP/1.1 on 127.0.0.1: ``POST
/v1/chat/completions`` with ``"stream": true`` gets Server-Sent Events
(``data: {chunk}`` lines, ``data: [DONE]`` at the end), chunked or ended by
closing the connection; without it, one JSON completion. Each test scripts the
answer with a :class:`Reply`: the text fragments, threading events to wait
for between them (so a test decides when the next fragment leaves, instead of
sleeping), an error status, a hang, a trickle of keep-alives, or raw bytes.
Every request is recorded (:attr:`FakeChatCompletions.requests`) so tests can
check the model, the messages and the ``Authorization`` header.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["FakeChatCompletions", "Recorded", "Reply", "refusing_url"]

# The longest a scripted step waits for its test: a failed test must not leave a
# thread behind for long, and a passing one never waits near this.
_STEP_TIMEOUT = 10.0
# How often a trickle sends a keep-alive comment: often enough that no read timeout fires.
_TRICKLE_EVERY = 0.05


@dataclass
class Reply:
    """What the server answers to the next requests."""

    #: Text fragments of the answer, one event each, and :class:`threading.Event`\\ s to
    #: wait for before going on (a test sets one when it has seen what came before).
    steps: Sequence[str | threading.Event] = ("Hola",)
    #: Another status answers with an OpenAI-shaped error carrying ``error``.
    status: int = 200
    error: str = "something went wrong"
    #: ``None``: as the request asks (it always asks for a stream); ``False``: plain JSON.
    stream: bool | None = None
    #: End the stream with ``data: [DONE]``; ``finish_reason`` goes in the last chunk.
    done: bool = True
    finish_reason: str | None = "stop"
    #: How the body ends: ``chunked`` transfer coding, or closing the connection.
    framing: Literal["chunked", "close"] = "chunked"
    newline: bytes = b"\n"
    #: Send these bytes as the body instead of an answer (malformed streams).
    raw: Sequence[bytes] | None = None
    content_type: str = "text/event-stream"
    #: Read the request, then send nothing until the server stops.
    hang: bool = False
    #: Send the head, then keep-alive comments until the server stops: never an answer.
    trickle: bool = False


@dataclass
class Recorded:
    """A request the server received."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, fake: FakeChatCompletions) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) breaks our writes: expected, not news.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        size = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(size)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unparsed": raw.decode(errors="replace")}
        fake.requests.append(
            Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        reply = fake.reply
        self.close_connection = True
        if reply.hang:
            fake.closing.wait(_STEP_TIMEOUT)
            return
        if self.path != "/v1/chat/completions":
            self._json(404, _error(f"no route {self.path}", "invalid_request_error"))
        elif reply.status != 200:
            self._json(reply.status, _error(reply.error, "server_error"))
        elif reply.raw is not None:
            self._head(reply)
            for piece in reply.raw:
                self._send(reply, piece)
            self._end(reply)
        elif reply.trickle:
            self._head(reply)
            while not fake.closing.wait(_TRICKLE_EVERY):
                self._send(reply, b": keep-alive" + reply.newline * 2)
        elif reply.stream is False or not body.get("stream"):
            self._json(200, _completion(fake, body, reply))
        else:
            self._stream(fake, body, reply)

    def _stream(self, fake: FakeChatCompletions, body: dict[str, Any], reply: Reply) -> None:
        self._head(reply)
        self._event(reply, _chunk(fake, body, {"role": "assistant", "content": ""}, None))
        for step in reply.steps:
            if isinstance(step, threading.Event):
                if not fake.wait(step):
                    return
            else:
                self._event(reply, _chunk(fake, body, {"content": step}, None))
        if reply.finish_reason is not None:
            self._event(reply, _chunk(fake, body, {}, reply.finish_reason))
        if reply.done:
            self._send(reply, b"data: [DONE]" + reply.newline * 2)
        self._end(reply)

    def _event(self, reply: Reply, payload: dict[str, Any]) -> None:
        self._send(reply, b"data: " + json.dumps(payload).encode() + reply.newline * 2)

    def _head(self, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Cache-Control", "no-cache")
        if reply.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, reply: Reply, data: bytes) -> None:
        if reply.framing == "chunked":
            data = b"%X\r\n%s\r\n" % (len(data), data)
        self.wfile.write(data)
        self.wfile.flush()

    def _end(self, reply: Reply) -> None:
        if reply.framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _chunk(
    fake: FakeChatCompletions, body: dict[str, Any], delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{len(fake.requests)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "?"),
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _completion(fake: FakeChatCompletions, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    text = "".join(step for step in reply.steps if isinstance(step, str))
    return {
        "id": f"chatcmpl-{len(fake.requests)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "?"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FakeChatCompletions:
    """The server, started on a free port of 127.0.0.1 in a thread; use it as a context manager."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.requests: list[Recorded] = []
        self.closing = threading.Event()
        self._server = _Server(self)
        # A short poll, so that stopping takes milliseconds instead of the default 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_TRICKLE_EVERY,), daemon=True
        )

    @property
    def url(self) -> str:
        """The API's base URL, as ``ENLACE_AI_URL`` takes it."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def wait(self, step: threading.Event) -> bool:
        """Wait for a test's go-ahead; ``False`` if the server stops first."""
        deadline = time.monotonic() + _STEP_TIMEOUT
        # Polled in short waits so that stopping the server also ends this one.
        while not step.wait(_TRICKLE_EVERY):
            if self.closing.is_set() or time.monotonic() > deadline:
                return False
        return True

    def __enter__(self) -> FakeChatCompletions:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def refusing_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens, so connecting is refused."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
