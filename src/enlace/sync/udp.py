"""The thread runtime's UDP server: one thread receiving and answering datagrams.

UDP has no connections, so there is nothing to bound per client: each datagram
is answered on its own (see :func:`enlace.services.base.answer_datagram` for
the size rules).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

from enlace.exceptions import EnlaceError
from enlace.limits import MAX_DATAGRAM
from enlace.logs import logger_for
from enlace.policy import ConnectionPolicy
from enlace.services.base import DatagramService, answer_datagram
from enlace.sockets import listen_udp, peer_address

__all__ = ["DatagramServer"]

_RECEIVE_BUFFER = 65536  # the largest UDP payload, so oversize datagrams are measured, not cut


class DatagramServer:
    """Serve a :class:`~enlace.services.base.DatagramService` from one thread."""

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
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the real port when 0 was asked for)."""
        if self._sock is None:
            raise EnlaceError("the server is not started")
        return peer_address(self._sock.getsockname())

    def start(self) -> None:
        """Bind and start answering in a background thread; returns at once."""
        if self._sock is not None:
            return
        self._sock = listen_udp(self.host, self.port)
        self._sock.setblocking(False)
        self._thread = threading.Thread(
            target=self._loop, name=f"enlace-{self.service.name}-udp", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        """Start if needed, then block until :meth:`shutdown` is called."""
        self.start()
        self._stopped.wait()

    def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop answering and close the socket (UDP has nothing to drain)."""
        if self._thread is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self._thread.join()
            self._thread = None
        self._wake_r.close()
        self._wake_w.close()
        self._stopped.set()

    def __enter__(self) -> DatagramServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def _loop(self) -> None:
        sock = self._sock
        assert sock is not None
        buffer = bytearray(_RECEIVE_BUFFER)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ, "datagram")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        return
                    self._receive(sock, buffer)
        finally:
            selector.close()
            sock.close()

    def _receive(self, sock: socket.socket, buffer: bytearray) -> None:
        # Bounded batch per wake-up, so shutdown is never starved by a flood.
        for _ in range(64):
            try:
                size, address = sock.recvfrom_into(buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                # On Linux an ICMP "port unreachable" from an earlier reply surfaces here.
                self.logger.debug("recvfrom failed: %s", exc)
                continue
            peer = peer_address(address)
            if not self.policy.admit_datagram(peer, self.logger):
                continue
            try:
                reply = answer_datagram(
                    self.service, bytes(buffer[:size]), peer, max_datagram=self.max_datagram
                )
                if reply is not None:
                    sock.sendto(reply, address)
            except OSError as exc:
                self.logger.debug("cannot answer %s: %s", peer, exc)
            except Exception:
                self.logger.exception("service error on a datagram from %s", peer)
