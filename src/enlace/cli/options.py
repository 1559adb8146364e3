"""Command-line options shared by every server (address, runtime, limits, TLS, access)
and by every client (TLS, token)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from enlace.limits import (
    DRAIN_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_THREADS,
    MAX_PER_IP,
)
from enlace.policy import parse_network

__all__ = [
    "TOKEN_ENV",
    "access_options",
    "loop_option",
    "network",
    "optional_number",
    "port_number",
    "server_options",
    "tls_client_options",
    "tls_server_options",
    "token_option",
]

#: The environment variable a token is read from when ``--token`` is absent.
TOKEN_ENV = "ENLACE_TOKEN"  # noqa: S105 - the name of a variable, not a secret


def network(text: str) -> str:
    """An argparse type for ``--allow``: an address or a CIDR network."""
    try:
        parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def optional_number(kind: type[int] | type[float]) -> Callable[[str], int | float | None]:
    """An argparse type accepting a non-negative number, or ``none``/``off`` to disable."""

    def parse(text: str) -> int | float | None:
        if text.lower() in ("none", "off"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def port_number(text: str) -> int:
    """An argparse type for a TCP/UDP port, 0 to 65535."""
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, not {text!r}")
    return int(text)


def loop_option(parser: argparse.ArgumentParser) -> None:
    """``--loop``: which event loop the asyncio runtime runs on."""
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the asyncio runtime: uvloop is faster; auto uses it when "
        "installed (pip install 'enlace[fast]') and TLS is off, else asyncio's own (whose "
        "TLS is faster for small messages)",
    )


def server_options(
    parser: argparse.ArgumentParser, *, default_port: int, udp: bool, idle: bool = True
) -> None:
    """The options every server takes (``--host``, ``--port``, ``--runtime``, limits).

    ``idle=False`` leaves out ``--idle-timeout``, for a server with timeouts of its own.
    """
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 or :: to expose)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=default_port,
        help=f"port to listen on (default {default_port}; 0 picks a free one and prints it)",
    )
    parser.add_argument(
        "--runtime",
        choices=("asyncio", "threads"),
        default="asyncio",
        help="asyncio (one event loop) or threads (one thread per client); default asyncio",
    )
    loop_option(parser)
    access_options(parser, tcp=not udp)
    if udp:
        return
    tls_server_options(parser)
    parser.add_argument(
        "--max-connections",
        type=optional_number(int),
        default=argparse.SUPPRESS,  # absent: the runtime picks its own default
        metavar="N",
        help=f"connections served at once; past it clients get a 'busy' reply "
        f"(default {MAX_CONNECTIONS}, threads {MAX_CONNECTIONS_THREADS}; 'none' disables)",
    )
    if idle:
        parser.add_argument(
            "--idle-timeout",
            type=optional_number(float),
            default=IDLE_TIMEOUT,
            metavar="SECONDS",
            help="close a connection silent this long (default 300; 'none' disables)",
        )
    parser.add_argument(
        "--drain-timeout",
        type=optional_number(float),
        default=DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long open connections may finish (default 10)",
    )


def access_options(parser: argparse.ArgumentParser, *, tcp: bool = True) -> None:
    """``--allow CIDR`` (repeatable) and, for TCP, ``--max-per-ip N``."""
    parser.add_argument(
        "--allow",
        action="append",
        type=network,
        metavar="CIDR",
        help="serve only clients from this address or network (e.g. 10.0.0.0/8, ::1); "
        "repeatable; others are closed at once and logged (default: everyone)",
    )
    if tcp:
        parser.add_argument(
            "--max-per-ip",
            type=optional_number(int),
            default=MAX_PER_IP,
            metavar="N",
            help=f"connections one client address may hold at once; past it, the same "
            f"'busy' reply as --max-connections (default {MAX_PER_IP}; 'none' disables)",
        )


def tls_server_options(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert FILE --tls-key FILE``: serve TLS."""
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS with this PEM certificate (chain); see 'enlace cert' for a local one",
    )
    parser.add_argument(
        "--tls-key",
        metavar="FILE",
        help="the PEM private key of --tls-cert (default: read it from the --tls-cert file)",
    )


def tls_client_options(parser: argparse.ArgumentParser) -> None:
    """``--tls``, ``--ca FILE`` and ``--server-name NAME``: connect with TLS."""
    parser.add_argument(
        "--tls", action="store_true", help="connect with TLS, verifying the server's certificate"
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="with --tls: trust the certificates in this PEM file (e.g. one made by "
        "'enlace cert') instead of the system's trust store",
    )
    parser.add_argument(
        "--server-name",
        metavar="NAME",
        help="with --tls: the name the certificate must carry (default: the HOST connected to)",
    )


def token_option(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """``--token SECRET``, defaulting to the ENLACE_TOKEN environment variable."""
    if server:
        text = (
            "clients must send '/token SECRET' first (see docs/protocol.md); "
            f"default: ${TOKEN_ENV} if set, else no token"
        )
    else:
        text = f"present this token first (default: ${TOKEN_ENV} if set)"
    parser.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV) or None, metavar="SECRET", help=text
    )
