"""The four ways of cutting a byte stream into messages, as sans-I/O decoders.

TCP delivers a stream of bytes, not messages: one ``send`` may arrive as three
``recv`` results, and three sends as one. A *framing* is the rule that puts the
message boundaries back. The classic material uses four:

=============  ==========================================  ===========================
framing        rule                                        decoder
=============  ==========================================  ===========================
length prefix  4-byte big-endian length, then the payload  :class:`LengthPrefixDecoder`
delimiter      payload, then a delimiter such as ``\\n``    :class:`DelimiterDecoder`
fixed length   every message has the same size             :class:`FixedLengthDecoder`
until close    the whole stream is one message             :class:`UntilCloseDecoder`
=============  ==========================================  ===========================

Each decoder is fed bytes with :meth:`~Decoder.feed` and returns the complete
payloads found so far; :meth:`~Decoder.eof` says the stream ended and returns
whatever a final message may be, or raises :class:`~enlace.exceptions.IncompleteFrame`.
Limits are checked as early as possible: a length header over ``max_size`` raises
:class:`~enlace.exceptions.FrameTooLarge` before a single payload byte is buffered.
After raising, a decoder stays failed: every later call raises the same error.

Nothing here does I/O, so the same decoders serve the thread runtime, the
asyncio runtime and any other loop a user brings.
"""

from __future__ import annotations

import struct
from typing import Protocol

from enlace.exceptions import (
    FrameTooLarge,
    IncompleteFrame,
    LineTooLong,
    LocalProtocolError,
    RemoteProtocolError,
)
from enlace.limits import MAX_FRAME, MAX_LINE

__all__ = [
    "HEADER_SIZE",
    "Decoder",
    "DelimiterDecoder",
    "FixedLengthDecoder",
    "LengthPrefixDecoder",
    "UntilCloseDecoder",
    "encode_delimited",
    "encode_fixed",
    "encode_length_prefixed",
    "pack_header",
    "unpack_header",
]

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
"""Bytes in a length prefix: 4, as Java's ``DataOutputStream.writeInt`` writes."""

pack_header = _HEADER.pack
"""The 4-byte header for a payload of n bytes, unchecked: for callers that bounded n."""

unpack_header = _HEADER.unpack_from
"""``unpack_header(data, offset)``: the 1-tuple ``(n,)`` read from a header at ``offset``."""

_MAX_HEADER_VALUE = 2**32 - 1


class Decoder(Protocol):
    """What every decoder offers; the runtimes depend on nothing more."""

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes from the stream; return the payloads they complete, in order."""
        ...

    def eof(self) -> list[bytes]:
        """Say the stream ended; return a final payload if the framing allows one."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete payload."""
        ...

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error the decoder failed with (raised by the next call), or ``None``."""
        ...


class _Failing:
    """Remembers the first error so that a failed decoder keeps failing.

    When bytes complete some payloads and then break the rules, :meth:`feed`
    returns those payloads (they were valid, and their senders expect answers)
    and raises the error on the next call; :attr:`error` tells at once.
    """

    _error: RemoteProtocolError | None = None

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error this decoder failed with, or ``None`` while it is healthy."""
        return self._error

    def _fail(self, error: RemoteProtocolError) -> RemoteProtocolError:
        self._error = error
        return error

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


