"""The listening side and shutdown every asyncio server shares (``ListeningServer``).

Runs enlace.asyncio.Server on asyncio's own loop and on uvloop (where installed),
with real sockets on loopback.
"""

from __future__ import annotations

import asyncio

import pytest

from enlace.asyncio import Server
from enlace.services import EchoService
from tests.conftest import LoopThread, connect, read_exactly, read_to_eof, uvloop

LOOPS = ("asyncio", "uvloop") if uvloop is not None else ("asyncio",)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_shutdown_called_while_one_runs_waits_for_it_and_neither_hangs(loop_name):
    loop = LoopThread(use_uvloop=loop_name == "uvloop")
    # The idle timeout ends the one connection a moment after both shutdowns began.
    server = Server(EchoService(), "127.0.0.1", 0, idle_timeout=0.3)
    try:
        loop.run(server.start())
        with connect(server.address) as sock:
            sock.sendall(b"hi")
            assert read_exactly(sock, 2) == b"hi"

            async def stop() -> int:
                await server.shutdown(None)  # no drain timeout: wait for the connection
                return server.connection_count

            async def stop_twice() -> list[int]:
                return await asyncio.wait_for(asyncio.gather(stop(), stop()), 3.0)

            # Each call returns once the connection is gone, not before and not never.
            assert loop.run(stop_twice()) == [0, 0]
            assert read_to_eof(sock) == b""
    finally:
        loop.run(server.shutdown(0.0))
        loop.close()
