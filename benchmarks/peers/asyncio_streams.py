"""Framed echo server on asyncio streams (``StreamReader.readexactly``).

Usage: ``python asyncio_streams.py --port 0``.  Prints ``listening on 127.0.0.1:PORT`` when ready
and echoes every frame (4-byte big-endian length, then the payload) until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct

__all__ = ["MAX_FRAME", "handle", "main", "serve"]

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


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A read buffer as large as the biggest frame, and a listen backlog for bursts of clients.
    server = await asyncio.start_server(handle, host, port, limit=2 * MAX_FRAME, backlog=1024)
    sockname = server.sockets[0].getsockname()
    print(f"listening on {sockname[0]}:{sockname[1]}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
