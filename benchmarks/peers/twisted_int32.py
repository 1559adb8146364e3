"""Framed echo server on Twisted's ``Int32StringReceiver``.

Usage: ``python twisted_int32.py --port 0`` (needs ``pip install twisted``).  Prints
``listening on 127.0.0.1:PORT`` when ready and echoes every frame (4-byte big-endian length, then
the payload) until SIGTERM or Ctrl-C (Twisted's reactor stops on both).
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver

__all__ = ["MAX_FRAME", "FramedEcho", "main"]

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


def main() -> None:
    """Parse the command line and run the reactor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    factory = Factory.forProtocol(FramedEcho)
    port = reactor.listenTCP(args.port, factory, backlog=1024, interface=args.host)
    address = port.getHost()
    print(f"listening on {address.host}:{address.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
