"""The ``enlace`` command: ``up``, ``serve NAME``, ``connect``, ``send``, ``shell``, ``chat``,
``cert``.

Errors a user can cause (port in use, bad address, connection refused) print
one line, ``enlace: <what went wrong>``, on standard error and exit 1; usage
errors exit 2. No traceback reaches the user for those.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import ssl as _ssl
import sys
from pathlib import Path
from typing import Any

from enlace import __version__
from enlace.addresses import format_address, parse_address
from enlace.cli.catalog import CATALOG, ServiceEntry
from enlace.cli.cert import DEFAULT_DAYS, run_cert
from enlace.cli.chat_client import run_chat
from enlace.cli.connect import connect_tcp_stdio, connect_udp_stdio
from enlace.cli.message import run_send, run_shell
from enlace.cli.options import (
    access_options,
    loop_option,
    optional_number,
    server_options,
    tls_client_options,
    tls_server_options,
    token_option,
)
from enlace.cli.runner import Launch, Runtime, describe, loop_name, run_servers
from enlace.cli.web import WebApp, build_web
from enlace.exceptions import EnlaceError
from enlace.limits import DRAIN_TIMEOUT, IDLE_TIMEOUT, MAX_DATAGRAM, MAX_PER_IP
from enlace.services import DatagramService, StreamService
from enlace.services.chat import DEFAULT_ROOM, ChatService
from enlace.services.message import MessageService
from enlace.services.token import TokenService
from enlace.tls import client_context, server_context
from enlace.web import ServiceInfo

__all__ = ["main", "parser", "up_launches"]

_EXIT_ERROR = 1
_EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(
        prog="enlace",
        description="Client-server networking: classic socket services, clients, and more.",
    )
    parser.add_argument("--version", action="version", version=f"enlace {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="what to log on standard error (default info: one line per connection)",
    )
    # Also accepted after the command (`enlace serve echo --log-level warning`), where
    # people put it; SUPPRESS keeps the top-level default when it is absent there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help="what to log on standard error (default info: one line per connection)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        parents=[common],
        help="run every service at once",
        description="Run every service at once, print what listens where, "
        "and stop them all on Ctrl-C or SIGTERM.",
    )
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument(
        "--any-port",
        action="store_true",
        help="let the system pick free ports instead of the default ones",
    )
    up.add_argument(
        "--runtime",
        choices=("asyncio", "threads"),
        default="asyncio",
        help="asyncio (one event loop) or threads (one thread per client); default asyncio",
    )
    loop_option(up)
    access_options(up)
    tls_server_options(up)
    token_option(up, server=True)
    up.set_defaults(handler=_cmd_up)

    serve = commands.add_parser("serve", help="run one service", description="Run one service.")
    services = serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for entry in CATALOG.values():
        sub = services.add_parser(
            entry.name, help=entry.summary, description=entry.summary, parents=[common]
        )
        server_options(
            sub,
            default_port=entry.port,
            udp=entry.transport == "udp",
            idle=entry.idle_timeout,
        )
        entry.add_options(sub)
        sub.set_defaults(handler=_cmd_serve, entry=entry)

    connect = commands.add_parser(
        "connect",
        parents=[common],
        help="netcat-like client: stdin to the socket, the socket to stdout",
        description="Copy standard input to HOST PORT and what comes back to standard output. "
        "At end of input, TCP half-closes and still prints the rest of the reply.",
    )
    connect.add_argument("target", nargs="+", metavar="HOST PORT", help="HOST PORT or HOST:PORT")
    connect.add_argument("--udp", action="store_true", help="send each line as a UDP datagram")
    tls_client_options(connect)
    connect.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="UDP: after end of input, how long to wait for missing replies (default 1)",
    )
    connect.add_argument(
        "--connect-timeout",
        type=optional_number(float),
        default=10.0,
        metavar="SECONDS",
        help="TCP: give up connecting after this long (default 10)",
    )
    connect.set_defaults(handler=_cmd_connect)

    send = commands.add_parser(
        "send",
        parents=[common],
        help="send one request to a message server and print the reply",
        description="Send MESSAGE (a /command line, or chat text) to the message server at "
        "HOST:PORT and print the reply. Exit 1 if the reply is an error.",
    )
    send.add_argument("address", metavar="HOST:PORT")
    send.add_argument("message", metavar="MESSAGE", help='e.g. "/upper hola"')
    send.add_argument(
        "--json",
        action="store_true",
        help="print the JSON reply; MESSAGE may also be a JSON request object",
    )
    send.add_argument(
        "--timeout",
        type=optional_number(float),
        default=10.0,
        metavar="SECONDS",
        help="give up waiting for the reply after this long (default 10)",
    )
    send.add_argument("--trace", action="store_true", help="print every frame on standard error")
    tls_client_options(send)
    token_option(send, server=False)
    send.set_defaults(handler=_cmd_send)

    shell = commands.add_parser(
        "shell",
        parents=[common],
        help="interactive console for a message server",
        description="An interactive console: type /commands or chat text; pushed messages "
        "print above the line you are typing. Ctrl-D leaves.",
    )
    shell.add_argument("address", metavar="HOST:PORT")
    shell.add_argument("--trace", action="store_true", help="print every frame on standard error")
    tls_client_options(shell)
    token_option(shell, server=False)
    shell.set_defaults(handler=_cmd_shell)

    chat = commands.add_parser(
        "chat",
        parents=[common],
        help="terminal chat client for enlace serve chat",
        description="Chat in a room of the chat server at HOST:PORT: a status bar with the "
        "room and its members, a colour per nick, messages printed above the line you are "
        "typing. Text is "
        "sent to the room; /commands (/msg, /join, /who, /help ...) go to the server. If the "
        "connection is lost, it reconnects and rejoins by itself. Ctrl-D or /quit leaves. "
        "Without a terminal, it reads lines and prints events as text.",
    )
    chat.add_argument("address", metavar="HOST:PORT")
    chat.add_argument("--nick", required=True, metavar="NAME", help="your nickname")
    chat.add_argument(
        "--room",
        default=DEFAULT_ROOM,
        metavar="ROOM",
        help=f"room to join (default {DEFAULT_ROOM})",
    )
    chat.add_argument(
        "--retry",
        action="store_true",
        help="if the server does not answer at start-up, keep trying instead of exiting",
    )
    tls_client_options(chat)
    token_option(chat, server=False)
    chat.set_defaults(handler=_cmd_chat)

    cert = commands.add_parser(
        "cert",
        parents=[common],
        help="make a self-signed TLS certificate and key for local use",
        description="Write enlace-cert.pem and enlace-key.pem: a self-signed certificate "
        "for HOST... (default: localhost 127.0.0.1 ::1) and its key, then print the server "
        "and client flags that use them. Self-signed is fine on your own machines and a LAN "
        "whose clients get the file (--ca); for the public, use a public CA.",
    )
    cert.add_argument("hosts", nargs="*", metavar="HOST", help="names and addresses to certify")
    cert.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="where to write (default .)"
    )
    cert.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        help=f"how long it is valid (default {DEFAULT_DAYS})",
    )
    cert.add_argument("--force", action="store_true", help="replace existing files")
    cert.set_defaults(handler=_cmd_cert)
    return parser


def _launch(
    entry: ServiceEntry,
    args: argparse.Namespace,
    host: str,
    port: int,
    tls: _ssl.SSLContext | None,
    *,
    service: StreamService | DatagramService | WebApp | None = None,
) -> Launch:
    if service is None:
        service = entry.build(args)
    token = getattr(args, "token", None)
    if token and isinstance(service, MessageService):
        service = TokenService(service, token)
    return Launch(
        name=entry.name,
        service=service,
        host=host,
        port=port,
        max_connections=getattr(args, "max_connections", "default"),
        idle_timeout=getattr(args, "idle_timeout", IDLE_TIMEOUT),
        drain_timeout=getattr(args, "drain_timeout", DRAIN_TIMEOUT),
        max_datagram=getattr(args, "max_datagram", MAX_DATAGRAM),
        ssl=tls,
        allow=getattr(args, "allow", None),
        max_per_ip=getattr(args, "max_per_ip", MAX_PER_IP),
    )


def _server_tls(args: argparse.Namespace) -> _ssl.SSLContext | None:
    """The TLS context of ``--tls-cert/--tls-key``, loaded before anything listens."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None:
        if key is not None:
            raise EnlaceError("--tls-key needs --tls-cert")
        return None
    return server_context(cert, key)


