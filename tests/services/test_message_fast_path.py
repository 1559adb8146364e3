"""The message server's fast path answers exactly as its general path does.

Framed text commands that answer at once are served by a fused loop
(:meth:`ServerConnection.receive_text_commands` and the handler's fast path in
:mod:`enlace.services.message`); everything else by the general path. Here the
same bytes go into two handlers, one of them with the fast path switched off,
and everything each does through its transport (writes, pauses, closes) must
be the same, however the bytes are cut and whenever async work finishes:
commands that fail, refuse, close, push, return nothing or too much, take
``ctx``, convert arguments, run async or in a thread, mixed with JSON, chat
text, bad UTF-8, keep-alives and oversize frames. The last test sends such a
mix over real sockets to both runtimes and expects the reference's bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enlace.protocol.envelope import ServerConnection
from enlace.services.commands import CommandError, Context
from enlace.services.message import NO_REPLY, MessageService
from tests.conftest import connect, read_exactly

MAX_FRAME = 64


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def make_service() -> MessageService:
    """The built-in commands (but /time, which changes) and one of each kind of command."""
    service = MessageService(max_frame=MAX_FRAME, max_pipeline=3)

    @service.command
    def fail() -> str:
        raise RuntimeError("a bug")

    @service.command
    def refuse(reason: str) -> str:
        raise CommandError("not_allowed", reason)

    @service.command
    def pair(a: str, b: str = "-") -> str:
        return f"{a}|{b}"

    @service.command
    def need(a: str, b: str) -> str:
        return a + b

    @service.command
    def add(a: int, b: int = 1) -> int:
        return a + b

    @service.command
    def nothing() -> None:
        return None

    @service.command
    def data() -> dict[str, Any]:
        return {"a": [1, 2]}

    @service.command
    def huge() -> str:
        return "x" * (MAX_FRAME + 1)

    @service.command
    def surrogate() -> str:
        return "\ud800"

    @service.command
    def unsendable() -> object:
        return {1}

    @service.command
    def silent(ctx: Context) -> Any:
        ctx.push({"event": "note", "text": "silent"})
        return NO_REPLY

    @service.command
    def shout(ctx: Context, text: str = "") -> str:
        ctx.push({"event": "shout", "text": text})
        return text.upper()

    @service.command
    def announce(text: str = "") -> str:
        # Pushes without ctx: to every session, the caller's among them.
        service.broadcast({"event": "note", "text": text})
        return "sent"

    @service.command
    async def later(text: str = "") -> str:
        await asyncio.sleep(0)
        return text[::-1]

    @service.command(blocking=True)
    def slowly(text: str = "") -> str:
        return text * 2

    return service


class Recorder:
    """A transport without I/O that logs every call; async work waits until ``finish()``."""

    peer = ("127.0.0.1", 4242)

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes]] = []
        self.pending: list[
            tuple[Coroutine[Any, Any, Any], Callable[[Any, BaseException | None], None]]
        ] = []

    def write(self, data: bytes) -> None:
        self.log.append(("write", data))

    def close(self) -> None:
        self.log.append(("close", b""))

    def pause_reading(self) -> None:
        self.log.append(("pause", b""))

    def resume_reading(self) -> None:
        self.log.append(("resume", b""))

    def call_async(
        self,
        work: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        self.pending.append((work, done))

    def finish(self) -> None:
        """Run the async work in order, as the runtimes do (done() may start more)."""
        while self.pending:
            work, done = self.pending.pop(0)
            try:
                result, error = asyncio.run(work), None
            except Exception as exc:
                result, error = None, exc
            done(result, error)
            self.log.append(CALLBACK_ENDS)


def run(chunks: list[bytes], finish_after: list[bool], *, fast: bool) -> list[tuple[str, bytes]]:
    """Feed ``chunks`` to a fresh handler; the log of what it did through its transport."""
    transport = Recorder()
    handler = make_service().handler()
    with mock.patch.object(
        ServerConnection,
        "receive_text_commands",
        # The reference: the general path only, as before the fast path existed.
        ServerConnection.receive_text_commands if fast else lambda self, data: None,
    ):
        handler.connection_made(transport)
        for chunk, finish in zip(chunks, finish_after, strict=True):
            handler.data_received(chunk)
            transport.log.append(CALLBACK_ENDS)
            if finish:
                transport.finish()
        handler.eof_received()
        transport.finish()
    return merged(transport.log)


CALLBACK_ENDS = ("callback ends", b"")


def merged(log: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``log`` with the consecutive writes of one callback as one write.

    A runtime sends the writes of one callback together (the fast path joins its
    replies into one write), so within a callback only their bytes and order count.
    """
    out: list[tuple[str, bytes]] = []
    joinable = False
    for what, data in log:
        if (what, data) == CALLBACK_ENDS:
            joinable = False
            continue
        if what == "write" and joinable:
            out[-1] = ("write", out[-1][1] + data)
        else:
            out.append((what, data))
        joinable = what == "write"
    return out


