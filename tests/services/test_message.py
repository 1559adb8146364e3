"""The message server over real sockets, on both runtimes: framed and line clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import socket
import ssl
import struct
import threading
import time

import pytest

from enlace.services.base import StreamHandler
from enlace.services.chat import ChatService
from enlace.services.commands import CommandError, Context
from enlace.services.message import MessageService
from tests.conftest import connect, read_exactly, read_to_eof
from tests.services.people import Person


class Framed:
    """A client as in the course material: 4-byte big-endian length, then UTF-8."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = connect(address)

    def send(self, payload: bytes | str) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.sock.sendall(struct.pack(">I", len(data)) + data)

    def recv(self) -> bytes:
        (size,) = struct.unpack(">I", read_exactly(self.sock, 4))
        return read_exactly(self.sock, size)

    def ask(self, payload: bytes | str) -> bytes:
        self.send(payload)
        return self.recv()

    def json(self, **request: object) -> dict:
        return json.loads(self.ask(json.dumps(request)))

    def close(self) -> None:
        self.sock.close()


class Lines:
    """A netcat user: UTF-8 lines."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = connect(address)
        self.file = self.sock.makefile("rb")

    def ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        return self.file.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def chat(serve):
    """The built-in message server, plus a few commands to exercise the machinery."""
    service = MessageService()
    release = threading.Event()

    @service.command
    def fail() -> str:
        """Always fails, like a buggy command."""
        raise RuntimeError("bug")

    @service.command
    def refuse(reason: str) -> str:
        raise CommandError("not_allowed", reason)

    @service.command
    def surrogate() -> str:
        """Returns a str no encoding can send, like a buggy command."""
        return "half of a pair: \ud800"

    @service.command
    def unsendable() -> object:
        """Returns what JSON cannot encode, like a buggy command."""
        return {1, 2}

    @service.command
    async def later(text: str, delay: float = 0.01) -> str:
        await asyncio.sleep(delay)
        return text[::-1]

    @service.command(blocking=True)
    def slowly(text: str) -> str:
        time.sleep(0.01)
        return text * 2

    @service.command
    def shout(ctx: Context, text: str) -> int:
        ctx.service.broadcast({"event": "shout", "text": text}, exclude=ctx.session)
        return len(ctx.service.sessions)

    @service.command
    def add(a: int, b: int = 1) -> int:
        return a + b

    @service.command
    async def stuck() -> str:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return "released"

    server = serve(service)
    server.release = release
    yield server
    release.set()


# -- text commands and JSON requests --------------------------------------------------


def test_the_classic_exchange_in_frames(chat):
    client = Framed(chat.address)
    assert client.ask("/upper hola servidor") == b"HOLA SERVIDOR"
    assert client.ask("/ping") == b"pong"
    assert client.ask("/echo  dos  espacios ") == b"dos  espacios"
    assert client.ask("/UPPER mayúsculas") == "MAYÚSCULAS".encode()
    client.close()


def test_json_request_reply_and_ids(chat):
    client = Framed(chat.address)
    assert client.json(id=7, cmd="upper", args=["hola"]) == {"id": 7, "ok": True, "result": "HOLA"}
    assert client.json(id="a-1", cmd="add", args=[2, 3]) == {"id": "a-1", "ok": True, "result": 5}
    assert client.json(cmd="ping") == {"ok": True, "result": "pong"}  # no id, none echoed
    assert client.json(id=1, cmd="add", line="40 2")["result"] == 42
    assert client.json(id=2, cmd="/upper", args=["slash ignored"])["result"] == "SLASH IGNORED"
    client.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"id": 1, "cmd": "nope"}', "unknown_command"),
        (b'{"id": 1, "cmd": "add", "args": ["x"]}', "bad_arguments"),
        (b'{"id": 1, "cmd": "add", "args": [1, 2, 3]}', "bad_arguments"),
        (b'{"id": 1, "cmd": "add", "args": [true]}', "bad_arguments"),
        (b'{"id": 1, "args": []}', "bad_request"),
        (b'{"id": 1, "cmd": "ping", "args": "x"}', "bad_request"),
        (b'{"id": 1.5, "cmd": "ping"}', "bad_request"),
        (b'{"id": 1, "cmd": "ping", "line": "x", "args": [1]}', "bad_request"),
        (b'{"id": 1, "cmd": "ping",}', "invalid_json"),
        (b'{"id": 1, "cmd": "ping", "x": NaN}', "invalid_json"),
        (b'{"id": 1, "cmd": "ping", "x": "\xff"}', "invalid_utf8"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'{"id": 1, "cmd": "fail"}', "internal_error"),
        (b'{"id": 1, "cmd": "surrogate"}', "internal_error"),
        (b'{"id": 1, "cmd": "unsendable"}', "internal_error"),
        (b'{"id": 1, "cmd": "refuse", "args": ["no way"]}', "not_allowed"),
    ],
)
def test_bad_json_requests_get_an_error_and_the_connection_stays(chat, payload, code):
    client = Framed(chat.address)
    reply = json.loads(client.ask(payload))
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert reply["error"]["message"]
    assert client.ask("/ping") == b"pong"
    client.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"/nope", "unknown_command"),
        (b"/add uno", "bad_arguments"),
        (b"/add", "bad_arguments"),
        (b"/ping extra words", "bad_arguments"),
        (b"/", "bad_request"),
        (b"caf\xc3", "invalid_utf8"),
        (b"/fail", "internal_error"),
        (b"/surrogate", "internal_error"),  # the result cannot be sent: the command's bug
        (b"/unsendable", "internal_error"),
        (b"/refuse porque no", "not_allowed"),
        (b"hola a todos", "no_chat"),
    ],
)
def test_bad_text_commands_get_an_error_and_the_connection_stays(chat, payload, code):
    client = Framed(chat.address)
    reply = client.ask(payload)
    assert reply.startswith(f"ERR {code}: ".encode()), reply
    assert client.ask("/ping") == b"pong"
    client.close()


def test_too_deep_and_too_large_json(serve):
    server = serve(MessageService(max_json=1000))
    client = Framed(server.address)
    deep = '{"cmd": "echo", "args": [' + "[" * 40 + "]" * 40 + "]}"
    assert json.loads(client.ask(deep))["error"]["code"] == "json_too_deep"
    shallow = '{"cmd": "echo", "args": [' + "[" * 20 + "]" * 20 + "]}"
    assert json.loads(client.ask(shallow))["error"]["code"] == "bad_arguments"  # parsed fine
    big = json.dumps({"cmd": "echo", "args": ["x" * 2000]})
    assert json.loads(client.ask(big))["error"]["code"] == "json_too_large"
    assert client.ask("/ping") == b"pong"
    client.close()


def test_a_4_gib_header_is_refused_before_any_payload(chat):
    client = Framed(chat.address)
    assert client.ask("/ping") == b"pong"
    client.sock.sendall(struct.pack(">I", 2**32 - 1) + b"x" * 1000)
    assert client.recv().startswith(b"ERR frame_too_large: frame of 4294967295 bytes")
    assert read_to_eof(client.sock) == b""
    client.close()
    other = Framed(chat.address)
    assert other.ask("/ping") == b"pong"  # everyone else is still served
    other.close()


def test_a_truncated_frame_then_eof_is_a_clean_close(chat):
    client = Framed(chat.address)
    client.sock.sendall(struct.pack(">I", 100) + b"only part")
    client.sock.shutdown(socket.SHUT_WR)
    assert read_to_eof(client.sock) == b""
    client.close()
    assert Framed(chat.address).ask("/ping") == b"pong"


def test_1000_frames_in_one_write_are_answered_in_order(chat):
    client = Framed(chat.address)
    payloads = [f"/echo {i}".encode() for i in range(1000)]
    client.sock.sendall(b"".join(struct.pack(">I", len(p)) + p for p in payloads))
    assert [client.recv() for _ in range(1000)] == [str(i).encode() for i in range(1000)]
    client.close()


def test_async_and_blocking_commands_keep_replies_in_order(chat):
    client = Framed(chat.address)
    requests = ["/later abc", "/upper x", "/slowly ab", "/later xyz 0", "/ping"] * 20
    client.sock.sendall(b"".join(struct.pack(">I", len(r.encode())) + r.encode() for r in requests))
    replies = [client.recv() for _ in requests]
    assert replies == [b"cba", b"X", b"abab", b"zyx", b"pong"] * 20
    client.close()


def test_a_long_pipeline_behind_a_slow_command_is_throttled_and_answered(serve):
    service = MessageService(max_pipeline=4)

    @service.command
    async def nap() -> str:
        await asyncio.sleep(0.001)
        return "z"

    server = serve(service)
    client = Framed(server.address)
    client.sock.sendall(b"".join(struct.pack(">I", 4) + b"/nap" for _ in range(500)))
    assert [client.recv() for _ in range(500)] == [b"z"] * 500
    client.close()


def test_empty_frames_are_keep_alives(chat):
    client = Framed(chat.address)
    client.send(b"")
    client.send(b"")
    assert client.ask("/ping") == b"pong"  # the first frame back answers the ping
    client.close()


def test_quit_says_bye_and_closes(chat):
    client = Framed(chat.address)
    assert client.ask("/quit") == b"bye"
    assert read_to_eof(client.sock) == b""
    client.close()


def test_help_lists_the_commands(chat):
    client = Framed(chat.address)
    text = client.ask("/help").decode()
    for usage in ("/echo [TEXT]", "/upper [TEXT]", "/time", "/ping", "/quit", "/add A [B]"):
        assert usage in text
    client.close()


def test_time_is_iso_8601_utc(chat):
    client = Framed(chat.address)
    reply = client.ask("/time").decode()
    assert reply.endswith("+00:00")
    assert abs(time.time() - __import__("datetime").datetime.fromisoformat(reply).timestamp()) < 60
    client.close()


def test_a_reply_over_the_frame_limit_is_an_error_not_a_truncation(serve):
    server = serve(MessageService(max_frame=100))
    client = Framed(server.address)
    assert client.ask("/echo " + "x" * 90) == b"x" * 90
    # U+0149 (2 bytes) upper-cases to U+02BC U+004E (3 bytes): 99 bytes in, 138 out.
    assert client.ask("/upper " + "ŉ" * 46).startswith(b"ERR reply_too_large: ")
    assert client.ask("/ping") == b"pong"
    client.close()


# -- line clients (netcat) -----------------------------------------------------------------


def test_line_clients_share_the_port(chat):
    client = Lines(chat.address)
    assert client.ask("/upper hola") == "HOLA"
    client.sock.sendall(b"/echo crlf\r\n")
    assert client.file.readline() == b"crlf\n"
    assert client.ask('{"id": 3, "cmd": "upper", "args": ["json too"]}') == (
        '{"id":3,"ok":true,"result":"JSON TOO"}'
    )
    assert client.ask("/nope").startswith("ERR unknown_command")
    client.close()


def test_a_line_too_long_is_an_error_and_a_close(serve):
    server = serve(MessageService(max_line=100))
    client = Lines(server.address)
    client.sock.sendall(b"a" * 500)
    assert client.file.readline().startswith(b"ERR line_too_long: ")
    assert client.file.read() == b""
    client.close()


def test_the_final_unterminated_line_is_still_answered(chat):
    with connect(chat.address) as sock:
        sock.sendall(b"/upper sin salto")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b"SIN SALTO\n"


def test_nothing_is_sent_before_the_first_byte(chat):
    with connect(chat.address, timeout=0.3) as sock, pytest.raises(TimeoutError):
        sock.recv(1)


# -- pushes ----------------------------------------------------------------------------


def test_pushes_reach_others_in_the_form_of_their_latest_request(chat):
    shouter, texter, jsoner = Framed(chat.address), Lines(chat.address), Framed(chat.address)
    assert texter.ask("/ping") == "pong"
    assert jsoner.json(id=1, cmd="ping")["result"] == "pong"
    assert shouter.ask("/shout hola") == b"3"
    assert texter.file.readline() == b"* hola\n"
    assert json.loads(jsoner.recv()) == {"event": "shout", "text": "hola"}
    for client in (shouter, texter, jsoner):
        client.close()


def test_the_busy_refusal_is_a_frame(serve):
    server = serve(MessageService(), max_connections=1)
    first = Framed(server.address)
    assert first.ask("/ping") == b"pong"
    second = Framed(server.address)
    assert second.recv() == b"ERR busy: too many connections (limit 1)"
    first.close()
    second.close()


def test_a_stuck_command_does_not_hold_up_other_clients(chat):
    stuck = Framed(chat.address)
    stuck.send("/stuck")
    other = Framed(chat.address)
    assert other.ask("/upper libre") == b"LIBRE"
    chat.release.set()
    assert stuck.recv() == b"released"
    stuck.close()
    other.close()


# -- slow consumers ------------------------------------------------------------------


def pusher(serve, **limits):
    service = MessageService()

    @service.command
    def blast(ctx: Context, count: int, size: int = 1000) -> str:
        """Push ``count`` numbered events of ``size`` bytes to everyone else."""
        for _ in range(count):
            number = ctx.session.data["sent"] = ctx.session.data.get("sent", 0) + 1
            text = f"{number:06d}" + "x" * size
            ctx.service.broadcast({"event": "n", "text": text}, exclude=ctx.session)
        return "done"

    return serve(service, **limits)


class LogEvent(logging.Handler):
    """Sets an event when enlace logs a line containing ``needle``: a log line to wait on."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.INFO)
        self.needle, self.seen = needle, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()


