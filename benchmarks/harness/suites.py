"""What ``run.py`` runs: its servers, load configurations, ratio columns and suites.

A server is one :class:`~harness.servers.Server` line in a suite's ``servers`` (``_peers``
makes the five Python peers' lines); a suite (:class:`Suite`) names its servers, its
configurations (:class:`Config`, a table row each), its ratio columns (:class:`Ratio`) and
what its protocol needs of the load generator (payload prefix, reply check, settle time).
``SUITES`` holds every suite by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness import PEERS
from harness.servers import Server

__all__ = [
    "CONFIGS",
    "PYTHON_PEERS",
    "RATIOS",
    "SUITES",
    "TLS_ARGS",
    "Config",
    "Ratio",
    "Suite",
]


@dataclass(frozen=True)
class Config:
    """One load configuration: a table row."""

    key: str  # for --configs
    label: str
    size: int  # payload bytes of each request
    connections: int
    depth: int = 1  # requests in flight per connection
    latency: bool = False  # show p50/p99 in the cell
    tls: bool = False  # over TLS: the servers' TLS instances, the TLS load generator
    plain: str = ""  # for a TLS row: the key of the same load in plain TCP (its TLS cost)


@dataclass(frozen=True)
class Ratio:
    """A ratio column: the numerator's requests/s over the best of the denominators'."""

    label: str
    numerator: str
    denominators: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    """A set of servers doing the same job, the configurations to run and the ratios to show."""

    name: str
    description: str
    servers: tuple[Server, ...]
    configs: tuple[Config, ...]
    ratios: tuple[Ratio, ...] = ()
    prefix: str = ""  # each payload starts with this text, then 'x' filler
    # How replies are checked: "payload" (each reply equals the request payload),
    # "after-prefix" (it equals the payload after the prefix, as /echo answers) or "none".
    verify: Literal["payload", "after-prefix", "none"] = "payload"
    settle: float = 0.0  # seconds to discard greetings after a connection's first request


TLS_ARGS = ("--tls-cert", "{cert}", "--tls-key", "{key}")


def _enlace(*args: str) -> tuple[str, ...]:
    return ("-m", "enlace", "serve", *args)


def _peer(script: str, *args: str) -> tuple[str, ...]:
    return (str(PEERS / script), "--port", "0", *args)


def _peers(*args: str) -> tuple[Server, ...]:
    """The five Python peers, each started with ``args`` after ``--port 0``."""
    return (
        Server("asyncio-streams", _peer("asyncio_streams.py", *args), "peer", tls_args=TLS_ARGS),
        Server("asyncio-protocol", _peer("asyncio_protocol.py", *args), "peer", tls_args=TLS_ARGS),
        Server(
            "uvloop",
            _peer("uvloop_protocol.py", *args),
            "peer",
            ("uvloop",),
            "pip install uvloop",
            tls_args=TLS_ARGS,
        ),
        Server("socketserver", _peer("socketserver_threads.py", *args), "peer", tls_args=TLS_ARGS),
        Server(
            "twisted",
            _peer("twisted_int32.py", *args),
            "peer",
            ("twisted",),
            "pip install twisted",
            tls_args=TLS_ARGS,
            # Twisted's TLS is pyOpenSSL's; service_identity is imported with it.
            tls_modules=("OpenSSL", "service_identity"),
            tls_install="pip install pyopenssl service_identity",
        ),
    )


CONFIGS: tuple[Config, ...] = (
    Config("small", "64 B x 50 conns", 64, 50),
    Config("small-tls", "64 B x 50 conns (TLS)", 64, 50, tls=True, plain="small"),
    Config("pipelined", "64 B x 100 conns, 8 in flight", 64, 100, depth=8),
    Config("large", "64 KiB x 10 conns", 64 * 1024, 10),
    Config("large-tls", "64 KiB x 10 conns (TLS)", 64 * 1024, 10, tls=True, plain="large"),
    Config("latency", "64 B x 1 conn", 64, 1, latency=True),
)

PYTHON_PEERS = ("asyncio-streams", "asyncio-protocol", "uvloop", "socketserver", "twisted")
RATIOS = (
    Ratio("enlace-asyncio / best peer", "enlace-asyncio", PYTHON_PEERS),
    Ratio("enlace-threads / socketserver", "enlace-threads", ("socketserver",)),
)

SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            name="echo",
            description="framed echo: every frame comes back unchanged",
            servers=(
                Server(
                    "enlace-asyncio",
                    _enlace("echo", "--framed", "--port", "0", "--runtime", "asyncio"),
                    "enlace",
                    tls_args=TLS_ARGS,
                ),
                Server(
                    # The same server on asyncio's own loop: how much uvloop gives (or costs).
                    "enlace-asyncio-stdloop",
                    _enlace(
                        "echo",
                        "--framed",
                        "--port",
                        "0",
                        "--runtime",
                        "asyncio",
                        "--loop",
                        "asyncio",
                    ),
                    "enlace",
                    tls_args=TLS_ARGS,
                ),
                Server(
                    "enlace-threads",
                    _enlace("echo", "--framed", "--port", "0", "--runtime", "threads"),
                    "enlace",
                    tls_args=TLS_ARGS,
                ),
                *_peers(),
            ),
            configs=CONFIGS,
            ratios=RATIOS,
        ),
        Suite(
            name="roundtrip",
            description="text command round trip: '/echo xxx...' -> the frame 'xxx...'",
            servers=(
                Server(
                    "enlace-asyncio",
                    _enlace("chat", "--port", "0", "--runtime", "asyncio"),
                    "enlace",
                ),
                Server(
                    "enlace-threads",
                    _enlace("chat", "--port", "0", "--runtime", "threads"),
                    "enlace",
                ),
                *_peers("--commands"),
            ),
            configs=tuple(c for c in CONFIGS if c.key in ("small", "pipelined", "latency")),
            ratios=RATIOS,
            prefix="/echo ",
            verify="after-prefix",
            settle=0.3,
        ),
    )
}
