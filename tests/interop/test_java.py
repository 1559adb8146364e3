"""enlace and the Java programs of examples/java, both ways, and the classic client.

docs/protocol.md is the contract; these tests check that independent
implementations of it agree:

(a) the Java client against ``enlace serve message`` on both runtimes;
(b) enlace's clients (``enlace.sync.Client``, ``enlace.asyncio.Client``,
    ``enlace send``) against the Java server;
(c) a client written as in the classic course material (``socket`` and
    ``struct``, a recv loop), and the minimal client printed in
    docs/protocol.md, against ``enlace serve message``;
(d) the same requests sent to the Python and the Java server get the same
    replies (codes, ids and results; error messages are informative only).

The Java sources are compiled once, into a temporary directory. Tests that need
Java are skipped, saying so, when ``javac`` or ``java`` is missing; (c) runs
anyway. Every server is a real process on 127.0.0.1, port 0; the tests wait for
its "listening on" line, never sleep, and stop it at the end of the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import enlace.asyncio
from enlace.exceptions import RequestError
from enlace.sync import Client

ROOT = Path(__file__).resolve().parents[2]
JAVA_SOURCES = ROOT / "examples" / "java"
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"

JAVAC = shutil.which("javac")
JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(
    not (JAVAC and JAVA),
    reason="javac and java (JDK 17 or newer) are not on PATH; the Java interop tests need them",
)

TIMEOUT = 10.0  # seconds: a bound for anything that should take milliseconds
NO_CHAT = "this server has no chat rooms; commands start with / (try /help)"
_LISTENING = re.compile(rb"listening on (\S+):(\d+)\s")


# -- processes -------------------------------------------------------------------


class Process:
    """A server process and the port it printed in its "listening on" line."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as stderr:
            self.popen = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
            )
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self) -> int:
        stdout = self.popen.stdout
        assert stdout is not None
        output = b""
        deadline = time.monotonic() + TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while not (match := _LISTENING.search(output)):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"no 'listening on' within {TIMEOUT} s: {output!r}")
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(
                        f"exited before listening: {output!r} {self.log.read_bytes()!r}"
                    )
                output += chunk
        return int(match.group(2))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(TIMEOUT)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/java compiled once for this module."""
    if not (JAVAC and JAVA):
        pytest.skip("javac and java (JDK 17 or newer) are not on PATH")
    classes = tmp_path_factory.mktemp("java-classes")
    sources = sorted(str(path) for path in JAVA_SOURCES.glob("*.java"))
    result = subprocess.run(
        [JAVAC, "-encoding", "UTF-8", "-d", str(classes), *sources],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return classes


@pytest.fixture(scope="module", params=["threads", "asyncio"])
def enlace_port(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """``enlace serve message`` on one runtime, as a real process."""
    runtime = str(request.param)
    log = tmp_path_factory.mktemp("enlace") / f"serve-chat-{runtime}.log"
    server = Process(
        [sys.executable, "-m", "enlace", "serve", "message", "--port", "0", "--runtime", runtime,
         "--drain-timeout", "0"],
        log,
    )  # fmt: skip
    yield server.port
    server.stop()


@pytest.fixture(scope="module")
def java_port(java_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The Java server, as a real process."""
    log = tmp_path_factory.mktemp("java") / "EnlaceServer.log"
    assert JAVA is not None
    server = Process([JAVA, "-cp", str(java_classes), "EnlaceServer", "--port", "0"], log)
    yield server.port
    server.stop()