class LengthPrefixDecoder(_Failing):
    """Decode frames made of a 4-byte unsigned big-endian length and a payload.

    ``max_size`` bounds the payload (``None``: only the 4 GiB the header can
    express). An empty frame decodes to ``b""``; whether it means anything (the
    message server treats it as a keep-alive) is up to the caller.
    """

    def __init__(self, *, max_size: int | None = MAX_FRAME) -> None:
        self._max_size = max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def max_size(self) -> int | None:
        return self._max_size

    def at_boundary(self) -> bool:
        """Whether the next bytes fed start with a header: healthy, no partial frame held."""
        return not self._buffer and self._error is None

    def feed(self, data: bytes) -> list[bytes]:
        self._check()
        frames: list[bytes] = []
        try:
            if self._buffer:
                self._buffer += data
                with memoryview(self._buffer) as view:
                    position = self._cut(view, len(self._buffer), frames)
                del self._buffer[:position]  # only once the view is released
            else:
                # Fast path: frames that arrive whole are sliced straight out of ``data``
                # (slicing bytes copies once, which is the one copy a payload needs).
                position = self._cut(data, len(data), frames)
                if position < len(data):
                    self._buffer = bytearray(data[position:])
        except RemoteProtocolError:
            if not frames:
                raise
        return frames

    def _cut(self, source: bytes | memoryview, end: int, frames: list[bytes]) -> int:
        position = 0
        limit = self._max_size
        unpack_from = _HEADER.unpack_from
        while end - position >= HEADER_SIZE:
            (size,) = unpack_from(source, position)
            if limit is not None and size > limit:
                raise self._fail(
                    FrameTooLarge(
                        f"frame of {size} bytes exceeds the {limit}-byte limit",
                        size=size,
                        limit=limit,
                    )
                )
            start = position + HEADER_SIZE
            if end - start < size:
                break
            position = start + size
            frames.append(bytes(source[start:position]))
        return position

    def eof(self) -> list[bytes]:
        self._check()
        if self._buffer:
            raise self._fail(
                IncompleteFrame(
                    f"stream ended inside a frame ({len(self._buffer)} bytes pending)",
                    pending=len(self._buffer),
                )
            )
        return []


class DelimiterDecoder(_Failing):
    """Decode payloads that each end with ``delimiter`` (by default ``b"\\n"``).

    Payloads are returned without the delimiter; with ``strip_cr`` (the default,
    for telnet, netcat on Windows and HTTP-style peers) a ``\\r`` before a ``\\n``
    delimiter is removed too. ``max_size`` bounds a payload without its
    delimiter, and is enforced while the line is still incomplete.

    At the end of the stream, bytes after the last delimiter are returned as a
    final payload, as a file's last line without a newline is still a line;
    with ``final_partial=False`` they raise :class:`IncompleteFrame` instead.
    """

    def __init__(
        self,
        delimiter: bytes = b"\n",
        *,
        max_size: int | None = MAX_LINE,
        strip_cr: bool = True,
        final_partial: bool = True,
    ) -> None:
        if not delimiter:
            raise ValueError("the delimiter must not be empty")
        self._delimiter = delimiter
        self._max_size = max_size
        self._strip_cr = strip_cr and delimiter == b"\n"
        self._final_partial = final_partial
        self._buffer = bytearray()
        # Where to resume searching, so a long line arriving in pieces is scanned once.
        self._scanned = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._check()
        buffer = self._buffer
        buffer += data
        lines: list[bytes] = []
        delimiter, width = self._delimiter, len(self._delimiter)
        start = 0
        search = max(0, self._scanned - width + 1)
        try:
            while (found := buffer.find(delimiter, search)) != -1:
                line = bytes(buffer[start:found])
                if self._strip_cr and line.endswith(b"\r"):
                    line = line[:-1]
                self._check_size(len(line))
                lines.append(line)
                start = search = found + width
            if start:
                del buffer[:start]
            self._scanned = len(buffer)
            if self._max_size is not None:
                # The tail may hold a CR and all but one byte of the delimiter: not payload yet.
                allowance = (width - 1) + (1 if self._strip_cr and buffer.endswith(b"\r") else 0)
                if len(buffer) > self._max_size + allowance:
                    self._check_size(len(buffer), complete=False)
        except RemoteProtocolError:
            if not lines:
                raise
        return lines

    def _check_size(self, size: int, *, complete: bool = True) -> None:
        limit = self._max_size
        if limit is None or size <= limit:
            return
        what = f"line of {size} bytes" if complete else f"line of more than {limit} bytes"
        raise self._fail(
            LineTooLong(f"{what} exceeds the {limit}-byte limit", size=size, limit=limit)
        )

    def eof(self) -> list[bytes]:
        self._check()
        if not self._buffer:
            return []
        if not self._final_partial:
            raise self._fail(
                IncompleteFrame(
                    f"stream ended inside a line ({len(self._buffer)} bytes pending)",
                    pending=len(self._buffer),
                )
            )
        line, self._buffer = bytes(self._buffer), bytearray()
        self._check_size(len(line))
        return [line]


