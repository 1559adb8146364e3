"""Writing and reading ``HOST:PORT`` addresses, IPv6 literals included.

``[::1]:8080`` is the URL way of writing an IPv6 address with a port; enlace
prints addresses that way and accepts them on the command line.
"""

from __future__ import annotations

__all__ = ["format_address", "parse_address"]


def format_address(host: str, port: int) -> str:
    """Return ``host:port``, bracketing IPv6 literals: ``[::1]:8080``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT`` or (with ``default_port``) ``HOST``.

    Raises :class:`ValueError` with a message fit for a user.
    """
    host, sep, port_text = text.rpartition(":")
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest == "" and default_port is not None:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [HOST]:PORT")
        port_text = rest[1:]
    elif not sep or ":" in host:
        # No colon at all, or a bare IPv6 literal: there is no port in the text.
        if default_port is None:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT")
        return text, default_port
    if not host:
        raise ValueError(f"bad address {text!r}: missing host")
    # isdigit() alone accepts "²" and other non-ASCII digits that int() rejects or misreads.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad address {text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)
