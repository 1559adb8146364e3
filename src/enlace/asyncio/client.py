"""The asyncio runtime's message client, built on :class:`asyncio.Protocol`.

The same API as :class:`enlace.sync.Client`, with ``await``::

    async with Client("127.0.0.1", 8080) as client:
        print(await client.request("upper", "hola"))  # HOLA
        async for event in client.events():
            print(event)
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import AsyncIterator, Callable
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
from enlace.limits import MAX_EVENTS, MAX_FRAME, REQUEST_TIMEOUT, TLS_HANDSHAKE_TIMEOUT
from enlace.logs import lost_reason
from enlace.protocol.client import ClientConnection, Event, EventQueue, Reply, Text, as_event
from enlace.tls import handshake_failure, resolve_context

__all__ = ["Client"]

logger = logging.getLogger("enlace.client")
EventCallback = Callable[[dict[str, Any]], None]


class _Listener(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        client = self._client
        try:
            items = client._protocol.receive(data)
        except RemoteProtocolError as exc:
            client._lost(f"the server broke the protocol: {exc}")
            if client._transport is not None:
                client._transport.abort()
            return
        for item in items:
            client._dispatch(item)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = "the server closed the connection"
        if exc is not None:
            reason = lost_reason(exc)
        self._client._lost(reason)


class Client:
    """A connection to a message server: ``await Client.connect(...)`` or ``async with``."""

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
        self._ssl = resolve_context(ssl)
        self._server_hostname = server_hostname
        self._handshake_timeout = handshake_timeout
        self._token = token
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.on_event = on_event
        #: Called once with the reason when the connection ends.
        self.on_close = on_close
        self.max_events = max_events
        self._protocol = ClientConnection(max_frame=max_frame)
        self._protocol.trace = trace
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._events = EventQueue(max_events)
        self._arrived = asyncio.Event()
        self._closed_reason: str | None = None
        self._last_text = ""

    @classmethod
    async def connect(cls, host: str, port: int, **options: Any) -> Client:
        """Create a client and connect it."""
        client = cls(host, port, **options)
        await client.open()
        return client

    async def open(self) -> None:
        """Connect (``async with`` and :meth:`connect` call this)."""
        loop = asyncio.get_running_loop()
        where = format_address(self.host, self.port)
        tls: dict[str, Any] = {}
        if self._ssl is not None:
            tls = {
                "ssl": self._ssl,
                "server_hostname": self._server_hostname or self.host,
                "ssl_handshake_timeout": self._handshake_timeout,
            }
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Listener(self), self.host, self.port, **tls
                )
        except TimeoutError as exc:
            raise Timeout(f"cannot connect to {where}: timed out") from exc
        except _ssl.SSLError as exc:
            raise handshake_failure(exc, where) from exc
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            if self._ssl is None:
                raise translate_oserror(
                    exc, action="connect to", host=self.host, port=self.port
                ) from exc
            raise handshake_failure(exc, where) from exc
        except OSError as exc:
            raise translate_oserror(
                exc, action="connect to", host=self.host, port=self.port
            ) from exc
        self._transport = transport
        if self._token is not None:
            await self._present_token(self._token)

    @property
    def dropped_events(self) -> int:
        """Events dropped because nobody consumed them and ``max_events`` were queued."""
        return self._events.dropped

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def request(self, cmd: str, *args: Any, timeout: float | None = -1.0) -> Any:
        """Send the command ``cmd`` with ``args``; return its result or raise.

        Raises :class:`RequestError` (with the server's ``code``) for an error
        reply, :class:`Timeout` after ``timeout`` seconds (default: the
        client's ``request_timeout``), :class:`ConnectionClosed` if the
        connection ends first.
        """
        return await self._call(cmd, list(args), None, timeout)

    async def _call(
        self, cmd: str, args: list[Any], line: str | None, timeout: float | None
    ) -> Any:
        limit = self.request_timeout if timeout is not None and timeout < 0 else timeout
        self._check_open()
        request_id, data = self._protocol.request(cmd, args, line)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._write(data)
            async with asyncio.timeout(limit):
                reply = await future
        except TimeoutError:
            raise Timeout(f"no reply to /{cmd} within {limit} s") from None
        finally:
            self._pending.pop(request_id, None)
        if not reply.ok:
            raise RequestError(reply.code or "error", reply.message)
        return reply.result

    async def command(self, line: str, *, timeout: float | None = -1.0) -> Any:
        """Run a typed command line such as ``/upper hola servidor``; return its result.

        The server splits the line as if a person typed it (the last argument
        takes the rest of the line). Text without a leading ``/`` is a chat
        message (the command ``/say``). Raises as :meth:`request` does.
        """
        if line.startswith("/") and not line.startswith("//"):
            name, _, rest = line[1:].partition(" ")
        else:
            name, rest = "say", line[1:] if line.startswith("//") else line
        return await self._call(name, [], rest.strip() if name != "say" else rest, timeout)

    async def send(self, text: str) -> None:
        """Send one text payload (a ``/command`` or a chat message) without waiting."""
        self._write(self._protocol.payload(text.encode()))

    async def events(self, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield pushed events as they arrive; stops when the connection closes,
        or when none arrives for ``timeout`` seconds."""
        while True:
            if not self._events and self._closed_reason is None:
                self._arrived.clear()
                try:
                    async with asyncio.timeout(timeout):
                        await self._arrived.wait()
                except TimeoutError:
                    return
            event = self._events.get()
            if event is None:
                return
            yield event

    async def close(self) -> None:
        """Close the connection; pending requests fail with ConnectionClosed."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._lost("closed by the client")

    async def __aenter__(self) -> Client:
        if self._transport is None:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------

    async def _present_token(self, token: str) -> None:
        # See enlace.sync.Client: first, as a JSON request, so a wrong token fails here.
        try:
            await self.request("token", token)
        except RequestError as exc:
            if exc.code != "unknown_command":
                await self.close()
                raise
        except BaseException:
            await self.close()
            raise

    def _check_open(self) -> None:
        if self._transport is None:
            raise ConnectionClosed("not connected: use 'async with' or Client.connect()")
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)

    def _write(self, data: bytes) -> None:
        self._check_open()
        assert self._transport is not None
        self._transport.write(data)

    def _lost(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        if self._last_text:
            reason += f" (it said: {self._last_text})"
        self._closed_reason = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(reason))
        self._arrived.set()
        if self.on_close is not None:
            try:
                self.on_close(reason)
            except Exception:
                logger.exception("error in the on_close callback")

    def _dispatch(self, item: Reply | Event | Text) -> None:
        if isinstance(item, Reply) and isinstance(item.id, int):
            future = self._pending.get(item.id)
            if future is not None:
                if not future.done():
                    future.set_result(item)
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
        if self._events.put(event):
            logger.warning("dropping events: %d queued, none consumed", self.max_events)
        self._arrived.set()