class FixedLengthDecoder(_Failing):
    """Decode payloads that all have exactly ``size`` bytes."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("the size must be positive")
        self._size = size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._check()
        self._buffer += data
        size = self._size
        count = len(self._buffer) // size
        if not count:
            return []
        with memoryview(self._buffer) as view:
            chunks = [bytes(view[i * size : (i + 1) * size]) for i in range(count)]
        del self._buffer[: count * size]
        return chunks

    def eof(self) -> list[bytes]:
        self._check()
        if self._buffer:
            raise self._fail(
                IncompleteFrame(
                    f"stream ended after {len(self._buffer)} of {self._size} bytes",
                    pending=len(self._buffer),
                )
            )
        return []


class UntilCloseDecoder(_Failing):
    """Decode the whole stream as one payload, delivered when it ends.

    This is how the classic "send, shut down writing, read to EOF" exchange
    delimits its one message. ``max_size`` bounds what is held meanwhile.
    """

    def __init__(self, *, max_size: int | None = MAX_FRAME) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._ended = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._check()
        limit = self._max_size
        if limit is not None and len(self._buffer) + len(data) > limit:
            raise self._fail(
                FrameTooLarge(
                    f"message of more than {limit} bytes exceeds the {limit}-byte limit",
                    size=None,
                    limit=limit,
                )
            )
        self._buffer += data
        return []

    def eof(self) -> list[bytes]:
        self._check()
        if self._ended:
            return []  # the one message was delivered already
        self._ended = True
        payload, self._buffer = bytes(self._buffer), bytearray()
        return [payload]


def encode_length_prefixed(payload: bytes, *, max_size: int | None = MAX_FRAME) -> bytes:
    """Return ``payload`` behind its 4-byte big-endian length.

    Raises :class:`LocalProtocolError` if the payload exceeds ``max_size``, so
    a peer applying the same limit would not refuse it.
    """
    size = len(payload)
    limit = _MAX_HEADER_VALUE if max_size is None else min(max_size, _MAX_HEADER_VALUE)
    if size > limit:
        raise LocalProtocolError(f"cannot send a frame of {size} bytes: the limit is {limit}")
    return _HEADER.pack(size) + payload


def encode_delimited(
    payload: bytes, delimiter: bytes = b"\n", *, max_size: int | None = MAX_LINE
) -> bytes:
    """Return ``payload`` followed by ``delimiter``.

    Raises :class:`LocalProtocolError` if the payload contains the delimiter
    (the peer would see two messages) or exceeds ``max_size``.
    """
    # Not just "delimiter in payload": the payload's tail may complete the delimiter
    # early (b"x\r\n" + b"\r\n\r\n"), and the peer would cut the line there.
    if (payload + delimiter).find(delimiter) != len(payload):
        raise LocalProtocolError(f"cannot send a line that contains the delimiter {delimiter!r}")
    if max_size is not None and len(payload) > max_size:
        raise LocalProtocolError(
            f"cannot send a line of {len(payload)} bytes: the limit is {max_size}"
        )
    return payload + delimiter


def encode_fixed(payload: bytes, size: int) -> bytes:
    """Return ``payload`` if it has exactly ``size`` bytes, else raise.

    Padding would change the message, so a wrong size is an error, not a fix-up.
    """
    if len(payload) != size:
        raise LocalProtocolError(
            f"cannot send {len(payload)} bytes with a fixed-length framing of {size}"
        )
    return payload
