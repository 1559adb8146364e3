"""The ``asyncio_protocol.py`` server (framed echo, or with ``--commands`` text commands) on uvloop.

Usage: ``python uvloop_protocol.py --port 0 [--commands] [--tls-cert F --tls-key F]`` (needs
``pip install uvloop``).  Prints ``listening on 127.0.0.1:PORT`` when ready and serves until
SIGTERM or Ctrl-C; with ``--tls-cert`` and ``--tls-key``, over TLS (uvloop's own TLS transport).
"""

from __future__ import annotations

import argparse

import uvloop

# This script's folder is on sys.path.
from asyncio_protocol import FramedCommands, FramedEcho, serve
from peertls import add_tls_options, server_context

__all__ = ["main"]


def main() -> None:
    """Parse the command line and serve on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--commands", action="store_true", help="answer text commands, not echo")
    add_tls_options(parser)
    args = parser.parse_args()
    protocol = FramedCommands if args.commands else FramedEcho
    uvloop.run(serve(args.host, args.port, protocol, server_context(args)))


if __name__ == "__main__":
    main()
