"""The ``asyncio_protocol.py`` framed echo server, run on uvloop.

Usage: ``python uvloop_protocol.py --port 0`` (needs ``pip install uvloop``).  Prints
``listening on 127.0.0.1:PORT`` when ready and echoes frames until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse

import uvloop
from asyncio_protocol import serve  # this script's folder is on sys.path

__all__ = ["main"]


def main() -> None:
    """Parse the command line and serve on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
