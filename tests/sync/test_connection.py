"""The thread runtime's connection: corked writes, and callbacks run from other threads."""

from __future__ import annotations

import threading
from typing import Any

import enlace.sync
from enlace.services import StreamHandler, StreamService
from tests.conftest import connect, read_to_eof


async def _nothing() -> None:
    return None


class _CrossThread(StreamService):
    """On b"go": write, let another thread run a call_async whose done() writes, write again."""

    name = "cross"

    def handler(self) -> StreamHandler:
        class Handler(StreamHandler):
            def data_received(self, data: bytes) -> None:
                transport = self.transport
                self.transport.write(b"B0")  # corked: this callback is still running
                written = threading.Event()

                def done(result: Any, error: BaseException | None) -> None:
                    transport.write(b"A1")
                    transport.write(b"A2")
                    written.set()

                threading.Thread(target=transport.call_async, args=(_nothing(), done)).start()
                assert written.wait(5)
                self.transport.write(b"B1")
                self.transport.close()

        return Handler()


def test_a_callback_from_another_thread_loses_none_of_the_corked_writes():
    # The other thread's callback runs while this connection's own callback is still
    # corked: its writes go out at once, and the corked ones when the callback returns.
    server = enlace.sync.Server(_CrossThread(), "127.0.0.1", 0)
    with server, connect(server.address) as sock:
        sock.sendall(b"go")
        assert read_to_eof(sock) == b"A1A2B0B1"
