"""The asyncio runtime's UDP server, built on :class:`asyncio.DatagramProtocol`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import cast

from enlace.exceptions import EnlaceError
from enlace.limits import MAX_DATAGRAM
from enlace.logs import logger_for
from enlace.policy import ConnectionPolicy
from enlace.services.base import DatagramService, answer_datagram
from enlace.sockets import listen_udp, peer_address

__all__ = ["DatagramServer"]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, server: DatagramServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not every loop's datagram transport subclasses DatagramTransport (3.11's does not).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        server = self._server
        peer = peer_address(addr)
        if not server.policy.admit_datagram(peer, server.logger):
            return
        try:
            reply = answer_datagram(server.service, data, peer, max_datagram=server.max_datagram)
        except Exception:
            server.logger.exception("service error on a datagram from %s", peer)
            return
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # On Linux an ICMP "port unreachable" from an earlier reply surfaces here.
        self._server.logger.debug("datagram error: %s", exc)


class DatagramServer:
    """Serve a :class:`~enlace.services.base.DatagramService` on the running event loop."""

    def __init__(
        self,
        service: DatagramService,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_datagram: int | None = MAX_DATAGRAM,
        allow: list[str] | None = None,
        policy: ConnectionPolicy | None = None,
    ) -> None:
        self.service = service
        #: Which sources are answered (the per-address cap has no meaning for UDP).
        self.policy = policy or ConnectionPolicy(allow, max_per_ip=None)
        self.host = host
        self.port = port
        self.max_datagram = max_datagram
        self.logger = logger_for(service.name)
        self._transport: asyncio.DatagramTransport | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the real port when 0 was asked for)."""
        if self._transport is None:
            raise EnlaceError("the server is not started")
        return peer_address(self._transport.get_extra_info("sockname"))

    async def start(self) -> None:
        """Bind and start answering; returns once the port is open."""
        if self._transport is not None:
            return
        self._stopped = asyncio.Event()
        sock = listen_udp(self.host, self.port)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Endpoint(self), sock=sock)
        self._transport = transport

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`shutdown` is called."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop answering and close the socket (UDP has nothing to drain)."""
        if self._transport is not None:
            self._transport.close()
        if self._stopped is not None:
            self._stopped.set()

    async def __aenter__(self) -> DatagramServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
