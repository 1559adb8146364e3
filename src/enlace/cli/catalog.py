"""The catalog of services the ``enlace`` command can run: names, ports, options.

``enlace serve NAME`` runs one entry, ``enlace up`` runs them all. An entry
says how to build its service from the parsed command line, which port it
uses by default, and a one-line "try it" for people who just started it.
"""

from __future__ import annotations

import argparse
import atexit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from enlace.cli.options import optional_number, token_option
from enlace.cli.trace import print_trace
from enlace.cli.web import WebApp, build_web, web_options
from enlace.limits import MAX_DATAGRAM, MAX_FRAME, MAX_LINE
from enlace.services import (
    DatagramService,
    EchoService,
    GreetService,
    StreamService,
    UdpEchoService,
    UpperService,
)
from enlace.services.assistant import install_assistant
from enlace.services.chat import ChatService
from enlace.services.completions import AssistantConfig
from enlace.services.message import MessageService
from enlace.services.store import DATA_FILE, SqliteStore

__all__ = ["CATALOG", "ServiceEntry"]


@dataclass(frozen=True)
class ServiceEntry:
    """One service the command can run."""

    name: str
    port: int
    transport: Literal["tcp", "udp"]
    summary: str
    #: Shell line to try the service; ``{host}``, ``{port}`` and ``{address}``
    #: (``HOST:PORT``, IPv6 in brackets) are filled in, and for the web server
    #: ``{scheme}`` (http or https), ``{cacert}`` (curl's `` --cacert FILE`` under
    #: TLS) and ``{page}`` (the chat page with a token placeholder under --token).
    try_it: str
    build: Callable[[argparse.Namespace], StreamService | DatagramService | WebApp]
    add_options: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    #: Whether ``enlace up`` runs it (the plain message server shares the chat's port).
    in_up: bool = True
    #: Whether it takes ``--idle-timeout`` (the web server has timeouts of its own).
    idle_timeout: bool = True


def _echo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--framed",
        action="store_true",
        help="echo 4-byte big-endian length-prefixed frames instead of a byte stream",
    )
    _max_frame_option(parser, " with --framed")


def _max_frame_option(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument(
        "--max-frame",
        type=optional_number(int),
        default=MAX_FRAME,
        metavar="BYTES",
        help=f"largest frame payload{when} (default {MAX_FRAME}; 'none' disables); larger: "
        "an error frame and a close",
    )


def _greet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--message",
        default="Hola nuevo amigo!",
        help="the greeting after the client's number (default: %(default)s)",
    )


def _udp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-datagram",
        type=optional_number(int),
        default=MAX_DATAGRAM,
        metavar="BYTES",
        help=f"largest datagram answered (default {MAX_DATAGRAM}); larger ones get an error",
    )


def _message_server_options(parser: argparse.ArgumentParser) -> None:
    _max_frame_option(parser, "")
    token_option(parser, server=True)
    parser.add_argument(
        "--max-line",
        type=optional_number(int),
        default=MAX_LINE,
        metavar="BYTES",
        help=f"longest line from a text client (default {MAX_LINE}); longer: an error and a close",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print every frame or line on standard error (direction, size, text or hex)",
    )


def _chat_options(parser: argparse.ArgumentParser) -> None:
    # The chat's own options come on top of the message server's.
    _message_server_options(parser)
    _chat_place_options(parser)


def _chat_place_options(parser: argparse.ArgumentParser) -> None:
    # Either this process keeps the history (in memory or in DIR), or the hub does.
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--data",
        metavar="DIR",
        help=f"keep rooms and their last messages in DIR/{DATA_FILE} (SQLite; DIR is "
        "created if missing), so they survive a restart; without it they live in memory",
    )
    where.add_argument(
        "--hub",
        metavar="URL",
        help="share rooms, presence, nicknames and history with the other chat servers "
        "started with the same URL, through Redis (redis://HOST:PORT/DB), so their clients "
        "talk to each other; without it the chat is this process's alone",
    )


def _message_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_frame": _option(args, "max_frame", MAX_FRAME),
        "max_line": _option(args, "max_line", MAX_LINE),
        "trace": print_trace if _option(args, "trace", False) else None,
    }


