"""Who may connect: an allow-list of networks and a cap on connections per IP address.

Every server checks a :class:`ConnectionPolicy` when it accepts, before any
handler exists: a client outside the allow-list is closed at once (and
logged), a client over its address's cap gets the service's refusal, as over
the server's global cap. Thread-safe: the thread runtime accepts on one thread
and releases on each connection's own.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterable

from enlace.addresses import format_address
from enlace.limits import MAX_PER_IP

__all__ = ["ConnectionPolicy", "client_ip", "parse_network"]

# UDP has no connection to close: a refused source is logged at most once a minute,
# and at most this many sources are remembered, so a spoofed flood cannot fill the log.
_DATAGRAM_LOG_INTERVAL = 60.0
_DATAGRAM_LOG_SOURCES = 1024

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> _Network:
    """``10.0.0.0/8``, ``::1`` or ``192.168.1.7`` as a network; ValueError with a clear message."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"bad network {text!r}: expected an address or CIDR such as 10.0.0.0/8 or ::1"
        ) from None


def client_ip(host: str) -> _Address | None:
    """The client's address, IPv4 if it came as ``::ffff:a.b.c.d`` on a dual-stack socket."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ConnectionPolicy:
    """An allow-list (``None``: everyone) and a per-address connection cap (``None``: none)."""

    def __init__(
        self,
        allow: Iterable[str | _Network] | None = None,
        *,
        max_per_ip: int | None = MAX_PER_IP,
        count_loopback: bool = False,
    ) -> None:
        self.allow: tuple[_Network, ...] | None = (
            None
            if allow is None
            else tuple(n if not isinstance(n, str) else parse_network(n) for n in allow)
        )
        self.max_per_ip = max_per_ip
        # This machine's own clients (tests, benchmarks, a local proxy) all share one
        # address; capping them would lower the global cap, and they are no stranger.
        self.count_loopback = count_loopback
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}

    def allowed(self, host: str) -> bool:
        """Whether ``host`` is inside the allow-list."""
        if self.allow is None:
            return True
        address = client_ip(host)
        return address is not None and any(address in network for network in self.allow)

    def acquire(self, host: str) -> str | None:
        """Count a connection from ``host``; return why it is refused, or None.

        A refused connection is not counted (do not :meth:`release` it). Loopback
        clients are not capped unless ``count_loopback``.
        """
        key = self._counted_key(host)
        if key is None:
            return None
        with self._lock:
            count = self._counts.get(key, 0)
            refused = self._over(key, count)
            if refused is None:
                self._counts[key] = count + 1
        return refused

    def refusal(self, host: str, *, pending: int = 0) -> str | None:
        """Why :meth:`acquire` would refuse ``host`` with ``pending`` more of its
        connections counted, or None; counts nothing (for a TLS server's decision before
        the handshake, with the handshakes in progress from ``host`` as ``pending``)."""
        key = self._counted_key(host)
        if key is None:
            return None
        with self._lock:
            return self._over(key, self._counts.get(key, 0) + pending)

    def _counted_key(self, host: str) -> str | None:
        """The key ``host`` is counted under, or None when it is not (loopback)."""
        address = client_ip(host)
        if address is not None and address.is_loopback and not self.count_loopback:
            return None
        return str(address or host)

    def _over(self, key: str, count: int) -> str | None:
        if self.max_per_ip is not None and count >= self.max_per_ip:
            return f"too many connections from {key} (limit {self.max_per_ip} per address)"
        return None

    def release(self, host: str) -> None:
        """A connection accepted by :meth:`acquire` ended."""
        key = str(client_ip(host) or host)
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)

    def count(self, host: str) -> int:
        """Connections from ``host`` right now."""
        with self._lock:
            return self._counts.get(str(client_ip(host) or host), 0)

    def admit_datagram(self, peer: tuple[str, int], logger: logging.Logger) -> bool:
        """Whether to answer a datagram from ``peer``; a refusal is logged (sparingly)."""
        if self.allowed(peer[0]):
            return True
        now = time.monotonic()
        with self._lock:
            last = self._logged.get(peer[0])
            if last is not None and now - last < _DATAGRAM_LOG_INTERVAL:
                return False
            if len(self._logged) >= _DATAGRAM_LOG_SOURCES:
                self._logged.clear()
            self._logged[peer[0]] = now
        logger.warning("%s refused: not in the allow-list (UDP)", format_address(*peer))
        return False
