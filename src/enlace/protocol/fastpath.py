"""The message server's per-frame loops: in C when ``enlace.speedups`` is built, else in Python.

Most requests a message server gets are small framed text commands, several
per read when clients pipeline; the echo server gets whole frames. These
functions do, for a whole chunk at once, the work that would otherwise cost
a few Python operations per frame: cutting frames, reading a command's name
and argument text, framing a reply text, checking that a chunk is whole frames.

The Python functions below are the definitions; ``enlace/speedups.c`` must
return exactly what they return (tests/protocol/test_fastpath.py checks it on
arbitrary input). The C module is optional (``pip install`` builds it when a C
compiler is present; ``ENLACE_BUILD_EXTENSION=yes`` makes that required,
``=no`` skips it), and ``ENLACE_NO_SPEEDUPS=1`` in the environment uses the
Python functions even when it is built. :data:`SPEEDUPS` says which are in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from enlace.protocol.framing import HEADER_SIZE, pack_header, unpack_header

__all__ = [
    "MAX_QUICK_NAME",
    "SPEEDUPS",
    "cut_text_commands",
    "frame_text",
    "py_cut_text_commands",
    "py_frame_text",
    "py_scan_frames",
    "scan_frames",
]

#: A command name longer than this is left to the general path (no command has one).
MAX_QUICK_NAME = 64

_NO_LIMIT = 1 << 32  # more than a frame header can say: as a limit, none


def py_cut_text_commands(
    data: bytes, limit: int | None
) -> tuple[list[tuple[str, str]], int] | None:
    """The text commands among the whole frames at the start of ``data``, or None.

    Returns ``(commands, position)``: each whole frame before ``position`` is a
    keep-alive (empty; skipped) or a text command, returned as ``(name, rest)``
    exactly as the message protocol reads ``/name rest`` (name lower-cased,
    rest stripped); ``data[position:]`` is the start of a frame not yet whole.
    Returns None, so that the caller reads the chunk the general way, when a
    frame's header exceeds ``limit`` (None: no limit) or a whole frame is
    anything else: JSON,
    chat text, invalid UTF-8, or a name that is empty, longer than
    :data:`MAX_QUICK_NAME`, not ASCII, or has spaces around it.
    """
    if limit is None:
        limit = _NO_LIMIT
    commands: list[tuple[str, str]] = []
    position, end = 0, len(data)
    while end - position >= HEADER_SIZE:
        (size,) = unpack_header(data, position)
        if size > limit:
            return None
        start = position + HEADER_SIZE
        stop = start + size
        if stop > end:
            break
        position = stop
        if not size:
            continue  # a keep-alive
        if data[start] != 0x2F or (size > 1 and data[start + 1] == 0x2F):
            return None  # "/" but not "//" (chat text, escaped)
        try:
            text = data[start + 1 : stop].decode()
        except UnicodeDecodeError:
            return None
        name, _, rest = text.partition(" ")
        if not name or len(name) > MAX_QUICK_NAME or not name.isascii() or name != name.strip():
            return None
        commands.append((name.lower(), rest.strip()))
    return commands, position


def py_frame_text(text: str) -> bytes:
    """``text`` UTF-8 encoded in a frame: its 4-byte big-endian length, then it.

    The caller bounds the text by its frame limit; ValueError over 4 GiB (what a
    header can say), UnicodeEncodeError for a lone surrogate.
    """
    payload = text.encode()
    if len(payload) >= _NO_LIMIT:
        raise ValueError("the text is too long for a frame header")
    return pack_header(len(payload)) + payload


def py_scan_frames(data: bytes, limit: int | None) -> tuple[int, int, int]:
    """Walk the frame headers of ``data``: ``(position, empty, oversize)``.

    ``data[:position]`` is whole frames, ``empty`` of them empty; the walk stops
    at a frame not yet whole or at a header announcing more than ``limit``
    bytes (None: no limit), whose size is then ``oversize`` (else -1).
    """
    if limit is None:
        limit = _NO_LIMIT
    position = empty = 0
    end = len(data)
    while end - position >= HEADER_SIZE:
        (size,) = unpack_header(data, position)
        if size > limit:
            return position, empty, size
        if end - position - HEADER_SIZE < size:
            break
        position += HEADER_SIZE + size
        empty += not size
    return position, empty, -1


cut_text_commands: Callable[[bytes, int | None], tuple[list[tuple[str, str]], int] | None]
cut_text_commands = py_cut_text_commands
frame_text: Callable[[str], bytes] = py_frame_text
scan_frames: Callable[[bytes, int | None], tuple[int, int, int]] = py_scan_frames
#: Whether the C functions of ``enlace.speedups`` are in use.
SPEEDUPS = False

if not os.environ.get("ENLACE_NO_SPEEDUPS"):
    try:
        from enlace import speedups as _speedups
    except ImportError:  # not built (no C compiler at install time): the Python ones serve
        pass
    else:
        cut_text_commands = _speedups.cut_text_commands
        frame_text = _speedups.frame_text
        scan_frames = _speedups.scan_frames
        SPEEDUPS = True