def java_client(
    classes: Path, port: int, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    """Run the Java client to completion; its output decoded as UTF-8."""
    assert JAVA is not None
    result = subprocess.run(
        [JAVA, "-cp", str(classes), "EnlaceClient", "127.0.0.1", str(port), *args],
        input=stdin,
        capture_output=True,
        timeout=4 * TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def enlace_send(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``enlace send`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "enlace", "send", f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=4 * TIMEOUT,
        check=False,
    )


# -- the classic client: socket, struct and a recv loop ---------------------------


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``recv`` may return less than asked for: loop until ``size`` bytes are in."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"the server closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def send_frame(sock: socket.socket, payload: bytes | str) -> None:
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", recv_exactly(sock, 4))
    return recv_exactly(sock, length)


def ask(sock: socket.socket, payload: bytes | str) -> bytes:
    send_frame(sock, payload)
    return recv_frame(sock)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- (a) the Java client against enlace ----------------------------------------------


@needs_java
def test_java_client_sends_one_text_command(java_classes: Path, enlace_port: int) -> None:
    result = java_client(java_classes, enlace_port, "--send", "/upper hola")
    assert (result.returncode, result.stdout) == (0, "HOLA\n"), result.stderr


@needs_java
def test_java_client_sends_one_json_request(java_classes: Path, enlace_port: int) -> None:
    result = java_client(java_classes, enlace_port, "--send", "/upper hola servidor", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"id":1,"ok":true,"result":"HOLA SERVIDOR"}\n'


@needs_java
def test_java_client_exits_1_on_a_json_error_reply(java_classes: Path, enlace_port: int) -> None:
    result = java_client(java_classes, enlace_port, "--send", "/nope", "--json")
    assert result.returncode == 1, result.stderr
    reply = json.loads(result.stdout)
    assert reply["id"] == 1
    assert reply["ok"] is False
    assert reply["error"]["code"] == "unknown_command"


@needs_java
def test_java_client_interactive_prints_every_reply(java_classes: Path, enlace_port: int) -> None:
    # The empty line is a keep-alive: it gets no reply, so the replies still line up.
    typed = "/upper uno\n/echo dos\n\n/ping\nhola\n/upper ñandú\n/time extra\n"
    result = java_client(java_classes, enlace_port, stdin=typed.encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "UNO",
        "dos",
        "pong",
        f"ERR no_chat: {NO_CHAT}",
        "ÑANDÚ",
        "ERR bad_arguments: /time takes no arguments",
    ]


@needs_java
def test_java_client_interactive_json(java_classes: Path, enlace_port: int) -> None:
    typed = '/upper hola  mundo\n/nope\n{"id": "x", "cmd": "echo", "args": ["eco"]}\nhola\n'
    result = java_client(java_classes, enlace_port, "--json", stdin=typed.encode())
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert replies[0] == {"id": 1, "ok": True, "result": "HOLA  MUNDO"}
    assert (replies[1]["id"], replies[1]["error"]["code"]) == (2, "unknown_command")
    assert replies[2] == {"id": "x", "ok": True, "result": "eco"}
    assert replies[3]["id"] == 3
    assert replies[3]["error"] == {"code": "no_chat", "message": NO_CHAT}


# -- (b) enlace's clients against the Java server -------------------------------------


@needs_java
def test_sync_client_against_the_java_server(java_port: int) -> None:
    with Client("127.0.0.1", java_port, request_timeout=TIMEOUT) as client:
        assert client.request("upper", "hola") == "HOLA"
        assert client.command("/upper hola servidor") == "HOLA SERVIDOR"
        assert client.request("echo") == ""
        assert client.request("ping") == "pong"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", client.request("time"))
        assert "/upper [TEXT]" in client.request("help")


@needs_java
@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.request("nope"), "unknown_command"),
        (lambda c: c.command("/nope with words"), "unknown_command"),
        (lambda c: c.request("upper", "a", "b"), "bad_arguments"),
        (lambda c: c.request("upper", 7), "bad_arguments"),
        (lambda c: c.request("ping", "now"), "bad_arguments"),
        (lambda c: c.command("/ping now"), "bad_arguments"),
        (lambda c: c.command("/say"), "bad_arguments"),
        (lambda c: c.command("hola"), "no_chat"),
        (lambda c: c.request("say", "hola"), "no_chat"),
    ],
)
def test_sync_client_gets_typed_errors_from_the_java_server(
    java_port: int, call: Any, code: str
) -> None:
    with Client("127.0.0.1", java_port, request_timeout=TIMEOUT) as client:
        with pytest.raises(RequestError) as caught:
            call(client)
        assert caught.value.code == code
        assert client.request("ping") == "pong"  # errors are not fatal


@needs_java
def test_sync_client_quit_on_the_java_server(java_port: int) -> None:
    closed: list[str] = []
    with Client("127.0.0.1", java_port, request_timeout=TIMEOUT, on_close=closed.append) as client:
        assert client.request("quit") == "bye"
        assert list(client.events(timeout=TIMEOUT)) == []  # ends when the server closes
        assert client.closed


@needs_java
def test_asyncio_client_against_the_java_server(java_port: int) -> None:
    async def main() -> tuple[Any, str]:
        async with enlace.asyncio.Client("127.0.0.1", java_port) as client:
            result = await client.request("upper", "hola")
            with pytest.raises(RequestError) as caught:
                await client.request("nope")
            return result, caught.value.code

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == ("HOLA", "unknown_command")


@needs_java
def test_enlace_send_against_the_java_server(java_port: int) -> None:
    result = enlace_send(java_port, "/upper hola")
    assert (result.returncode, result.stdout) == (0, "HOLA\n"), result.stderr
    result = enlace_send(java_port, "/upper hola", "--json")
    assert (result.returncode, result.stdout) == (0, '{"id":1,"ok":true,"result":"HOLA"}\n')
    result = enlace_send(java_port, "/nope")
    assert result.returncode == 1
    assert result.stderr.startswith("ERR unknown_command: ")


# -- (c) the classic client against enlace --------------------------------------------


def test_classic_client_text_and_json(enlace_port: int) -> None:
    with connect(enlace_port) as sock:
        assert ask(sock, "/upper hola servidor") == b"HOLA SERVIDOR"
        reply = json.loads(ask(sock, '{"id": 7, "cmd": "upper", "args": ["hola"]}'))
        assert reply == {"id": 7, "ok": True, "result": "HOLA"}
        send_frame(sock, b"")  # a keep-alive: no reply, so the next frame answers /ping
        assert ask(sock, "/ping") == b"pong"
        assert ask(sock, "/upper ¿qué tal?") == "¿QUÉ TAL?".encode()
        assert ask(sock, "/nope") == b"ERR unknown_command: unknown command /nope (try /help)"


def test_classic_client_frames_cut_anywhere(enlace_port: int) -> None:
    """Three frames in one send, then one frame a byte at a time: TCP has no boundaries."""
    frames = b"".join(struct.pack(">I", len(p)) + p for p in (b"/ping", b"/upper a", b"/echo b"))
    with connect(enlace_port) as sock:
        sock.sendall(frames)
        assert [recv_frame(sock) for _ in range(3)] == [b"pong", b"A", b"b"]
        for byte in struct.pack(">I", 11) + b"/upper hola":
            sock.sendall(bytes([byte]))
        assert recv_frame(sock) == b"HOLA"


def test_classic_client_oversize_frame_is_refused_before_its_payload(enlace_port: int) -> None:
    with connect(enlace_port) as sock:
        assert ask(sock, "/ping") == b"pong"
        sock.sendall(struct.pack(">I", 2**32 - 1))  # 4 GiB announced, not one payload byte sent
        assert recv_frame(sock).startswith(b"ERR frame_too_large: ")
        assert read_to_eof(sock) == b""


def test_classic_client_half_close_gets_every_reply(enlace_port: int) -> None:
    with connect(enlace_port) as sock:
        send_frame(sock, "/upper a")
        send_frame(sock, "/upper b")
        sock.shutdown(socket.SHUT_WR)
        data = read_to_eof(sock)
    assert data == struct.pack(">I", 1) + b"A" + struct.pack(">I", 1) + b"B"


def test_line_client_as_with_nc(enlace_port: int) -> None:
    with connect(enlace_port) as sock:
        sock.sendall(b'/upper hola\r\n\n{"id":1,"cmd":"ping"}\n/echo sin fin')
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b'HOLA\n{"id":1,"ok":true,"result":"pong"}\nsin fin\n'


def test_the_minimal_client_of_the_protocol_document(enlace_port: int) -> None:
    """docs/protocol.md section 12 prints a client; it must work as its comments say."""
    document = PROTOCOL_DOC.read_text(encoding="utf-8")
    found = re.search(r"## 12\. A minimal client.*?```python\n(.*?)```", document, re.DOTALL)
    assert found, "docs/protocol.md has no section 12 with a Python client"
    program = found.group(1)
    assert '("127.0.0.1", 8080)' in program
    expected = [line.split("# ")[-1] for line in program.splitlines() if "print(" in line]
    result = subprocess.run(
        [sys.executable, "-c", program.replace("8080", str(enlace_port))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def _worked_example(section: str) -> list[tuple[str, bytes, bool]]:
    """The hex exchange of a docs/protocol.md subsection: (direction, bytes, truncated)."""
    document = PROTOCOL_DOC.read_text(encoding="utf-8")
    found = re.search(rf"### {re.escape(section)} .*?```\n(.*?)```", document, re.DOTALL)
    assert found, f"docs/protocol.md has no worked example {section}"
    steps: list[tuple[str, bytes, bool]] = []
    for line in found.group(1).splitlines():
        match = re.match(r"(C>|S>|  ) ((?:[0-9a-f]{2} )*[0-9a-f]{2})( \.\.\.)?", line)
        if match is None:
            continue
        data = bytes.fromhex(match.group(2))
        if match.group(1) == "  ":  # a continuation line
            direction, previous, _ = steps.pop()
            steps.append((direction, previous + data, bool(match.group(3))))
        else:
            steps.append((match.group(1), data, bool(match.group(3))))
    return steps


@pytest.mark.parametrize("section", ["11.1", "11.2"])
def test_the_worked_examples_of_the_protocol_document(enlace_port: int, section: str) -> None:
    """Every byte docs/protocol.md section 11 shows the server sending is what enlace sends."""
    steps = _worked_example(section)
    assert any(direction == "S>" for direction, _, _ in steps)
    with connect(enlace_port) as sock:
        for direction, data, truncated in steps:
            if direction == "C>":
                sock.sendall(data)
            elif truncated:  # shown in part: the rest of the frame is described in words
                assert recv_exactly(sock, len(data)) == data
                recv_exactly(sock, struct.unpack(">I", data[:4])[0] + 4 - len(data))
            else:
                assert recv_exactly(sock, len(data)) == data
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""


# -- (d) the Java server answers as enlace does -----------------------------------------

SAME_ANSWERS: list[bytes] = [
    b"/upper hola servidor",
    b"/UPPER   hola  ",
    b"/upper",
    b"/echo",
    b"/echo  a  b ",
    "/upper ßtraße ŉ".encode(),
    b"/ping",
    b"/ping now",
    b"/quit now",
    b"/say",
    b"/say hola",
    b"hola",
    b"//upper x",
    b"/",
    b"/ upper",
    b"/upper\thola",
    b"/ping\n",
    b"/nope",
    b"/" + b"n" * 100,
    "/echo \u00a0x\u00a0".encode(),
    b"\xff\xfe",
    b"/upper \xc3",
    b"[1, 2]",
    b"[hola]",
    b"[" * 40 + b"]" * 40,
    b' {"cmd": "ping"}',
    b'{"id": 1, "cmd": "upper", "args": ["hola"]}',
    b'{"id": "a", "cmd": "upper", "args": ["hola", "mundo"]}',
    b'{"id": 2, "cmd": "upper", "args": [7]}',
    b'{"id": 3, "cmd": "upper", "args": [null]}',
    b'{"id": 4, "cmd": "upper", "args": null}',
    b'{"id": 5, "cmd": "upper", "args": "hola"}',
    b'{"id": 6, "cmd": "upper", "line": "hola  mundo  "}',
    b'{"id": 7, "cmd": "upper", "line": "hola", "args": ["x"]}',
    b'{"id": 8, "cmd": "upper", "line": "hola", "args": []}',
    b'{"id": 9, "cmd": "upper", "line": 5}',
    b'{"id": 10, "cmd": "ping", "line": "  "}',
    b'{"id": 11, "cmd": "ping", "line": ""}',
    b'{"id": 12, "cmd": "ping", "args": ["x"]}',
    b'{"id": 13, "cmd": "/UPPER", "args": ["x"]}',
    b'{"id": 14, "cmd": "//upper", "args": ["x"]}',
    b'{"id": 15, "cmd": "/"}',
    b'{"id": 16, "cmd": ""}',
    b'{"id": 17}',
    b'{"id": 18, "cmd": "say"}',
    b'{"id": 19, "cmd": "say", "args": ["hola"]}',
    b'{"id": 20, "cmd": "nope"}',
    b'{"cmd": "ping"}',
    b'{"id": null, "cmd": "ping"}',
    b'{"id": "", "cmd": "ping"}',
    b'{"id": -0, "cmd": "ping"}',
    b'{"id": 18446744073709551615, "cmd": "ping"}',
    b'{"id": 18446744073709551616, "cmd": "ping"}',
    b'{"id": -9223372036854775809, "cmd": "ping"}',
    b'{"id": 7.0, "cmd": "ping"}',
    b'{"id": 1e3, "cmd": "ping"}',
    b'{"id": true, "cmd": "ping"}',
    b'{"id": [1], "cmd": "ping"}',
    b'{"id": "' + b"i" * 257 + b'", "cmd": "ping"}',
    b'{"id": 21, "id": 22, "cmd": "ping"}',
    b'{"id": 23, "cmd": "echo", "args": ["\\ud83d\\ude00 \\u00f1 \\n\\t\\"\\\\"]}',
    b'{"id": 24, "cmd": "echo", "args": ["\\b\\f\\u0001\\u007f/"]}',
    b'{"id": 25, "cmd": "ping"}  \r\n',
    b'{"id": 26, "cmd": "ping", "extra": {"a": [1, 2.5, true, null]}}',
    b"{bad",
    b'{"a": NaN}',
    b'{"id": 27, "cmd": "ping",}',
    b'{"id": 28, "cmd": "ping"} x',
    b'{"id": 1e400, "cmd": "ping"}',
    b'{"cmd": "echo", "args": ["\\ud800"]}',
    b'{"cmd": "echo", "args": ["\xff"]}',
    b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"x": ' + b"[" * 40 + b"}",
]

#: Codes whose message comes from each side's own JSON parser.
_PARSER_CODES = {"invalid_json", "invalid_utf8"}


def normalize(reply: bytes) -> Any:
    """What the protocol fixes about a reply: form, id, ok, result or error code."""
    if reply.startswith(b"{"):
        value = json.loads(reply)
        if "error" in value and value["error"]["code"] in _PARSER_CODES:
            value["error"]["message"] = "..."
        return ("json", value)
    text = reply.decode("utf-8")
    if text.startswith("ERR ") and text[4:].split(":")[0] in _PARSER_CODES:
        return ("text", text.split(":")[0])
    return ("text", text)


@needs_java
@pytest.mark.parametrize("kind", ["framed", "lines"])
def test_java_server_answers_as_enlace_does(enlace_port: int, java_port: int, kind: str) -> None:
    payloads = [p for p in SAME_ANSWERS if kind == "framed" or b"\n" not in p]
    answers: dict[int, list[Any]] = {}
    for port in (enlace_port, java_port):
        with connect(port) as sock:
            if kind == "framed":
                answers[port] = [normalize(ask(sock, payload)) for payload in payloads]
            else:
                sock.sendall(b"".join(payload + b"\n" for payload in payloads))
                sock.shutdown(socket.SHUT_WR)
                lines = read_to_eof(sock).split(b"\n")
                assert lines.pop() == b""
                answers[port] = [normalize(line) for line in lines]
    for payload, python, java in zip(
        payloads, answers[enlace_port], answers[java_port], strict=True
    ):
        assert java == python, payload


@needs_java
@pytest.mark.parametrize(
    ("data", "form"),
    [
        (struct.pack(">I", 5) + b"/ping" + struct.pack(">I", 2**20 + 1), "text"),
        (struct.pack(">I", 21) + b'{"id":1,"cmd":"ping"}' + struct.pack(">I", 2**31), "json"),
        (b"/ping\n" + b"a" * (2**14 + 1), "text"),
        (b'{"id":1,"cmd":"ping"}\n' + b"a" * 20000 + b"\n", "json"),
    ],
)
def test_both_servers_close_after_a_fatal_error(
    enlace_port: int, java_port: int, data: bytes, form: str
) -> None:
    """The request before the oversize frame or line is answered; then the error, then EOF."""
    for port in (enlace_port, java_port):
        with connect(port) as sock:
            sock.sendall(data)
            received = read_to_eof(sock)
        if data[0] == 0:
            first_length = struct.unpack(">I", received[:4])[0]
            replies = [received[4 : 4 + first_length], received[8 + first_length :]]
        else:
            replies = received.split(b"\n")[:2]
        assert replies[0] in (b"pong", b'{"id":1,"ok":true,"result":"pong"}'), port
        code = "frame_too_large" if data[0] == 0 else "line_too_long"
        if form == "json":
            assert json.loads(replies[1])["error"]["code"] == code, port
        else:
            assert replies[1].startswith(f"ERR {code}: ".encode()), port


@needs_java
def test_both_servers_close_after_quit(enlace_port: int, java_port: int) -> None:
    for port in (enlace_port, java_port):
        with connect(port) as sock:
            send_frame(sock, '{"id": 1, "cmd": "quit"}')
            send_frame(sock, "/ping")  # never answered: the server closes after "bye"
            assert recv_frame(sock) == b'{"id":1,"ok":true,"result":"bye"}'
            assert read_to_eof(sock) == b""


@needs_java
def test_both_servers_bound_replies(enlace_port: int, java_port: int) -> None:
    """1 MiB of "ŉ" upper-cases to 1.5 MiB: too large for a frame, so an error instead."""
    text = "ŉ" * ((2**20 - len("/upper ")) // 2)
    for port in (enlace_port, java_port):
        with connect(port) as sock:
            assert ask(sock, "/upper " + text).startswith(b"ERR reply_too_large: ")
            assert ask(sock, "/ping") == b"pong"


@needs_java
def test_java_server_refuses_when_busy(java_classes: Path, tmp_path: Path) -> None:
    assert JAVA is not None
    server = Process(
        [JAVA, "-cp", str(java_classes), "EnlaceServer", "--port", "0", "--max-clients", "1"],
        tmp_path / "busy.log",
    )
    try:
        with connect(server.port) as first:
            assert ask(first, "/ping") == b"pong"  # holds the only slot
            with connect(server.port) as second:
                refusal = b"ERR busy: too many connections (limit 1)"
                assert read_to_eof(second) == struct.pack(">I", len(refusal)) + refusal
    finally:
        server.stop()
