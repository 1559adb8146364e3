"""Framed echo server, or with ``--commands`` a command server, on ``asyncio.Protocol``.

Usage: ``python asyncio_protocol.py --port 0 [--commands] [--tls-cert F --tls-key F]``.  Prints
``listening on 127.0.0.1:PORT`` when ready and serves until SIGTERM or Ctrl-C: it echoes every
frame (4-byte big-endian length, then the payload), or with ``--commands`` answers each frame as
enlace's message server answers text commands (``textcommands.py``).  A buffered parser takes the
frames out of each chunk received, and all their replies go out in one ``writelines``.
With ``--tls-cert`` and ``--tls-key`` it serves TLS (``create_server(ssl=...)``).
``uvloop_protocol.py`` runs this same server on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import struct
from typing import cast

# This script's folder is on sys.path.
from peertls import add_tls_options, server_context
from textcommands import frame_too_large, respond

__all__ = ["MAX_FRAME", "FramedCommands", "FramedEcho", "main", "serve"]

MAX_FRAME = 1 << 20  # 1 MiB, the message server's default limit
HEADER = struct.Struct(">I")


class FramedEcho(asyncio.Protocol):
    """Parses the frames in each chunk received and writes all their echoes at once."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        unpack_from = HEADER.unpack_from
        replies: list[bytes] = []
        pos = 0
        while size - pos >= 4:
            (length,) = unpack_from(buffer, pos)
            if length > MAX_FRAME:
                assert self._transport is not None
                self._transport.close()
                return
            end = pos + 4 + length
            if end > size:
                break
            payload = bytes(buffer[pos + 4 : end])  # the one copy: the message handed on
            replies.append(HEADER.pack(length))
            replies.append(payload)
            pos = end
        if pos:
            del buffer[:pos]
        if replies:
            assert self._transport is not None
            self._transport.writelines(replies)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()


class FramedCommands(FramedEcho):
    """Parses the frames in each chunk received and writes all their replies at once."""

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        unpack_from = HEADER.unpack_from
        pack = HEADER.pack
        replies: list[bytes] = []
        pos = 0
        while size - pos >= 4:
            (length,) = unpack_from(buffer, pos)
            if length > MAX_FRAME:
                # The frames before this one are answered, then this error, then the close.
                error = frame_too_large(length)
                replies += (pack(len(error)), error)
                assert self._transport is not None
                self._transport.writelines(replies)
                self._transport.close()
                return
            end = pos + 4 + length
            if end > size:
                break
            reply = respond(bytes(buffer[pos + 4 : end]))
            if reply is not None:
                replies.append(pack(len(reply)))
                replies.append(reply)
            pos = end
        if pos:
            del buffer[:pos]
        if replies:
            assert self._transport is not None
            self._transport.writelines(replies)


async def serve(
    host: str,
    port: int,
    protocol: type[FramedEcho] = FramedEcho,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (over TLS with ``tls``), on whatever loop is running."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(protocol, host, port, backlog=1024, ssl=tls)
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
    protocol = FramedCommands if args.commands else FramedEcho
    asyncio.run(serve(args.host, args.port, protocol, server_context(args)))


if __name__ == "__main__":
    main()
