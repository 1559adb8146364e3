"""``--token``: a stream service that lets a client through only after the right token.

:class:`TokenService` wraps any :class:`StreamService` (the message server,
the chat). Its handler feeds the client's first bytes to a
:class:`~enlace.protocol.token.TokenGate`; only once the token is right does
it create the wrapped service's handler and hand it the connection and the
bytes that followed the token, unchanged, so the wrapped handler sees the
client's first real byte (and tells framed from line clients as usual). A
refused client never reaches the wrapped service: it gets one error and,
``fail_delay`` seconds later, a close, which slows down guessing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from enlace.addresses import format_address
from enlace.limits import MAX_TOKEN, TOKEN_FAIL_DELAY
from enlace.logs import logger_for
from enlace.protocol.token import TokenGate
from enlace.services.base import StreamHandler, StreamService, Transport

__all__ = ["TokenService"]


class _TokenHandler(StreamHandler):
    def __init__(self, service: TokenService) -> None:
        self._service = service
        self._gate = TokenGate(service.token, max_token=service.max_token)
        self._inner: StreamHandler | None = None
        self._refused = False

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.data_received(data)
            return
        if self._refused:
            return  # waiting out the delay; nothing the client says matters now
        verdict = self._gate.receive(data)
        if verdict is None:
            return
        self.transport.write(verdict.reply)
        if not verdict.accepted:
            self._refuse(verdict.reason)
            return
        self._inner = inner = self._service.inner.handler()
        inner.connection_made(self.transport)
        if verdict.rest:
            inner.data_received(verdict.rest)

    def eof_received(self) -> None:
        if self._inner is not None:
            self._inner.eof_received()
        elif not self._refused:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def _refuse(self, reason: str) -> None:
        self._refused = True
        service = self._service
        service.logger.info(
            "%s refused: %s", format_address(*self.transport.peer), reason or "no token"
        )
        self.transport.pause_reading()
        if service.fail_delay is None or service.fail_delay <= 0:
            self.transport.close()
            return
        # call_async runs the wait on either runtime without a timer API of our own.
        self.transport.call_async(
            asyncio.sleep(service.fail_delay), lambda _result, _error: self.transport.close()
        )


class TokenService(StreamService):
    """``inner``, open only to clients whose first payload is ``/token <token>``."""

    def __init__(
        self,
        inner: StreamService,
        token: str,
        *,
        max_token: int | None = MAX_TOKEN,
        fail_delay: float | None = TOKEN_FAIL_DELAY,
    ) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self.inner = inner
        self.token = token
        self.max_token = max_token
        self.fail_delay = fail_delay
        self.name = inner.name
        self.logger = logger_for(inner.name)

    def handler(self) -> StreamHandler:
        return _TokenHandler(self)

    def refusal(self, reason: str) -> bytes:
        return self.inner.refusal(reason)

    def __getattr__(self, name: str) -> Any:
        # The command line and tests reach the wrapped service's own attributes
        # (sessions, hub ...) through the wrapper.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)
