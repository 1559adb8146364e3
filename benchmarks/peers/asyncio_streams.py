"""Framed echo server, or with ``--commands`` a command server, on asyncio streams.

Usage: ``python asyncio_streams.py --port 0 [--commands] [--tls-cert F --tls-key F]``.  Prints
``listening on 127.0.0.1:PORT`` when ready and serves until SIGTERM or Ctrl-C: it echoes every
frame (4-byte big-endian length, then the payload), or with ``--commands`` answers each frame
as enlace's message server answers text commands (``textcommands.py``).  Frames are read with
``StreamReader.readexactly`` and each reply written with ``write`` + ``drain``.  With
``--tls-cert`` and ``--tls-key`` it serves TLS (``start_server(ssl=...)``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import struct
from collections.abc import Awaitable, Callable

# This script's folder is on sys.path.
from peertls import add_tls_options, server_context
from textcommands import frame_too_large, respond

__all__ = ["MAX_FRAME", "handle", "handle_commands", "main", "serve"]

MAX_FRAME = 1 << 20  # 1 MiB, the message server's default limit
HEADER = struct.Struct(">I")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo frames on one connection until the client goes away."""
    try:
        while True:
            header = await reader.readexactly(4)
            (length,) = HEADER.unpack(header)
            if length > MAX_FRAME:
                break
            payload = await reader.readexactly(length)
            writer.write(header + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def handle_commands(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer text commands on one connection until the client goes away."""
    pack = HEADER.pack
    try:
        while True:
            (length,) = HEADER.unpack(await reader.readexactly(4))
            if length > MAX_FRAME:
                error = frame_too_large(length)
                writer.write(pack(len(error)) + error)  # sent before the close below
                break
            reply = respond(await reader.readexactly(length))
            if reply is not None:
                writer.write(pack(len(reply)) + reply)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(
    host: str, port: int, handler: Handler = handle, tls: ssl.SSLContext | None = None
) -> None:
    """Serve until SIGTERM or SIGINT (over TLS with ``tls``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A read buffer as large as the biggest frame, and a listen backlog for bursts of clients.
    server = await asyncio.start_server(
        handler, host, port, limit=2 * MAX_FRAME, backlog=1024, ssl=tls
    )
    sockname = server.sockets[0].getsockname()
    print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--commands", action="store_true", help="answer text commands, not echo")
    add_tls_options(parser)
    args = parser.parse_args()
    handler = handle_commands if args.commands else handle
    asyncio.run(serve(args.host, args.port, handler, server_context(args)))


if __name__ == "__main__":
    main()
