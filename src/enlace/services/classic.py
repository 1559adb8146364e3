"""The classic services of socket-programming courses, written once for both runtimes.

* :class:`UpperService` (port 8000): sends back the upper-cased text.
* :class:`EchoService` (port 6543): sends back every byte, or every frame with ``framed=True``.
* :class:`GreetService` (port 10001): greets each client with its number, then closes.
* :class:`UdpEchoService` (port 15000): sends every datagram back to its sender.
"""

from __future__ import annotations

import codecs
import itertools
import threading

from enlace.exceptions import RemoteProtocolError
from enlace.limits import MAX_FRAME
from enlace.protocol.fastpath import scan_frames
from enlace.protocol.framing import LengthPrefixDecoder, encode_length_prefixed
from enlace.services.base import DatagramService, StreamHandler, StreamService, Transport

__all__ = ["EchoService", "GreetService", "UdpEchoService", "UpperService"]


class _UpperHandler(StreamHandler):
    def __init__(self) -> None:
        # A character split across two packets must be decoded whole, hence an
        # incremental decoder; surrogateescape carries bytes that are not UTF-8
        # through unchanged instead of dropping or replacing them.
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def data_received(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self.transport.write(text.upper().encode("utf-8", "surrogateescape"))

    def eof_received(self) -> None:
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self.transport.write(tail.upper().encode("utf-8", "surrogateescape"))
        self.transport.close()


class UpperService(StreamService):
    """Streams back the client's text upper-cased, as it arrives.

    UTF-8 characters cut between packets are upper-cased whole (``ñandú`` ->
    ``ÑANDÚ``); bytes that are not UTF-8 pass through unchanged.
    """

    name = "upper"

    def handler(self) -> StreamHandler:
        return _UpperHandler()


class _StreamEchoHandler(StreamHandler):
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _FramedEchoHandler(StreamHandler):
    def __init__(self, max_frame: int | None) -> None:
        self._decoder = LengthPrefixDecoder(max_size=max_frame)

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder.at_boundary():
            whole, empty, oversize = scan_frames(data, decoder.max_size)
            if not empty and oversize < 0:
                # Whole non-empty frames, then perhaps the start of one: the echo of the
                # frames is the bytes themselves, and the rest waits for its end.
                if whole == len(data):
                    self.transport.write(data)
                    return
                if whole:
                    self.transport.write(data[:whole])
                decoder.feed(data[whole:])  # a header within the limit, or part of one
                return
        try:
            frames = decoder.feed(data)
        except RemoteProtocolError as exc:
            self._refuse(exc)
            return
        write = self.transport.write
        for payload in frames:
            if payload:  # an empty frame is a keep-alive: no reply
                write(encode_length_prefixed(payload, max_size=None))
        if decoder.error is not None:  # frames before a bad header are echoed, then the error
            self._refuse(decoder.error)

    def _refuse(self, exc: RemoteProtocolError) -> None:
        self.transport.write(encode_length_prefixed(f"ERR {exc.code}: {exc}".encode()))
        self.transport.close()

    def eof_received(self) -> None:
        # A frame cut short by the close gets no echo; there is nobody to tell.
        self.transport.close()


class EchoService(StreamService):
    """Sends back exactly what the client sends.

    Streaming by default: bytes go back as they arrive, and a client may shut
    down its writing side and read the rest to EOF. With ``framed=True`` the
    input is parsed as 4-byte length-prefixed frames and each frame is echoed
    as a frame; a frame over ``max_frame`` gets an ``ERR frame_too_large``
    frame and a close, before its payload is read.
    """

    name = "echo"

    def __init__(self, *, framed: bool = False, max_frame: int | None = MAX_FRAME) -> None:
        self.framed = framed
        self.max_frame = max_frame

    def handler(self) -> StreamHandler:
        if self.framed:
            return _FramedEchoHandler(self.max_frame)
        return _StreamEchoHandler()

    def refusal(self, reason: str) -> bytes:
        if self.framed:
            return encode_length_prefixed(f"ERR busy: {reason}".encode())
        return super().refusal(reason)


class _GreetHandler(StreamHandler):
    def __init__(self, greeting: bytes) -> None:
        self._greeting = greeting

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        transport.write(self._greeting)
        transport.close()


class GreetService(StreamService):
    """Sends ``N. <message>\\n`` to each client, N counting clients from 0, then closes."""

    name = "greet"

    def __init__(self, message: str = "Hola nuevo amigo!") -> None:
        if "\n" in message or "\r" in message:
            raise ValueError("the greeting must be a single line")
        self.message = message
        self._counter = itertools.count()
        self._lock = threading.Lock()  # the thread runtime greets from many threads

    def handler(self) -> StreamHandler:
        with self._lock:
            number = next(self._counter)
        return _GreetHandler(f"{number}. {self.message}\n".encode())


class UdpEchoService(DatagramService):
    """Sends every datagram back to its sender, unchanged."""

    name = "udp"

    def reply(self, data: bytes, peer: tuple[str, int]) -> bytes | None:
        return data
