"""The browser chat's WebSocket endpoint over real loopback sockets.

Clients are the ``websockets`` library (an independent implementation, as a
browser is) and a raw frame-by-frame client for what libraries never send. The
chat's TCP side is served by enlace's own servers, and an ``nc``-style line
client shares rooms with the WebSocket users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

import enlace.asyncio
import enlace.sync
from enlace.services.chat import ChatService
from enlace.web.server import WebServer
from enlace.web.websocket import WebSocketEndpoint
from tests.conftest import LoopThread
from tests.services.people import Person
from tests.web.wsclient import CLOSE, PING, PONG, TEXT, CountingEndpoint, RawClient, frame


@dataclass
class Bridge:
    chat: ChatService
    chat_address: tuple[str, int]  # the chat's TCP port (nc, enlace chat)
    web: WebServer
    endpoint: CountingEndpoint
    loop: LoopThread

    @property
    def address(self) -> tuple[str, int]:
        return self.web.address

    @property
    def url(self) -> str:
        return f"ws://{self.address[0]}:{self.address[1]}/ws"

    def connect(self, **options: Any) -> ClientConnection:
        return ws_connect(self.url, open_timeout=5, close_timeout=5, **options)

    def wait_all_closed(self) -> None:
        self.loop.run(self.endpoint.all_closed.wait(), timeout=10)

    def open_count(self) -> int:
        async def count() -> int:
            return len(self.endpoint.endpoint.connections)

        return int(self.loop.run(count()))

    def shutdown(self) -> None:
        self.loop.run(self.web.shutdown())


@pytest.fixture
def bridge() -> Iterator[Callable[..., Bridge]]:
    """The web server with the chat's endpoint, and the chat on enlace's TCP server.

    With the asyncio runtime both run on one event loop, as under ``enlace up``;
    with threads, the chat's TCP clients are served on threads of their own.
    """
    loop = LoopThread()
    started: list[Any] = []

    def start(
        *, chat: ChatService | None = None, runtime: str = "asyncio", **options: Any
    ) -> Bridge:
        chat = chat or ChatService(flood_burst=None)
        if runtime == "threads":
            tcp: Any = enlace.sync.Server(chat, "127.0.0.1", 0)
            tcp.start()
        else:
            tcp = enlace.asyncio.Server(chat, "127.0.0.1", 0)
            loop.run(tcp.start())
        started.append(tcp)

        async def make() -> tuple[WebServer, CountingEndpoint]:
            endpoint = CountingEndpoint(WebSocketEndpoint(chat, **options))
            web = WebServer(None, "127.0.0.1", 0, websocket=endpoint)
            await web.start()
            return web, endpoint

        web, endpoint = loop.run(make())
        started.append(web)
        return Bridge(chat, tcp.address, web, endpoint, loop)

    yield start
    for server in started:
        if isinstance(server, enlace.sync.Server):
            server.shutdown(0.0)
        else:
            loop.run(server.shutdown(0.0))
    loop.close()


def request(ws: ClientConnection, request_id: int, cmd: str, *args: Any) -> dict[str, Any]:
    """Send a JSON request; return its reply (events and text before it are skipped)."""
    ws.send(json.dumps({"id": request_id, "cmd": cmd, "args": list(args)}))
    return until(ws, lambda value: value.get("id") == request_id)


def until(ws: ClientConnection, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        message = ws.recv(timeout=5)
        assert isinstance(message, str), "the server sent a binary message"
        if message.startswith("{"):
            value = json.loads(message)
            if test(value):
                return value


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; return its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


# -- the handshake ---------------------------------------------------------------------


def test_a_client_without_origin_is_served_and_speaks_the_message_protocol(bridge):
    b = bridge()
    with b.connect() as ws:
        assert request(ws, 1, "ping") == {"id": 1, "ok": True, "result": "pong"}
        assert request(ws, "x", "upper", "hola") == {"id": "x", "ok": True, "result": "HOLA"}
        error = request(ws, 2, "nope")
        assert error["ok"] is False and error["error"]["code"] == "unknown_command"


def test_the_greeting_comes_first_in_text_form_then_json(bridge):
    b = bridge()
    with b.connect() as ws:
        ws.send(json.dumps({"id": 1, "cmd": "ping"}))
        first = ws.recv(timeout=5)
        assert isinstance(first, str) and first.startswith("* welcome, guest-")
        assert until(ws, lambda v: "id" in v) == {"id": 1, "ok": True, "result": "pong"}


def test_a_page_of_this_server_may_connect(bridge):
    b = bridge()
    host, port = b.address
    with b.connect(origin=f"http://{host}:{port}") as ws:
        assert request(ws, 1, "ping")["result"] == "pong"


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://127.0.0.1:1", "https://127.0.0.1", "null", "file://"],
)
def test_a_page_of_another_origin_is_refused_with_403(bridge, origin):
    b = bridge()
    with pytest.raises(InvalidStatus) as refused:
        b.connect(origin=origin)
    response = refused.value.response
    assert response.status_code == 403
    assert b"may not connect here" in response.body
    assert b.open_count() == 0
    with b.connect() as ws:  # the server goes on serving
        assert request(ws, 1, "ping")["result"] == "pong"


def test_listed_origins_are_allowed(bridge):
    b = bridge(allowed_origins=["https://chat.example.org"])
    with b.connect(origin="https://chat.example.org") as ws:
        assert request(ws, 1, "ping")["result"] == "pong"
    with pytest.raises(InvalidStatus) as refused:
        b.connect(origin="https://other.example.org")
    assert refused.value.response.status_code == 403


def test_a_token_is_required_when_configured(bridge):
    b = bridge(token="s3cret", fail_delay=0.05)
    for url in (b.url, b.url + "?token=wrong"):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, open_timeout=5)
        assert refused.value.response.status_code == 403
        assert b"token" in refused.value.response.body
    with ws_connect(b.url + "?token=s3cret", open_timeout=5) as ws:
        assert request(ws, 1, "ping")["result"] == "pong"
    bearer = {"Authorization": "Bearer s3cret"}
    with ws_connect(b.url, additional_headers=bearer, open_timeout=5) as ws:
        assert request(ws, 1, "ping")["result"] == "pong"
    with pytest.raises(InvalidStatus):
        ws_connect(b.url, additional_headers={"Authorization": "Bearer nope"}, open_timeout=5)


def test_a_bad_handshake_gets_400_and_a_close(bridge):
    b = bridge()
    with socket.create_connection(b.address, timeout=5) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in answer
    assert answer.endswith(b"not a WebSocket upgrade: Missing header, 'Sec-WebSocket-Key'\n")
    b.wait_all_closed()
    assert b.endpoint.on_close_calls == 1


def test_an_unsupported_version_gets_426_with_the_version_we_speak(bridge):
    b = bridge()
    raw = RawClient(b.address, headers={"Sec-WebSocket-Version": "8"})
    assert raw.status == 426
    assert b"Sec-WebSocket-Version: 13\r\n" in raw.head
    raw.body()
    raw.close()


def test_frames_sent_along_with_the_handshake_are_served(bridge):
    b = bridge()
    ping = json.dumps({"id": 7, "cmd": "ping"}).encode()
    raw = RawClient(b.address, first_frames=frame(TEXT, ping))
    assert raw.status == 101
    assert raw.json_until(lambda v: v.get("id") == 7)["result"] == "pong"
    raw.close()


# -- messages and their limits ---------------------------------------------------------


def test_a_fragmented_message_is_one_request(bridge):
    b = bridge()
    raw = RawClient(b.address)
    body = json.dumps({"id": 3, "cmd": "echo", "args": ["¡hola, señora!"]}).encode()
    raw.send(TEXT, body[:5], fin=False)
    raw.send(PING, b"are you there")  # control frames may come between fragments
    raw.send(0x0, body[5:12], fin=False)
    raw.send(0x0, body[12:])
    assert raw.receive() == (PONG, b"are you there")
    assert raw.json_until(lambda v: v.get("id") == 3)["result"] == "¡hola, señora!"
    raw.close()


def test_a_message_over_the_limit_is_closed_with_1009(bridge):
    b = bridge()
    with b.connect(max_size=None) as ws:
        assert request(ws, 1, "ping")["result"] == "pong"
        ws.send("x" * (1024 * 1024 + 1))
        code, reason = closed_with(ws)
        assert code == 1009
        assert reason == "message over the 1048576-byte limit"
    b.wait_all_closed()


def test_a_message_of_exactly_the_limit_is_served(bridge):
    b = bridge(max_message=1000)
    with b.connect() as ws:
        body = json.dumps({"id": 1, "cmd": "echo", "args": [""]})
        padded = body[:-2] + " " * (1000 - len(body)) + body[-2:]  # JSON spacing counts
        assert len(padded) == 1000
        ws.send(padded)
        assert until(ws, lambda v: v.get("id") == 1)["ok"] is True


def test_a_message_over_the_limit_in_fragments_is_refused_before_it_ends(bridge):
    b = bridge(max_message=1000)
    raw = RawClient(b.address)
    raw.send(TEXT, b"a" * 600, fin=False)
    raw.send(0x0, b"a" * 600, fin=False)  # 1200 bytes so far, and the message is not over
    assert raw.close_code()[0] == 1009
    raw.send(CLOSE, struct.pack(">H", 1009))
    assert raw.at_eof()
    raw.close()


def test_binary_messages_are_closed_with_1003(bridge):
    b = bridge()
    with b.connect() as ws:
        ws.send(b"\x00\x00\x00\x04ping")
        assert closed_with(ws) == (1003, "binary messages are not supported: send JSON as text")


def test_invalid_utf8_is_closed_with_1007(bridge):
    b = bridge()
    raw = RawClient(b.address)
    raw.send(TEXT, b'{"cmd":"echo","args":["\xff"]}')
    assert raw.close_code()[0] == 1007
    assert raw.at_eof()
    raw.close()


# -- liveness ----------------------------------------------------------------------------


def test_pings_answered_keep_the_connection_open(bridge):
    b = bridge(ping_interval=0.05, ping_timeout=0.5)
    raw = RawClient(b.address)
    for _ in range(3):
        opcode, payload = raw.receive()
        assert opcode == PING
        raw.send(PONG, payload)
    raw.send_json({"id": 1, "cmd": "ping"})
    assert raw.json_until(lambda v: v.get("id") == 1)["result"] == "pong"
    raw.close()


def test_a_peer_that_does_not_answer_pings_is_closed_with_1011(bridge):
    b = bridge(ping_interval=0.05, ping_timeout=0.2)
    raw = RawClient(b.address)
    assert raw.receive()[0] == PING  # and no pong
    assert raw.close_code() == (1011, "keepalive ping timeout")
    assert raw.at_eof()
    raw.close()
    b.wait_all_closed()


def test_the_peer_closing_is_answered_and_the_chat_session_ends(bridge):
    b = bridge()
    nc = Person(b.chat_address, "nc")
    raw = RawClient(b.address)
    raw.send_json({"id": 1, "cmd": "nick", "args": ["web"]})
    raw.json_until(lambda v: v.get("id") == 1)
    raw.send(CLOSE, struct.pack(">H", 1000) + b"bye")
    assert raw.close_code() == (1000, "bye")
    assert raw.at_eof()
    assert nc.until("web left the chat")
    b.wait_all_closed()
    assert b.endpoint.on_close_calls == 1
    nc.close()


def test_shutdown_closes_with_1001_and_calls_on_close_once_each(bridge):
    b = bridge()
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(b.connect()) for _ in range(3)]
        for number, ws in enumerate(clients):
            request(ws, number, "ping")

        b.shutdown()  # the web server's: it closes its WebSocket connections
        for ws in clients:
            assert closed_with(ws) == (1001, "server shutting down")
    b.wait_all_closed()
    assert b.endpoint.on_close_calls == 3


def test_a_peer_that_does_not_answer_the_close_is_dropped_after_the_close_timeout(bridge):
    b = bridge(close_timeout=0.2)
    raw = RawClient(b.address)
    raw.send_json({"id": 1, "cmd": "ping"})
    raw.json_until(lambda v: v.get("id") == 1)

    b.shutdown()
    assert raw.close_code()[0] == 1001  # and we never answer it
    assert raw.at_eof()
    raw.close()


def test_quit_ends_with_a_normal_close(bridge):
    b = bridge()
    with b.connect() as ws:
        assert request(ws, 1, "quit")["result"] == "bye"
        assert closed_with(ws) == (1000, "closed by the chat")


# -- the bridge to the chat ----------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["asyncio", "threads"])
def test_browser_and_nc_users_share_a_room(bridge, runtime):
    b = bridge(runtime=runtime)
    nc = Person(b.chat_address, "nc")
    nc.send("/join python")
    nc.until("you are in python")
    with b.connect() as ana:
        assert request(ana, 1, "nick", "ana")["result"] == "you are now ana"
        assert request(ana, 2, "join", "python")["result"] == "you are in python"
        assert nc.until("ana joined python")
        assert request(ana, 3, "say", "hola desde el navegador") == {
            "id": 3,
            "ok": True,
            "result": None,
        }
        assert nc.until("hola desde")[-1] == "[python] ana: hola desde el navegador"
        nc.send("hola, ana")  # from nc's thread or loop, pushed to the browser's
        event = until(ana, lambda v: v.get("event") == "message" and v["from"] == "nc")
        assert (event["room"], event["text"]) == ("python", "hola, ana")
        who = request(ana, 4, "who")["result"]
        assert who == "python: ana, nc" or who == "python: nc, ana"
        nc.send("/msg ana en privado")
        private = until(ana, lambda v: v.get("event") == "private")
        assert (private["from"], private["to"], private["text"]) == ("nc", "ana", "en privado")
        history = request(ana, 5, "history", 10)
        assert history["result"] == "2 messages of python"  # not the private one
    assert nc.until("ana left the chat")
    nc.close()


def test_history_is_replayed_in_json_on_join(bridge):
    b = bridge()
    nc = Person(b.chat_address, "nc")
    nc.send("/join lobby")
    nc.until("you are in lobby")
    nc.send("primero")
    nc.until("primero")
    with b.connect() as ws:
        ws.send(json.dumps({"id": 1, "cmd": "join", "args": ["lobby"]}))
        seen = []
        while True:
            value = until(ws, lambda v: True)
            seen.append(value)
            if value.get("id") == 1:
                break
        replayed = [v for v in seen if v.get("event") == "message"]  # before the reply
        assert [(v["from"], v["text"]) for v in replayed] == [("nc", "primero")]
    nc.close()


def test_async_commands_answer_in_order_on_the_loop(bridge):
    chat = ChatService(flood_burst=None)

    @chat.command
    async def later(text: str) -> str:
        """Answer after giving the event loop a turn (as a command awaiting a hub does)."""
        await asyncio.sleep(0)
        return text.upper()

    b = bridge(chat=chat)
    with b.connect() as ws:
        for number in range(3):
            ws.send(json.dumps({"id": number, "cmd": "later", "args": [f"m{number}"]}))
        replies = [until(ws, lambda v: "id" in v) for _ in range(3)]
        assert [(r["id"], r["result"]) for r in replies] == [(0, "M0"), (1, "M1"), (2, "M2")]


def test_chat_rules_apply_to_browsers(bridge):
    b = bridge(chat=ChatService(flood_burst=2, max_message=50))
    with b.connect() as ws:
        refused = request(ws, 1, "nick", "a\u202eb")
        assert refused["error"]["code"] == "bad_nick"
        long = request(ws, 2, "say", "x" * 51)
        assert long["error"]["code"] == "message_too_long"
        assert request(ws, 3, "say", "uno")["ok"] is True
        assert request(ws, 4, "say", "dos")["ok"] is True
        assert request(ws, 5, "say", "tres")["error"]["code"] == "flood"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"slow_timeout": None}, "bytes of output waiting (limit 1048576)"),
        ({"max_outbound": None, "slow_timeout": 0.2}, "slow consumer: output unread for 0.2 s"),
    ],
)
def test_a_slow_browser_is_dropped_and_the_others_lose_nothing(bridge, caplog, options, reason):
    caplog.set_level("INFO", "enlace.websocket")
    COUNT = 2000  # 8 MB: more than the kernel's socket buffers hold for the stuck client
    b = bridge(**options)
    stuck = RawClient(b.address, rcvbuf=4096)  # reads nothing from here on
    stuck.send_json({"id": 1, "cmd": "nick", "args": ["stuck"]})
    with b.connect() as ana:
        request(ana, 1, "nick", "ana")
        received = 0
        done = threading.Event()

        def read_all() -> None:
            nonlocal received
            while received < COUNT:
                if '"from":"ana"' in str(ana.recv(timeout=10)):
                    received += 1
            done.set()

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        text = "z" * 4000
        for number in range(COUNT):
            ana.send(json.dumps({"cmd": "say", "args": [f"{number} {text}"]}))
        assert done.wait(15), f"ana got {received} of {COUNT}"
        reader.join(5)
    b.wait_all_closed()
    stuck.close()
    assert b.open_count() == 0
    dropped = [r.getMessage() for r in caplog.records if "slow consumer" in r.getMessage()]
    assert len(dropped) == 1 and reason in dropped[0]