@pytest.fixture
def dropped():
    handler = LogEvent("(slow consumer: ")
    logger = logging.getLogger("enlace")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.seen
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_a_client_that_stops_reading_is_dropped_and_the_others_get_everything(serve, dropped):
    server = pusher(serve, max_outbound=256 * 1024)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # kernel buffers hold little
    slow.connect(server.address)
    slow.sendall(b"/ping\n")  # a line client that then never reads again
    good, sender = Lines(server.address), Framed(server.address)
    assert good.ask("/ping") == "pong" and sender.ask("/ping") == b"pong"
    received: list[str] = []
    arrived = threading.Condition()

    def read_all() -> None:
        with contextlib.suppress(OSError, ValueError):  # ends when the test closes the socket
            while line := good.file.readline():
                with arrived:
                    received.append(line.decode()[2:8])  # "* 000123xxx..." -> "000123"
                    arrived.notify_all()

    threading.Thread(target=read_all, daemon=True).start()
    # Kernel buffers on loopback grow to several MiB, so push until the server
    # drops the slow client (bounded: 40 MB at most).
    bursts = 0
    while not dropped.is_set() and bursts < 4000:
        assert sender.ask("/blast 10") == b"done"  # the broadcaster is never held up
        bursts += 1
    assert dropped.is_set()
    expected = [f"{n:06d}" for n in range(1, bursts * 10 + 1)]
    with arrived:
        assert arrived.wait_for(lambda: len(received) >= len(expected), timeout=20)
    assert received == expected  # all of it, in order
    slow.close()
    good.close()
    sender.close()


