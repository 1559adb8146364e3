"""WebSocket test helpers: a raw client on a plain socket, and an endpoint that counts.

:class:`RawClient` writes and reads RFC 6455 frames byte by byte, so tests can
send what no well-behaved library sends (invalid UTF-8, pipelined frames, no
pongs). :class:`CountingEndpoint` sits between the web server and a
:class:`WebSocketEndpoint` to count the ``on_close`` calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from enlace.web.websocket import WebSocketEndpoint

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(
    host: str, port: int, *, path: str = "/ws", headers: dict[str, str] | None = None
) -> bytes:
    fields = {
        "Host": f"{host}:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of clients)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 2**16:
        head += bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", size)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class RawClient:
    """A WebSocket client on a plain socket, frame by frame."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        headers: dict[str, str] | None = None,
        first_frames: bytes = b"",
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(address)
        self.sock.sendall(upgrade_request(*address, headers=headers) + first_frames)
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self._buffer += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(marker, 1)
        return head + marker

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def body(self) -> bytes:
        """The rest of a refusal: everything until the server closes."""
        try:
            while True:
                self._fill()
        except EOFError:
            return self._buffer

    def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, fin=fin))

    def send_json(self, request: dict[str, Any]) -> None:
        self.send(TEXT, json.dumps(request).encode())

    def receive(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = self._read(2)
        assert not second & 0x80, "the server masked a frame"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack(">H", self._read(2))
        elif size == 127:
            (size,) = struct.unpack(">Q", self._read(8))
        return first & 0x0F, self._read(size)

    def close_code(self) -> tuple[int, str]:
        """Read frames until the server's close frame; return its code and reason."""
        while True:
            opcode, payload = self.receive()
            if opcode == CLOSE:
                return struct.unpack(">H", payload[:2])[0], payload[2:].decode()

    def json_until(self, test: Any) -> dict[str, Any]:
        """Text messages until one that is JSON and passes ``test``."""
        while True:
            opcode, payload = self.receive()
            if opcode == TEXT and payload.startswith(b"{"):
                value = json.loads(payload)
                if test(value):
                    return value

    def at_eof(self) -> bool:
        """Whether the server closed the TCP connection (after what was left to read)."""
        try:
            while True:
                self._fill()
        except EOFError:
            return True

    def close(self) -> None:
        self.sock.close()


class CountingEndpoint:
    """A :class:`WebSocketEndpoint` as the web server sees it, counting ``on_close`` calls."""

    def __init__(self, endpoint: WebSocketEndpoint) -> None:
        self.endpoint = endpoint
        self.on_close_calls = 0
        self.all_closed = asyncio.Event()
        self.fail_delay = endpoint.fail_delay

    def authorized(self, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        return self.endpoint.authorized(target, headers)

    def upgrade(
        self,
        transport: asyncio.Transport,
        head: bytes,
        rest: bytes,
        *,
        on_close: Callable[[], None],
    ) -> asyncio.BaseProtocol:
        def closed() -> None:
            self.on_close_calls += 1
            on_close()
            if not self.endpoint.connections:
                self.all_closed.set()

        return self.endpoint.upgrade(transport, head, rest, on_close=closed)
