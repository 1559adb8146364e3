"""Command-line options shared by every server: address, runtime, limits."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from enlace.limits import (
    DRAIN_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_THREADS,
)

__all__ = ["loop_option", "optional_number", "port_number", "server_options"]


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
        "installed (pip install 'enlace[fast]'), else asyncio's own",
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
    if udp:
        return
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