# Text commands: each either takes the fast path or is handed to the general one.
COMMANDS = [
    b"/echo hola",
    b"/ECHO  dos  espacios ",
    b"/upper \xc3\xb1and\xc3\xba",
    b"/echo \xc2\xa0 hola\xe3\x80\x80",  # Unicode spaces around the rest: stripped
    b"/ping",
    b"/ping extra",
    b"/help",
    b"/fail",
    b"/refuse no",
    b"/refuse",
    b"/pair a",
    b"/pair a b c",
    b"/need a",
    b"/need a b",
    b"/add 2 3",
    b"/add x",
    b"/nothing",
    b"/data",
    b"/huge",
    b"/surrogate",
    b"/unsendable",
    b"/silent",
    b"/shout hey",
    b"/announce news",
    b"/later abc",
    b"/slowly ab",
    b"/nope",
    b"/" + b"n" * 50,
    b"/quit",
]
# Everything else: a chunk holding any of these goes the general way as a whole.
OTHERS = [
    b"/",
    b"/ x",
    b"//x",
    b"hola",
    b"",
    b"\xff",
    b"/echo \xff",
    b"/\xc3\xb1",  # names that are not ASCII, end in a space, or are long: general path
    b"/echo\t",
    b"/" + b"n" * 70,
    b'{"id": 1, "cmd": "echo", "args": ["j"]}',
    b'{"id": 2, "cmd": "later", "args": ["j"]}',
    b'{"cmd": "silent"}',
    b"[1]",
]
streams = st.lists(
    st.one_of(
        *[st.sampled_from(COMMANDS).map(frame)] * 6,  # mostly chunks the fast path takes
        st.sampled_from(OTHERS).map(frame),
        st.just(struct.pack(">I", MAX_FRAME + 1)),  # oversize: the error, then a close
    ),
    min_size=1,
    max_size=12,
).map(b"".join)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = [0, *sorted(min(p, len(data)) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(marks)]


# The fastpath fixture patches the module once per test, for every example alike.
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=streams,
    points=st.lists(st.integers(min_value=0, max_value=400), max_size=5),
    finishes=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_property_fast_path_does_what_the_general_path_does(
    fastpath: str, data: bytes, points: list[int], finishes: list[bool]
) -> None:
    for chunks in ([data], cut(data, points)):
        finish_after = [finishes[i % len(finishes)] for i in range(len(chunks))]
        assert run(chunks, finish_after, fast=True) == run(chunks, finish_after, fast=False)


@pytest.mark.parametrize("first", COMMANDS + OTHERS)
def test_every_pair_in_one_chunk(fastpath: str, first: bytes) -> None:
    for second in COMMANDS:
        data = frame(first) + frame(second)
        for finish in (False, True):
            assert run([data], [finish], fast=True) == run([data], [finish], fast=False)


def test_fast_path_byte_by_byte(fastpath: str) -> None:
    data = b"".join(frame(p) for p in COMMANDS + OTHERS if p != b"/quit")
    chunks = [data[i : i + 1] for i in range(len(data))]
    finish_after = [i % 7 == 0 for i in range(len(chunks))]
    reference = run(chunks, finish_after, fast=False)
    assert run(chunks, finish_after, fast=True) == reference
    assert run([data], [False], fast=True) == run([data], [False], fast=False)
    assert ("write", frame(b"hola")) in reference


def test_the_fast_path_serves_what_it_can_and_hands_on_the_rest(fastpath: str) -> None:
    # One chunk: answered in order whichever path serves each request. /later holds the
    # rest back until it answers; with three waiting (max_pipeline) reading pauses.
    payloads = [b"/echo a", b"/later bc", b"/echo d", b"/nope", b"/add 1 2", b"/shout e", b"/quit"]
    log = run([b"".join(map(frame, payloads))], [False], fast=True)
    assert log == [
        ("write", frame(b"a")),
        ("pause", b""),
        # The writes of one callback (here /later's done()) as one: see merged().
        (
            "write",
            frame(b"cb")
            + frame(b"d")
            + frame(b"ERR unknown_command: unknown command /nope (try /help)")
            + frame(b"3")
            + frame(b"* e")
            + frame(b"E")
            + frame(b"bye"),
        ),
        ("close", b""),
        ("resume", b""),  # the backlog is empty (/quit dropped it); the runtime ignores it
    ]


def test_fast_path_over_sockets_on_both_runtimes(serve) -> None:
    payloads = [p for p in COMMANDS + OTHERS if p not in (b"/quit", b"/fail")] * 20
    data = b"".join(map(frame, payloads))
    expected = b"".join(out for what, out in run([data], [True], fast=False) if what == "write")
    server = serve(make_service())
    sock = connect(server.address)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    assert read_exactly(sock, len(expected)) == expected
    sock.close()
