"""Opening sockets (listening, binding and connecting, with OSError translated), and lingering.

Both runtimes open their sockets here, so binding rules (address reuse, dual
stack for ``::``) and error messages are the same whichever runtime serves.
Every failure is raised as a :class:`~enlace.exceptions.NetworkError` whose
message names the address, e.g. ``cannot listen on 127.0.0.1:8000: address
already in use``. :func:`discard_input` is the blocking half of a lingering close.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

from enlace.exceptions import AddressError, translate_oserror
from enlace.limits import READ_SIZE

__all__ = ["connect_tcp", "discard_input", "listen_tcp", "listen_udp", "peer_address"]


_AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _resolve(
    host: str, port: int, kind: socket.SocketKind, *, passive: bool
) -> Sequence[_AddressInfo]:
    action = "listen on" if passive else "connect to"
    if not 0 <= port <= 65535:
        # getaddrinfo would silently wrap 70000 to 4464.
        raise AddressError(f"cannot {action} port {port}: ports go from 0 to 65535")
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=flags)
    except OSError as exc:
        raise translate_oserror(exc, action=action, host=host, port=port) from exc
    if not infos:
        raise AddressError(f"cannot resolve {host!r}: no addresses")
    return infos


def _bound_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    family, _, proto, _, address = _resolve(host, port, kind, passive=True)[0]
    sock = socket.socket(family, kind, proto)
    try:
        if kind == socket.SOCK_STREAM:
            # Lets a restarted server reuse its port while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            # "::" means every address: accept IPv4 too where the system allows it.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise translate_oserror(exc, action="listen on", host=host, port=port) from exc
    return sock


def listen_tcp(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """Return a listening TCP socket bound to ``host:port`` (port 0: any free port)."""
    sock = _bound_socket(host, port, socket.SOCK_STREAM)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise translate_oserror(exc, action="listen on", host=host, port=port) from exc
    return sock


def listen_udp(host: str, port: int) -> socket.socket:
    """Return a UDP socket bound to ``host:port`` (port 0: any free port)."""
    return _bound_socket(host, port, socket.SOCK_DGRAM)


def connect_tcp(host: str, port: int, *, timeout: float | None = 10.0) -> socket.socket:
    """Connect to ``host:port``, trying each address the name resolves to.

    ``timeout`` bounds the connection attempt only; the returned socket is blocking.
    """
    if not 0 < port <= 65535:
        raise AddressError(f"cannot connect to port {port}: ports go from 1 to 65535")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise translate_oserror(exc, action="connect to", host=host, port=port) from exc
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def discard_input(sock: socket.socket, *, timeout: float, max_bytes: int | None = None) -> None:
    """Read and drop what the peer still sends, until it closes, ``timeout`` or ``max_bytes``.

    The blocking half of a lingering close (Apache's, nginx's): after our last bytes
    and ``shutdown(SHUT_WR)``, closing with input unread would reset the connection
    and destroy those bytes in the peer's receive buffer. ``timeout`` covers all the
    reads, not each, so a peer that trickles bytes cannot stretch it. Raises OSError
    as ``recv`` does.
    """
    deadline = time.monotonic() + timeout
    discarded = 0
    while max_bytes is None or discarded < max_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        sock.settimeout(remaining)
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            return
        discarded += len(chunk)


def peer_address(address: object) -> tuple[str, int]:
    """Reduce a socket address (IPv4 pair or IPv6 4-tuple) to ``(host, port)``."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return (str(address), 0)
