"""``enlace serve web`` and the web server's place in ``enlace up``.

The runner starts services by kind; :class:`WebApp` is the web server's kind:
the options it was given and the chat it bridges to the browser, from which
the runner builds a :class:`~enlace.web.WebServer` on either runtime (under
``--runtime threads`` it runs on an event loop of its own thread), with the
TLS context, allow-list and per-address cap every server takes, and the
``--token`` its browser chat requires.
"""

from __future__ import annotations

import argparse
import os
import ssl as _ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from enlace.cli.options import TOKEN_ENV, optional_number
from enlace.limits import (
    HTTP_HEAD_TIMEOUT,
    HTTP_KEEPALIVE_TIMEOUT,
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_PER_IP,
    MAX_REQUEST_LINE,
)
from enlace.services.chat import ChatService
from enlace.web import ServiceInfo, WebServer
from enlace.web.server import UpgradeEndpoint
from enlace.web.websocket import WebSocketEndpoint

__all__ = ["WebApp", "build_web", "web_options"]


@dataclass
class WebApp:
    """The web server to start: its options, and the chat its ``/ws`` joins."""

    root: str | None = None
    listing: bool = False
    chat: ChatService | None = None
    #: The token the browser chat (``/ws``) requires; the files stay public.
    token: str | None = None
    #: Browser origins allowed on ``/ws`` besides this server's own pages.
    origins: Sequence[str] = ()
    limits: dict[str, Any] = field(default_factory=dict)
    servers: list[WebServer] = field(default_factory=list)

    def server(
        self,
        host: str,
        port: int,
        *,
        max_connections: int | None,
        drain_timeout: float | None,
        ssl: _ssl.SSLContext | None = None,
        allow: list[str] | None = None,
        max_per_ip: int | None = MAX_PER_IP,
    ) -> WebServer:
        """A new :class:`WebServer` with these options (remembered for :meth:`set_services`)."""
        server = WebServer(
            self.root,
            host,
            port,
            listing=self.listing,
            websocket=self._endpoint(),
            max_connections=max_connections,
            drain_timeout=drain_timeout,
            ssl=ssl,
            allow=allow,
            max_per_ip=max_per_ip,
            **self.limits,
        )
        self.servers.append(server)
        return server

    def set_services(self, services: Sequence[ServiceInfo]) -> None:
        """List ``services`` on the home page of the built-in site."""
        for server in self.servers:
            server.set_services(services)

    def _endpoint(self) -> UpgradeEndpoint | None:
        if self.chat is None:
            return None
        return WebSocketEndpoint(self.chat, token=self.token, allowed_origins=self.origins)


def web_options(parser: argparse.ArgumentParser) -> None:
    """``serve web``'s own options (the chat's ``--data``/``--hub`` are added beside)."""
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="serve the files under DIR (default: the built-in site: home page and chat)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the files of a directory without index.html (default: 404)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        metavar="SECRET",
        help="the browser chat (/ws) requires this token: open /chat.html#token=SECRET, "
        "or the page asks for it; the files stay public "
        f"(default: ${TOKEN_ENV} if set, else no token)",
    )
    parser.add_argument(
        "--origin",
        action="append",
        default=[],
        dest="origins",
        metavar="URL",
        help="also let browser pages from this origin (scheme://host[:port], or '*' for any) "
        "open the chat's WebSocket; repeatable (default: only pages this server served)",
    )
    for option, default, what in (
        ("--max-request-line", MAX_REQUEST_LINE, "longest request line, in bytes (414 past it)"),
        ("--max-headers", MAX_HEADERS, "most header fields in a request (431 past it)"),
        ("--max-header-bytes", MAX_HEADER_BYTES, "largest header block, in bytes (431 past it)"),
        ("--max-body", MAX_BODY, "largest request body, in bytes (413 past it)"),
    ):
        parser.add_argument(
            option,
            type=optional_number(int),
            default=default,
            metavar="N",
            help=f"{what}; default {default}, 'none' disables",
        )
    parser.add_argument(
        "--head-timeout",
        type=optional_number(float),
        default=HTTP_HEAD_TIMEOUT,
        metavar="SECONDS",
        help=f"a request head must arrive within this time once begun (408 past it; "
        f"default {HTTP_HEAD_TIMEOUT:g})",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=optional_number(float),
        default=HTTP_KEEPALIVE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a keep-alive connection idle this long (default {HTTP_KEEPALIVE_TIMEOUT:g})",
    )


def build_web(args: argparse.Namespace, chat: ChatService | None) -> WebApp:
    """The :class:`WebApp` for the parsed command line; ``chat`` serves ``/ws``."""
    limits = {
        name: getattr(args, name, default)
        for name, default in (
            ("max_request_line", MAX_REQUEST_LINE),
            ("max_headers", MAX_HEADERS),
            ("max_header_bytes", MAX_HEADER_BYTES),
            ("max_body", MAX_BODY),
            ("head_timeout", HTTP_HEAD_TIMEOUT),
            ("keepalive_timeout", HTTP_KEEPALIVE_TIMEOUT),
        )
    }
    return WebApp(
        root=getattr(args, "root", None),
        listing=bool(getattr(args, "list", False)),
        chat=chat,
        token=getattr(args, "token", None) or None,
        origins=tuple(getattr(args, "origins", ())),
        limits=limits,
    )
