"""What a service is, independent of the runtime that runs it.

A *stream service* (TCP) is a factory of :class:`StreamHandler` objects, one
per connection. The runtime calls the handler's methods as bytes arrive and
gives it a :class:`Transport` to answer through; the handler never touches a
socket, a thread or an event loop, so the same service runs unchanged on
:class:`enlace.sync.Server` and :class:`enlace.asyncio.Server`.

A *datagram service* (UDP) maps one request datagram to at most one reply.

The callback model is asyncio's and Twisted's ``Protocol``: it is the smallest
interface both a thread-per-client loop and an event loop can drive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from enlace.logs import logger_for

__all__ = ["DatagramService", "StreamHandler", "StreamService", "Transport", "answer_datagram"]


class Transport(Protocol):
    """A connection as a handler sees it.

    :meth:`write` and :meth:`close` may be called from any thread (to push to
    another client, say); the other methods from the handler's callbacks.
    """

    @property
    def peer(self) -> tuple[str, int]:
        """The client's address, as ``(host, port)``."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending; replies given during one callback go out together."""
        ...

    def close(self) -> None:
        """Close after everything written so far has been sent; idempotent."""
        ...

    def pause_reading(self) -> None:
        """Stop delivering data until :meth:`resume_reading` (the client is then throttled)."""
        ...

    def resume_reading(self) -> None:
        """Deliver data again after :meth:`pause_reading`."""
        ...

    def call_async(
        self,
        work: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run the coroutine ``work``, then call ``done(result, error)``.

        ``done`` runs like the other callbacks of this connection: never
        concurrently with them, and with its writes sent together. The asyncio
        runtime runs ``work`` as a task and returns at once (other connections
        go on meanwhile); the thread runtime runs it to completion on a shared
        helper event loop, blocking only this connection's thread.
        """
        ...


class StreamHandler:
    """One connection's behaviour. Override the callbacks you need.

    Callbacks of one connection never run concurrently: the thread runtime calls
    them from the connection's own thread, the asyncio runtime from the loop.
    An exception escaping a callback is logged and closes that connection only.
    """

    transport: Transport

    def connection_made(self, transport: Transport) -> None:
        """The connection is open; ``transport`` is how to answer."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Bytes arrived: any amount, cut anywhere (TCP has no message boundaries)."""

    def eof_received(self) -> None:
        """The client finished sending (it closed, or shut down its writing side).

        The default closes the connection once pending replies are sent, which
        is also right for a half-closed client: it still reads everything.
        """
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone; ``exc`` says why if it was not a clean close."""


class StreamService(ABC):
    """A TCP service: a name and a factory of per-connection handlers."""

    #: Short name for logs and the ``enlace`` command, e.g. ``"echo"``.
    name: str = "service"

    @abstractmethod
    def handler(self) -> StreamHandler:
        """Return a fresh handler for a new connection."""

    def refusal(self, reason: str) -> bytes:
        """Bytes sent to a client that is turned away (for example, over capacity).

        The default is one text line; framed services override it to answer in frames.
        """
        return f"ERR busy: {reason}\r\n".encode()


class DatagramService(ABC):
    """A UDP service: one datagram in, at most one datagram back."""

    name: str = "service"

    @abstractmethod
    def reply(self, data: bytes, peer: tuple[str, int]) -> bytes | None:
        """Return the reply to ``data`` from ``peer``, or ``None`` for no reply.

        The runtime never sends a reply larger than its request (see
        :func:`answer_datagram`), so a spoofed source address cannot turn the
        server into an amplifier.
        """

    def error(self, message: str) -> bytes:
        """The reply to a datagram the runtime refused (for example, too large)."""
        return f"ERR {message}".encode()


def answer_datagram(
    service: DatagramService, data: bytes, peer: tuple[str, int], *, max_datagram: int | None
) -> bytes | None:
    """Everything both runtimes do with one datagram: limits, the service, the reply rule.

    A datagram over ``max_datagram`` gets the service's error reply instead of
    an answer. A reply larger than its request is dropped and logged: UDP
    source addresses can be forged, and a server that answers small requests
    with large replies can be aimed at a victim as an amplifier.
    """
    if max_datagram is not None and len(data) > max_datagram:
        return service.error(
            f"datagram_too_large: {len(data)} bytes exceeds the {max_datagram}-byte limit"
        )[: len(data)]
    reply = service.reply(data, peer)
    if reply is not None and len(reply) > len(data):
        logger_for(service.name).warning(
            "dropped a %d-byte reply to a %d-byte datagram: a reply may not exceed its request",
            len(reply),
            len(data),
        )
        return None
    return reply