def _warn_if_open(args: argparse.Namespace) -> None:
    """One line when a server is reachable from elsewhere with neither TLS nor a token."""
    if getattr(args, "tls_cert", None) or getattr(args, "token", None):
        return
    host = args.host
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(
            f"enlace: warning: listening on {host} without --tls-cert or --token: "
            "traffic is plain text and anyone who reaches the port can use it",
            file=sys.stderr,
            flush=True,
        )


def _tls_hint(args: argparse.Namespace, *, web: bool = False) -> str | None:
    cert = getattr(args, "tls_cert", None)
    if cert is None:
        return None
    if web:
        return f"  tls: https:// and wss://; browsers must trust {cert} if it is self-signed"
    return f"  tls: clients add --tls (and --ca {cert} if it is self-signed)"


def _engine(runtime: Runtime, args: argparse.Namespace) -> str:
    """``threads``, ``asyncio`` or ``asyncio/uvloop``, for the banner."""
    if runtime == "threads" or loop_name(args.loop) == "asyncio":
        return runtime
    return "asyncio/uvloop"


def _cmd_serve(args: argparse.Namespace) -> int:
    entry: ServiceEntry = args.entry
    runtime: Runtime = args.runtime

    def announce(started: list[tuple[Launch, tuple[str, int]]]) -> None:
        _warn_if_open(args)
        for launch, address in started:
            print(f"enlace: {describe(launch, address, _engine(runtime, args))}", flush=True)
            print(f"  try it: {_try_it(entry, address, args)}", flush=True)
            web = isinstance(launch.service, WebApp)
            if (hint := _tls_hint(args, web=web)) and launch.transport == "tcp":
                print(hint, flush=True)

    tls = _server_tls(args)
    _pick_loop_for_tls(args, tls)
    return run_servers(
        [_launch(entry, args, args.host, args.port, tls)], runtime, announce, loop=args.loop
    )