def _build_message(args: argparse.Namespace) -> MessageService:
    return MessageService(**_message_options(args))


def _build_chat(args: argparse.Namespace) -> ChatService:
    data, hub_url = _option(args, "data", None), _option(args, "hub", None)
    if hub_url is not None:
        # Imported here: only --hub needs the Redis client.
        from enlace.services.redis_hub import RedisHub  # noqa: PLC0415

        # Reached before the server listens, so a wrong URL stops the start with one line.
        hub = RedisHub(str(hub_url)).start()
        atexit.register(hub.close)  # the others see this server's people leave at once
        service = ChatService(hub=hub, **_message_options(args))
    elif data is None:
        service = ChatService(**_message_options(args))
    else:
        # Opened before the server listens, so bad data stops the start with one clear line.
        store = SqliteStore(str(data))
        atexit.register(store.close)  # a clean close folds the write-ahead log into the file
        service = ChatService(store=store, **_message_options(args))
    # /ask answers from ENLACE_AI_URL/MODEL/KEY; unset: /ask says how to configure it.
    install_assistant(service, AssistantConfig.from_env())
    return service


def _web_options(parser: argparse.ArgumentParser) -> None:
    web_options(parser)
    _chat_place_options(parser)  # the browser chat's rooms: the same as serve chat's


def _build_web(args: argparse.Namespace) -> WebApp:
    return build_web(args, _build_chat(args))


def _option(args: argparse.Namespace, name: str, default: object) -> object:
    # `enlace up` has no per-service options, so each builder falls back to its default.
    return getattr(args, name, default)


CATALOG: dict[str, ServiceEntry] = {
    entry.name: entry
    for entry in (
        ServiceEntry(
            name="upper",
            port=8000,
            transport="tcp",
            summary="raw TCP: sends back the text upper-cased",
            try_it="echo 'hola servidor' | enlace connect {host} {port}",
            build=lambda args: UpperService(),
        ),
        ServiceEntry(
            name="echo",
            port=6543,
            transport="tcp",
            summary="raw TCP echo, streaming; half-close works; --framed echoes frames",
            try_it="echo hola | enlace connect {host} {port}",
            build=lambda args: EchoService(
                framed=bool(_option(args, "framed", False)),
                max_frame=_option(args, "max_frame", MAX_FRAME),  # type: ignore[arg-type]
            ),
            add_options=_echo_options,
        ),
        ServiceEntry(
            name="greet",
            port=10001,
            transport="tcp",
            summary="sends 'N. Hola nuevo amigo!' (N counts clients from 0) and closes",
            try_it="enlace connect {host} {port}",
            build=lambda args: GreetService(str(_option(args, "message", "Hola nuevo amigo!"))),
            add_options=_greet_options,
        ),
        ServiceEntry(
            name="udp",
            port=15000,
            transport="udp",
            summary="UDP echo; a reply is never larger than its request",
            try_it="echo hola | enlace connect --udp {host} {port}",
            build=lambda args: UdpEchoService(),
            add_options=_udp_options,
        ),
        ServiceEntry(
            name="chat",
            port=8080,
            transport="tcp",
            summary="the chat: rooms, nicknames, private messages, history, and every command "
            "of the message server",
            try_it="enlace chat {host}:{port} --nick ana   (or: enlace shell, or nc, then /help)",
            build=_build_chat,
            add_options=_chat_options,
        ),
        ServiceEntry(
            name="message",
            port=8080,
            transport="tcp",
            summary="the plain message server of the course: framed or line clients, "
            "/commands, JSON requests; no rooms",
            try_it="enlace send {host}:{port} '/upper hola'",
            build=_build_message,
            add_options=_message_server_options,
            in_up=False,
        ),
        ServiceEntry(
            name="web",
            port=8088,
            transport="tcp",
            summary="HTTP/1.1 static files (--root DIR) and the browser chat over WebSocket",
            try_it="open {scheme}://{address}/{page} in a browser "
            "(or: curl{cacert} {scheme}://{address}/)",
            build=_build_web,
            add_options=_web_options,
            idle_timeout=False,
        ),
    )
}
