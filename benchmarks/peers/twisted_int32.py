"""Framed echo, or with ``--commands`` text commands, on Twisted's ``Int32StringReceiver``.

Usage: ``python twisted_int32.py --port 0 [--commands] [--tls-cert F --tls-key F]`` (needs
``pip install twisted``; for TLS also ``pip install pyopenssl service_identity``).
Prints ``listening on 127.0.0.1:PORT`` when ready and serves until SIGTERM or Ctrl-C (Twisted's
reactor stops on both): it echoes every frame (4-byte big-endian length, then the payload), or
with ``--commands`` answers each frame as enlace's message server answers text commands
(``textcommands.py``).  With ``--tls-cert`` and ``--tls-key`` it listens with ``listenSSL``:
Twisted's TLS (pyOpenSSL in memory BIOs), with the options of ``PrivateCertificate.options()``.
"""

from __future__ import annotations

import argparse
from typing import Any

# This script's folder is on sys.path.
from peertls import add_tls_options
from textcommands import frame_too_large, respond
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver

__all__ = ["MAX_FRAME", "FramedCommands", "FramedEcho", "main"]

MAX_FRAME = 1 << 20  # 1 MiB, the message server's default limit
# The global reactor provides several interfaces at once, which no single static type describes.
reactor: Any = _reactor


class FramedEcho(Int32StringReceiver):
    """Sends every string (frame payload) back as a frame."""

    MAX_LENGTH = MAX_FRAME  # the default, 99999, is below the message server's limit

    def connectionMade(self) -> None:  # Twisted's method name
        if self.transport is not None:
            self.transport.setTcpNoDelay(True)

    def stringReceived(self, string: bytes) -> None:  # Twisted's method name
        self.sendString(string)  # type: ignore[no-untyped-call]


class FramedCommands(FramedEcho):
    """Answers every string (frame payload) that is not empty with one frame."""

    def stringReceived(self, string: bytes) -> None:  # Twisted's method name
        reply = respond(string)
        if reply is not None:
            self.sendString(reply)  # type: ignore[no-untyped-call]

    def lengthLimitExceeded(self, length: int) -> None:  # Twisted's method name
        # Twisted's default drops the connection; answer first, as the message server does.
        self.sendString(frame_too_large(length))  # type: ignore[no-untyped-call]
        if self.transport is not None:
            # After the buffered reply is written.  (zope.interface methods have no self, which
            # mypy reads as a bad signature.)
            self.transport.loseConnection()  # type: ignore[misc]


def main() -> None:
    """Parse the command line and run the reactor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--commands", action="store_true", help="answer text commands, not echo")
    add_tls_options(parser)
    args = parser.parse_args()
    factory = Factory.forProtocol(FramedCommands if args.commands else FramedEcho)
    if args.tls_cert:
        # Imported only for TLS: it needs pyOpenSSL, which plain runs do without.
        from twisted.internet import ssl  # noqa: PLC0415

        with open(args.tls_cert, "rb") as cert, open(args.tls_key or args.tls_cert, "rb") as key:
            pem = cert.read() + key.read()
        options = ssl.PrivateCertificate.loadPEM(pem).options()  # type: ignore[no-untyped-call]
        port = reactor.listenSSL(args.port, factory, options, backlog=1024, interface=args.host)
    else:
        port = reactor.listenTCP(args.port, factory, backlog=1024, interface=args.host)
    address = port.getHost()
    print(f"listening on {address.host}:{address.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