def test_output_left_unread_too_long_drops_the_client(serve, dropped):
    server = pusher(serve, max_outbound=None, slow_timeout=0.5)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(server.address)
    slow.sendall(b"/ping\n")
    sender = Framed(server.address)
    assert sender.ask("/ping") == b"pong"
    bursts = 0
    while not dropped.wait(0.01) and bursts < 400:  # at most 40 MB, all unread
        assert sender.ask("/blast 100") == b"done"
        bursts += 1
    assert dropped.is_set()  # by time: max_outbound is off
    slow.close()
    sender.close()


# -- a TLS client on this plain port ------------------------------------------------------

TLS_REFUSAL = b"ERR tls_not_supported: this port speaks plain TCP, not TLS: connect without --tls\n"


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl), as it would reach the server."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:2] == b"\x16\x03"
    return hello


class WatchedChat(ChatService):
    """The chat, telling the test each piece of bytes a connection has handled."""

    def __init__(self) -> None:
        super().__init__(flood_burst=None)
        self.handled: queue.Queue[bytes] = queue.Queue()

    def handler(self) -> StreamHandler:
        handler = super().handler()
        serve = handler.data_received

        def data_received(data: bytes) -> None:
            serve(data)
            self.handled.put(data)

        handler.data_received = data_received  # type: ignore[method-assign]
        return handler