def _pick_loop_for_tls(args: argparse.Namespace, tls: _ssl.SSLContext | None) -> None:
    # Measured (benchmarks/run.py --tls): with TLS, asyncio's own loop serves small
    # messages about twice as fast as uvloop (64 B x 50 conns: 34k vs 17k req/s), while
    # uvloop leads by 15% only with 64 KiB messages. Messages here are mostly small.
    if tls is not None and args.loop == "auto":
        args.loop = "asyncio"


def up_launches(args: argparse.Namespace, tls: _ssl.SSLContext | None = None) -> list[Launch]:
    """What ``enlace up`` starts: every entry of the catalog that is part of it."""
    launches: list[Launch] = []
    chat: ChatService | None = None
    for entry in CATALOG.values():
        if not entry.in_up:
            continue
        # The web server's browser chat joins the chat entry's rooms: one ChatService,
        # so browser, `enlace chat` and nc users meet in the same rooms.
        service = build_web(args, chat) if entry.name == "web" else entry.build(args)
        if isinstance(service, ChatService):
            chat = service
        launches.append(
            _launch(
                entry, args, args.host, 0 if args.any_port else entry.port, tls, service=service
            )
        )
    return launches


def _cmd_up(args: argparse.Namespace) -> int:
    runtime: Runtime = args.runtime
    tls = _server_tls(args)
    _pick_loop_for_tls(args, tls)
    launches = up_launches(args, tls)

    def announce(started: list[tuple[Launch, tuple[str, int]]]) -> None:
        _warn_if_open(args)
        rows = [("service", "listens on", "try it")]
        for launch, address in started:
            entry = CATALOG[launch.name]
            rows.append(
                (
                    launch.name,
                    f"{launch.transport} {format_address(*address)}",
                    _try_it(entry, address, args),
                )
            )
        listed = [
            ServiceInfo(launch.name, launch.transport, format_address(*address), row[2])
            for (launch, address), row in zip(started, rows[1:], strict=True)
        ]
        for launch in launches:
            if isinstance(launch.service, WebApp):
                launch.service.set_services(listed)
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        print(f"enlace is up ({_engine(runtime, args)} runtime):\n")
        for name, where, try_it in rows:
            print(f"  {name:<{widths[0]}}  {where:<{widths[1]}}  {try_it}")
        if hint := _tls_hint(args):
            print(f"\n{hint.strip()} (every tcp service; the web server: https:// and wss://)")
        print("\nCtrl-C stops everything.", flush=True)

    return run_servers(launches, runtime, announce, loop=args.loop)


