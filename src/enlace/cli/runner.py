"""Running servers from the command line until a signal: both runtimes, one behaviour.

On SIGINT or SIGTERM every server stops accepting, connections get up to
``--drain-timeout`` seconds to finish, and the process exits 0. A second
signal during the drain stops at once (exit 130 for Ctrl-C).
"""

from __future__ import annotations

import asyncio
import signal
import ssl as _ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import enlace.asyncio
import enlace.sync
from enlace.addresses import format_address
from enlace.cli.web import WebApp
from enlace.exceptions import EnlaceError
from enlace.limits import MAX_CONNECTIONS, MAX_CONNECTIONS_THREADS, MAX_PER_IP
from enlace.services import DatagramService, StreamService
from enlace.web import WebServer, WebServerThread

__all__ = ["Launch", "Runtime", "describe", "event_loop_factory", "loop_name", "run_servers"]

Runtime = Literal["threads", "asyncio"]
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Launch:
    """One server to start: which service, where, with which limits."""

    name: str
    service: StreamService | DatagramService | WebApp
    host: str
    port: int
    max_connections: int | Literal["default"] | None = "default"
    idle_timeout: float | None = None
    drain_timeout: float | None = None
    max_datagram: int | None = None
    ssl: _ssl.SSLContext | None = None
    allow: list[str] | None = None
    max_per_ip: int | None = MAX_PER_IP

    @property
    def transport(self) -> str:
        return "udp" if isinstance(self.service, DatagramService) else "tcp"


_SyncServer = enlace.sync.Server | enlace.sync.DatagramServer | WebServerThread
_AsyncServer = enlace.asyncio.Server | enlace.asyncio.DatagramServer | WebServer


def _build_web(launch: Launch, web: WebApp) -> WebServer:
    cap = MAX_CONNECTIONS if launch.max_connections == "default" else launch.max_connections
    return web.server(
        launch.host,
        launch.port,
        max_connections=cap,
        drain_timeout=launch.drain_timeout,
        ssl=launch.ssl,
        allow=launch.allow,
        max_per_ip=launch.max_per_ip,
    )


def _build_sync(launch: Launch, loop: str) -> _SyncServer:
    if isinstance(launch.service, WebApp):
        # The web server is asyncio-only: under the threads runtime it gets a loop thread.
        return WebServerThread(
            _build_web(launch, launch.service), loop_factory=event_loop_factory(loop)
        )
    if isinstance(launch.service, DatagramService):
        return enlace.sync.DatagramServer(
            launch.service,
            launch.host,
            launch.port,
            max_datagram=launch.max_datagram,
            allow=launch.allow,
        )
    return enlace.sync.Server(
        launch.service, launch.host, launch.port, **_stream_limits(launch, MAX_CONNECTIONS_THREADS)
    )


def _build_async(launch: Launch) -> _AsyncServer:
    if isinstance(launch.service, WebApp):
        return _build_web(launch, launch.service)
    if isinstance(launch.service, DatagramService):
        return enlace.asyncio.DatagramServer(
            launch.service,
            launch.host,
            launch.port,
            max_datagram=launch.max_datagram,
            allow=launch.allow,
        )
    return enlace.asyncio.Server(
        launch.service, launch.host, launch.port, **_stream_limits(launch, MAX_CONNECTIONS)
    )


def _stream_limits(launch: Launch, default_cap: int) -> dict[str, Any]:
    cap = default_cap if launch.max_connections == "default" else launch.max_connections
    return {
        "max_connections": cap,
        "idle_timeout": launch.idle_timeout,
        "drain_timeout": launch.drain_timeout,
        "ssl": launch.ssl,
        "allow": launch.allow,
        "max_per_ip": launch.max_per_ip,
    }


Announce = Callable[[list[tuple[Launch, tuple[str, int]]]], None]


def run_servers(
    launches: list[Launch], runtime: Runtime, announce: Announce, *, loop: str = "auto"
) -> int:
    """Start every server, call ``announce`` with their real addresses, serve until a signal.

    ``loop`` picks the asyncio event loop: ``asyncio``, ``uvloop``, or ``auto``
    (uvloop when it is installed). Raises :class:`EnlaceError` if a server
    cannot start (the others are stopped first).
    """
    if runtime == "asyncio":
        with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
            return runner.run(_run_async(launches, announce))
    return _run_threads(launches, announce, loop)


def event_loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``--loop``; ``None`` means asyncio's own loop."""
    if loop == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional: pip install 'enlace[fast]'
    except ImportError:
        if loop == "uvloop":
            raise EnlaceError(
                "--loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def loop_name(loop: str) -> str:
    """What ``--loop`` resolves to on this machine, for the banner."""
    return "asyncio" if event_loop_factory(loop) is None else "uvloop"


def _say_stopping() -> None:
    print(
        "enlace: stopping: no new connections; open ones may finish (Ctrl-C again to force)",
        file=sys.stderr,
        flush=True,
    )


async def _run_async(launches: list[Launch], announce: Announce) -> int:
    servers: list[_AsyncServer] = []
    try:
        for launch in launches:
            server = _build_async(launch)
            await server.start()
            servers.append(server)
    except EnlaceError:
        await asyncio.gather(*(server.shutdown(0) for server in servers))
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    # Announced once the signals are ours: whoever reads the ready line may stop us at once.
    announce([(launch, server.address) for launch, server in zip(launches, servers, strict=True)])
    await stop.wait()
    for signum in _STOP_SIGNALS:
        # From now on the default handlers apply: a second Ctrl-C interrupts the drain.
        loop.remove_signal_handler(signum)
    _say_stopping()
    await asyncio.gather(*(server.shutdown() for server in servers))
    return 0


def _run_threads(launches: list[Launch], announce: Announce, loop: str) -> int:
    servers: list[_SyncServer] = []
    try:
        for launch in launches:
            server = _build_sync(launch, loop)
            server.start()
            servers.append(server)
    except EnlaceError:
        for server in servers:
            server.shutdown(0)
        raise
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in _STOP_SIGNALS}
    try:
        # Announced once the signals are ours: whoever reads the ready line may stop us.
        announce(
            [(launch, server.address) for launch, server in zip(launches, servers, strict=True)]
        )
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _say_stopping()
    # Drain all servers at once, so the total wait is one drain timeout, not one each.
    threads = [threading.Thread(target=server.shutdown, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


def describe(launch: Launch, address: tuple[str, int], runtime: str) -> str:
    """``upper listening on 127.0.0.1:8000 (tcp, asyncio runtime)``."""
    where = format_address(*address)
    return f"{launch.name} listening on {where} ({launch.transport}, {runtime} runtime)"
