"""Framed echo, or with ``--commands`` text commands, on ``socketserver.ThreadingTCPServer``.

Usage: ``python socketserver_threads.py --port 0 [--commands] [--tls-cert F --tls-key F]``.
Prints ``listening on 127.0.0.1:PORT`` when ready and serves until SIGTERM or Ctrl-C, a thread
per connection: it echoes every frame (4-byte big-endian length, then the payload), or with
``--commands`` answers each frame as enlace's message server answers text commands
(``textcommands.py``).  Frames are read through the buffered ``rfile``; each reply is sent with
one ``sendall``.  With ``--tls-cert`` and ``--tls-key`` every accepted socket is wrapped with
``SSLContext.wrap_socket`` and its handshake made by the connection's own thread.
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import ssl
import struct
import threading
from types import FrameType
from typing import Any

# This script's folder is on sys.path.
from peertls import add_tls_options, server_context
from textcommands import frame_too_large, respond

__all__ = ["MAX_FRAME", "EchoServer", "FramedCommandHandler", "FramedEchoHandler", "main"]

MAX_FRAME = 1 << 20  # 1 MiB, the message server's default limit
HEADER = struct.Struct(">I")


class FramedEchoHandler(socketserver.StreamRequestHandler):
    """Reads frames through the buffered ``rfile`` and sends each echo with one ``sendall``."""

    def setup(self) -> None:
        # Replies are small writes that must not wait for the client's delayed ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            # Here, in the connection's thread, not in the accepting one: a slow handshake
            # would hold up every client behind it.
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.handshake_failed = True
        super().setup()

    handshake_failed = False

    def handle(self) -> None:
        if self.handshake_failed:
            return
        read = self.rfile.read
        sendall = self.connection.sendall
        try:
            while True:
                header = read(4)
                if len(header) < 4:
                    return
                (length,) = HEADER.unpack(header)
                if length > MAX_FRAME:
                    return
                payload = read(length)
                if len(payload) < length:
                    return
                sendall(header + payload)
        except ConnectionError:
            return


class FramedCommandHandler(FramedEchoHandler):
    """Reads frames through the buffered ``rfile`` and sends each reply with one ``sendall``."""

    def handle(self) -> None:
        if self.handshake_failed:
            return
        read = self.rfile.read
        sendall = self.connection.sendall
        pack = HEADER.pack
        try:
            while True:
                header = read(4)
                if len(header) < 4:
                    return
                (length,) = HEADER.unpack(header)
                if length > MAX_FRAME:
                    error = frame_too_large(length)
                    sendall(pack(len(error)) + error)
                    return
                payload = read(length)
                if len(payload) < length:
                    return
                reply = respond(payload)
                if reply is not None:
                    sendall(pack(len(reply)) + reply)
        except ConnectionError:
            return


class EchoServer(socketserver.ThreadingTCPServer):
    """A thread per connection; threads do not keep the process alive at exit."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the listen backlog; the default of 5 drops bursts of clients
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


def main() -> None:
    """Parse the command line and serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--commands", action="store_true", help="answer text commands, not echo")
    add_tls_options(parser)
    args = parser.parse_args()
    handler = FramedCommandHandler if args.commands else FramedEchoHandler
    with EchoServer((args.host, args.port), handler) as server:
        server.tls = server_context(args)

        def stop(signum: int, frame: FrameType | None) -> None:
            # shutdown() waits for serve_forever() to return, so it must run in another thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        host, port = server.socket.getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