def tls_client_is_refused(address, watched: WatchedChat | None = None) -> None:
    hello = client_hello()
    with connect(address) as sock:
        if watched is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(hello[:1])
            # The server has read and handled the 0x16 alone before the rest is sent
            # (the other reads are the room member's commands).
            while watched.handled.get(timeout=5) != hello[:1]:
                pass
            sock.sendall(hello[1:])
        else:
            sock.sendall(hello)
        assert read_to_eof(sock) == TLS_REFUSAL  # no greeting, no history, no event


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "0x16-alone-first"])
def test_a_tls_client_gets_only_the_error_and_the_room_never_sees_it(serve, split):
    chat = WatchedChat()
    server = serve(chat)
    member = Person(server.address, "ana")  # greeted, joined general, and named
    tls_client_is_refused(server.address, chat if split else None)
    # The member's next reply comes after anything the refused client caused: no join.
    member.send("/ping")
    assert member.until("pong") == ["pong"]
    member.send("/who")
    assert member.line() == "general: ana"
    member.close()


def test_a_tls_client_never_starts_a_session(serve):
    service = MessageService()
    started = []
    service.on_start = started.append  # type: ignore[method-assign]
    server = serve(service)
    tls_client_is_refused(server.address)
    client = Framed(server.address)
    assert client.ask("/ping") == b"pong"  # the server goes on serving everyone else
    client.close()
    assert len(started) == 1 and started[0].kind == "framed"
