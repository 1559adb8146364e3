"""The token step of a message server started with ``--token``: sans-I/O.

A client's first non-empty payload (keep-alives before it are dropped) must
be the ``/token SECRET`` command, as a text line, as a frame, or as the same
command in JSON
(``{"id": 1, "cmd": "token", "args": ["SECRET"]}``); it is the protocol's own
command syntax, so ``nc`` users type it and JSON clients get an id'ed reply.
:class:`TokenGate` holds the bytes until that first payload is complete
(at most ``max_token`` of them), compares the secret in constant time, and
says what to answer and which bytes (those after the token) belong to the
service behind it. Nothing else of the client reaches the service before.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from enlace.limits import MAX_TOKEN
from enlace.protocol.envelope import (
    BadRequest,
    JsonRequest,
    ServerConnection,
    TextCommand,
    parse_payload,
    tls_hello_refusal,
)

__all__ = ["TokenGate", "Verdict"]

_HEADER = 4


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gate decided about a client."""

    accepted: bool
    #: The answer to send: the token's reply, or the error before the close.
    reply: bytes
    #: Bytes the client sent after its token, for the service behind the gate.
    rest: bytes = b""
    #: Why it was refused, for the log; empty when accepted.
    reason: str = ""


class TokenGate:
    """Checks one client's first payload against the server's token."""

    def __init__(self, token: str, *, max_token: int | None = MAX_TOKEN) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self._token = token.encode()
        self.max_token = max_token
        self._buffer = bytearray()
        # Only for encoding the answer in the client's kind (frame or line) and form.
        self._wire = ServerConnection(max_frame=None)
        #: The verdict, once there is one; later bytes are not the gate's business.
        self.verdict: Verdict | None = None

    def receive(self, data: bytes) -> Verdict | None:
        """Feed the client's bytes; return the verdict once the first payload is complete.

        Keep-alives (empty payloads) before it are dropped, as everywhere: the
        token is the first *non-empty* payload.
        """
        if self.verdict is not None:
            return self.verdict
        self._buffer += data
        wire = self._wire
        if wire.kind == "unknown" and not wire.detect(data):
            return None  # nothing yet, or a lone 0x16 that the next byte explains
        if wire.tls_hello:
            # The message server's own answer, not token_required.
            refusal = tls_hello_refusal()
            return self._refuse(refusal, refusal.code, refusal.message, "TLS ClientHello")
        while True:
            cut = self._first_payload()
            if cut is None:
                return self.verdict  # more bytes needed, or refused as too long
            payload, rest = cut
            if payload:
                return self._check(payload, rest)
            del self._buffer[: len(self._buffer) - len(rest)]  # a keep-alive: no reply

    def _first_payload(self) -> tuple[bytes, bytes] | None:
        """The buffer's first payload and what follows it, or None if it is not whole."""
        limit = self.max_token
        if self._wire.kind == "framed":
            if len(self._buffer) < _HEADER:
                return None
            size = int.from_bytes(self._buffer[:_HEADER], "big")
            if limit is not None and size > limit:
                self._refuse(None, "token_too_long", f"the first frame is over {limit} B")
                return None
            if len(self._buffer) < _HEADER + size:
                return None
            payload, rest = self._buffer[_HEADER : _HEADER + size], self._buffer[_HEADER + size :]
        else:
            end = self._buffer.find(b"\n", 0, None if limit is None else limit + 2)
            if end == -1:
                if limit is not None and len(self._buffer) > limit + 1:
                    self._refuse(None, "token_too_long", f"the first line is over {limit} B")
                return None
            payload, rest = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
        return bytes(payload), bytes(rest)

    def _check(self, payload: bytes, rest: bytes) -> Verdict:
        request = parse_payload(payload, max_json=self.max_token)
        secret: object = None
        if isinstance(request, TextCommand) and request.name == "token":
            secret = request.rest
        elif isinstance(request, JsonRequest) and request.cmd == "token":
            if request.line is not None:
                secret = request.line
            elif request.args:
                secret = request.args[0]
        else:
            form_request = request if isinstance(request, JsonRequest | BadRequest) else None
            return self._refuse(
                form_request,
                "token_required",
                'this server needs a token first: send "/token SECRET"',
                "no token",
            )
        given = secret.encode() if isinstance(secret, str) else b""
        # Constant time: how long the comparison takes says nothing about the secret.
        if not hmac.compare_digest(given, self._token):
            return self._refuse(request, "bad_token", "wrong token", "wrong token")
        self.verdict = Verdict(True, self._wire.reply(request, "token accepted"), rest)
        self._buffer.clear()
        return self.verdict

    def _refuse(
        self,
        request: JsonRequest | TextCommand | BadRequest | None,
        code: str,
        message: str,
        reason: str = "",
    ) -> Verdict:
        reply = self._wire.error(request, code, message)
        self.verdict = Verdict(False, reply, reason=reason or message)
        self._buffer.clear()
        return self.verdict
