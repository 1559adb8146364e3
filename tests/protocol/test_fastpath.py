"""The per-frame loops of enlace.protocol.fastpath: the C module agrees with the Python ones.

The Python functions are the definitions; they are checked against
``parse_payload`` (the general path's reading of a payload), and the C
functions of ``enlace.speedups`` against them, on generated and arbitrary bytes.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enlace.protocol import fastpath
from enlace.protocol.envelope import TextCommand, parse_payload

try:
    from enlace import speedups
except ImportError:  # pragma: no cover - the CI build requires it (test below)
    speedups = None  # type: ignore[assignment]

needs_speedups = pytest.mark.skipif(
    speedups is None, reason="enlace.speedups is not built (no C compiler at install time)"
)

LIMIT = 100


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# Pieces of command payloads that exercise every rule: case, spaces of every kind
# around name and rest, non-ASCII and invalid bytes, long names, escapes.
NAMES = [b"echo", b"ECHO", b"Up", b"a", b"", b"\tx", b"x\t", b"\xc3\xb1", b"\xff", b"n" * 64]
NAMES += [b"n" * 65, b"/x", b"a\x1fb", b"x\x0b"]
SEPARATORS = [b" ", b"", b"  ", b"\t"]
RESTS = [b"", b"hola", b" hola ", b"\xc2\xa0hola\xe3\x80\x80", b"\xc3\xb1and\xc3\xba", b"\xff"]
RESTS += [b"\x1c x \x1f", b"a b  c", b"\xed\xa0\x80", b"\xc2", b"\x0b\x0c\r\n"]

command_payloads = st.builds(
    lambda name, sep, rest: b"/" + name + sep + rest,
    st.sampled_from(NAMES),
    st.sampled_from(SEPARATORS),
    st.sampled_from(RESTS),
)
other_payloads = st.sampled_from([b"", b"{}", b"//x", b"hola", b"[1]", b"\x00"]) | st.binary(
    max_size=12
)
streams = st.lists(
    st.one_of(command_payloads.map(frame), command_payloads.map(frame), other_payloads.map(frame))
    | st.sampled_from([struct.pack(">I", LIMIT + 1), b"\x00\x00", b"\x00\x00\x00\x09abc"]),
    max_size=8,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(streams)
def test_cut_text_commands_reads_commands_as_parse_payload_does(data: bytes) -> None:
    cut = fastpath.py_cut_text_commands(data, LIMIT)
    if cut is None:
        return
    commands, position = cut
    payloads = []
    at = 0
    while at < position:
        (size,) = struct.unpack_from(">I", data, at)
        payloads.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    assert at == position
    expected = [parse_payload(p) for p in payloads if p]
    assert [TextCommand(name, rest) for name, rest in commands] == expected
    # What is left is a frame not yet whole, within the limit.
    rest = data[position:]
    assert len(rest) < 4 or (
        struct.unpack_from(">I", rest)[0] <= LIMIT
        and len(rest) < 4 + struct.unpack_from(">I", rest)[0]
    )


def test_cut_text_commands_hands_on_what_it_does_not_read() -> None:
    cut = fastpath.py_cut_text_commands
    assert cut(frame(b"/Echo  hola ") + frame(b"") + b"\x00\x00\x00\x05/ec", LIMIT) == (
        [("echo", "hola")],
        4 + 12 + 4,
    )
    for payload in (b"{}", b"//x", b"hola", b"/", b"/ x", b"/\xff", b"/echo \xff", b"/\xc3\xb1"):
        assert cut(frame(b"/ping") + frame(payload), LIMIT) is None
    assert cut(frame(b"/ping") + struct.pack(">I", LIMIT + 1), LIMIT) is None
    assert cut(b"", LIMIT) == ([], 0)


@needs_speedups
@settings(max_examples=1000, deadline=None)
@given(st.one_of(streams, st.binary(max_size=64)), st.sampled_from([0, 5, LIMIT, 1 << 32, None]))
def test_c_agrees_with_python(data: bytes, limit: int) -> None:
    assert speedups.cut_text_commands(data, limit) == fastpath.py_cut_text_commands(data, limit)
    assert speedups.scan_frames(data, limit) == fastpath.py_scan_frames(data, limit)
    # Any bytes-like object, as the runtimes may hand over.
    assert speedups.scan_frames(bytearray(data), limit) == fastpath.py_scan_frames(data, limit)


@needs_speedups
@settings(max_examples=500, deadline=None)
@given(st.text())
def test_frame_text_in_c_agrees_with_python(text: str) -> None:
    try:
        expected = fastpath.py_frame_text(text)
    except UnicodeEncodeError:  # a lone surrogate
        with pytest.raises(UnicodeEncodeError):
            speedups.frame_text(text)
        return
    assert speedups.frame_text(text) == expected
    assert expected == frame(text.encode())


@needs_speedups
def test_c_functions_refuse_wrong_types() -> None:
    with pytest.raises(TypeError):
        speedups.frame_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        speedups.cut_text_commands("text", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        speedups.scan_frames(b"", "5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        speedups.scan_frames(b"")  # type: ignore[call-arg]


def test_scan_frames_walks_headers() -> None:
    scan = fastpath.py_scan_frames
    data = frame(b"ab") + frame(b"") + frame(b"c")
    assert scan(data, LIMIT) == (len(data), 1, -1)
    assert scan(data + b"\x00\x00\x00\x05ab", LIMIT) == (len(data), 1, -1)
    assert scan(data + struct.pack(">I", LIMIT + 1), LIMIT) == (len(data), 1, LIMIT + 1)
    assert scan(b"\x00\x00", LIMIT) == (0, 0, -1)


def test_the_build_ci_asks_for_is_the_one_in_use() -> None:
    # scripts/test installs with ENLACE_BUILD_EXTENSION=yes: the C module must be there.
    if os.environ.get("ENLACE_BUILD_EXTENSION") != "yes":
        pytest.skip("ENLACE_BUILD_EXTENSION=yes is not set (only CI requires the C module)")
    assert fastpath.SPEEDUPS
    assert fastpath.cut_text_commands is speedups.cut_text_commands


def test_enlace_no_speedups_selects_the_python_functions() -> None:
    code = (
        "from enlace.protocol import fastpath as f;"
        "print(f.SPEEDUPS, f.cut_text_commands is f.py_cut_text_commands)"
    )
    env = {**os.environ, "ENLACE_NO_SPEEDUPS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "True"]