def _try_it(entry: ServiceEntry, address: tuple[str, int], args: argparse.Namespace) -> str:
    host, port = address
    cert = getattr(args, "tls_cert", None)
    # A placeholder: the secret itself never goes to the terminal or a log.
    page = "chat.html#token=TOKEN" if getattr(args, "token", None) else ""
    return entry.try_it.format(
        host=host,
        port=port,
        address=format_address(host, port),
        scheme="https" if cert else "http",
        cacert=f" --cacert {cert}" if cert else "",
        page=page,
    )


def _connect_target(words: list[str]) -> tuple[str, int]:
    """``HOST PORT`` or ``HOST:PORT`` (``[::1]:8080`` and ``::1 8080`` too)."""
    if len(words) == 1:
        return parse_address(words[0])
    if len(words) == 2:
        host = f"[{words[0]}]" if ":" in words[0] else words[0]
        return parse_address(f"{host}:{words[1]}")
    raise ValueError("expected HOST PORT or HOST:PORT")


def _cmd_connect(args: argparse.Namespace) -> int:
    try:
        host, port = _connect_target(args.target)
    except ValueError as exc:
        print(f"enlace: {exc}", file=sys.stderr)
        return 2
    if args.udp:
        if args.tls:
            print("enlace: --tls is for TCP; UDP has no TLS here (DTLS)", file=sys.stderr)
            return 2
        return connect_udp_stdio(
            host, port, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer, wait=args.wait
        )
    return connect_tcp_stdio(
        host,
        port,
        stdin=sys.stdin.buffer,
        stdout=sys.stdout.buffer,
        connect_timeout=args.connect_timeout,
        **_client_tls(args),
    )


def _client_tls(args: argparse.Namespace) -> dict[str, Any]:
    """``ssl=`` and ``server_hostname=`` for a client, from ``--tls --ca --server-name``."""
    if not args.tls:
        if args.ca or args.server_name:
            raise EnlaceError("--ca and --server-name need --tls")
        return {}
    return {"ssl": client_context(args.ca), "server_hostname": args.server_name}


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {**_client_tls(args), "token": args.token}


def _cmd_send(args: argparse.Namespace) -> int:
    host, port = _address_or_usage(args.address)
    return run_send(
        host,
        port,
        args.message,
        as_json=args.json,
        timeout=args.timeout,
        trace=args.trace,
        options=_client_options(args),
    )


def _cmd_shell(args: argparse.Namespace) -> int:
    host, port = _address_or_usage(args.address)
    return run_shell(host, port, trace=args.trace, options=_client_options(args))


def _cmd_chat(args: argparse.Namespace) -> int:
    host, port = _address_or_usage(args.address)
    return run_chat(
        host,
        port,
        nick=args.nick,
        room=args.room,
        retry=args.retry,
        options=_client_options(args),
    )


def _cmd_cert(args: argparse.Namespace) -> int:
    return run_cert(args.hosts, out=args.out, days=args.days, force=args.force)


def _address_or_usage(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        print(f"enlace: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    """Run the ``enlace`` command; return its exit code."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args))
    except EnlaceError as exc:
        print(f"enlace: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    except BrokenPipeError:
        # Our output was closed (`enlace connect ... | head`): not an error worth a line.
        return 0
