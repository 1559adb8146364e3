"""``enlace serve message`` and ``serve chat``, ``send`` and ``shell`` as a user runs them."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

import pexpect
import pytest

from enlace.services.commands import Context
from enlace.services.message import MessageService
from tests.cli.support import ENLACE, Terminal, run, server
from tests.cli.test_chat_data import person
from tests.conftest import RUNTIMES, connect, read_exactly


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_serve_chat_answers_frames_and_lines_and_traces(runtime):
    with server("serve", "message", "--port", "0", "--runtime", runtime, "--trace") as cli:
        with connect(("127.0.0.1", cli.port)) as sock:
            sock.sendall(struct.pack(">I", 11) + b"/upper hola")
            assert read_exactly(sock, 8) == struct.pack(">I", 4) + b"HOLA"
        with connect(("127.0.0.1", cli.port)) as sock:
            sock.sendall(b"/echo por nc\n")
            assert read_exactly(sock, 7) == b"por nc\n"
            sock.sendall(b"\xff\xfe\n")
        code, err = cli.stop()
    assert code == 0
    assert b"<- 127.0.0.1:" in err
    assert b"11 B  /upper hola" in err
    assert b"4 B  HOLA" in err
    assert b"2 B  hex ff fe" in err  # not UTF-8: shown as hex


def test_send_prints_the_reply():
    with server("serve", "message", "--port", "0") as cli:
        address = f"127.0.0.1:{cli.port}"
        assert run("send", address, "/upper hola servidor").stdout == b"HOLA SERVIDOR\n"
        result = run("send", "--json", address, "/upper hola")
        assert result.stdout == b'{"id":1,"ok":true,"result":"HOLA"}\n'
        result = run("send", "--json", address, '{"cmd": "echo", "args": ["x y"]}')
        assert result.stdout == b'{"id":1,"ok":true,"result":"x y"}\n'
        failed = run("send", address, "/nope")
        assert failed.returncode == 1
        assert failed.stderr == b"ERR unknown_command: unknown command /nope (try /help)\n"
        failed = run("send", "--json", address, "/nope")
        assert failed.returncode == 1
        assert b'"ok":false' in failed.stdout
        traced = run("send", "--trace", address, "/ping")
        assert b"-> 127.0.0.1:" in traced.stderr
        assert b'{"id":1,"cmd":"ping","line":""}' in traced.stderr
        assert cli.stop()[0] == 0


def test_send_to_nothing_is_one_clear_line():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("send", f"127.0.0.1:{port}", "/ping")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        f"enlace: cannot connect to 127.0.0.1:{port}: connection refused"
    )


def test_shell_without_a_terminal_reads_lines():
    with server("serve", "message", "--port", "0") as cli:
        result = run("shell", f"127.0.0.1:{cli.port}", stdin=b"/upper uno\n/nope\n/quit\n/ping\n")
        assert result.stdout == (
            b"UNO\nERR unknown_command: unknown command /nope (try /help)\nbye\n"
        )
        assert result.returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="needs a Linux pseudo-terminal")
def test_shell_keeps_the_typed_line_intact_when_a_push_arrives(serve, tmp_path):
    service = MessageService()

    @service.command
    def shout(ctx: Context, text: str) -> str:
        ctx.service.broadcast({"event": "shout", "text": text}, exclude=ctx.session)
        return "sent"

    running = serve(service)
    prompt = f"127.0.0.1:{running.address[1]}> "
    terminal = Terminal(tmp_path, "shell", f"{running.address[0]}:{running.address[1]}")
    try:
        terminal.wait_for(lambda lines: prompt.rstrip() in lines)
        terminal.type("/upper hola\r")
        terminal.wait_for(lambda lines: "HOLA" in lines)
        terminal.type("/upper abc")  # half-typed, no Enter yet
        terminal.wait_for(lambda lines: (prompt + "/upper abc") in lines)
        with connect(running.address) as other:
            other.sendall(b"/shout un mensaje empujado\n")
            assert read_exactly(other, 5) == b"sent\n"
        # The push appears above the prompt, and the half-typed line is untouched.
        typed = prompt + "/upper abc"

        def pushed_above_the_intact_line(lines: list[str]) -> bool:
            pushed = "* un mensaje empujado"
            return pushed in lines and typed in lines and lines.index(pushed) < lines.index(typed)

        terminal.wait_for(pushed_above_the_intact_line)
        terminal.type("def\r")
        terminal.wait_for(lambda lines: "ABCDEF" in lines)
        terminal.type("/quit\r")
        terminal.wait_for(lambda lines: "bye" in lines)
        terminal.child.expect(pexpect.EOF, timeout=10)
    finally:
        terminal.close()


def test_send_json_objects_keep_their_id_and_line():
    with server("serve", "message", "--port", "0") as cli:
        address = f"127.0.0.1:{cli.port}"
        result = run("send", "--json", address, '{"id": "mine", "cmd": "upper", "line": "a b"}')
        assert result.stdout == b'{"id":"mine","ok":true,"result":"A B"}\n'
        failed = run("send", "--json", address, '{"id": 9, "cmd": "nope"}')
        assert failed.returncode == 1
        assert failed.stdout.startswith(b'{"id":9,"ok":false,"error":{"code":"unknown_command"')
        assert run("send", "--json", address, "{not json").returncode == 2


def test_pathologically_deep_json_is_refused_and_the_server_survives():
    # 200,000 levels overflow orjson's C stack: the server must refuse, not crash.
    deep = b'{"cmd": "echo", "args": [' + b"[" * 200_000 + b"]" * 200_000 + b"]}"
    bare = b"[" * 200_000 + b"]" * 200_000
    with server("serve", "message", "--port", "0") as cli:
        with connect(("127.0.0.1", cli.port)) as sock:
            for payload, code in ((deep, b"json_too_deep"), (bare, b"not_an_object")):
                sock.sendall(struct.pack(">I", len(payload)) + payload)
                (size,) = struct.unpack(">I", read_exactly(sock, 4))
                assert code in read_exactly(sock, size)
            sock.sendall(struct.pack(">I", 5) + b"/ping")
            assert read_exactly(sock, 8) == struct.pack(">I", 4) + b"pong"
        assert cli.process.poll() is None
        assert cli.stop()[0] == 0


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_serve_chat_lets_people_with_nc_talk(runtime):
    with server("serve", "chat", "--port", "0", "--runtime", runtime) as cli:
        ana, bob = (connect(("127.0.0.1", cli.port)) for _ in range(2))
        ana_lines, bob_lines = ana.makefile("rb"), bob.makefile("rb")

        def until(lines, wanted: bytes) -> bytes:
            while True:
                line = lines.readline()
                assert line, "the server closed the connection"
                if wanted in line:
                    return line

        ana.sendall(b"/nick ana\n")
        until(ana_lines, b"you are now ana")
        bob.sendall(b"/nick bob\n")
        until(bob_lines, b"you are now bob")
        ana.sendall(b"hola bob\n")
        assert until(bob_lines, b"hola bob") == b"[general] ana: hola bob\n"
        bob.sendall(b"/msg ana un secreto\n")
        assert until(ana_lines, b"secreto") == b"[private] bob -> ana: un secreto\n"
        for sock, lines in ((ana, ana_lines), (bob, bob_lines)):
            lines.close()
            sock.close()
        assert cli.stop()[0] == 0


def test_serve_chat_refuses_a_bad_ai_configuration_in_one_line():
    result = subprocess.run(
        [*ENLACE, "serve", "chat", "--port", "0"],
        env={**os.environ, "ENLACE_AI_URL": "ftp://nowhere", "ENLACE_AI_MODEL": "m"},
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("enlace: ")
    assert "Traceback" not in result.stderr.decode()


def test_shell_prints_what_others_send_without_their_control_characters():
    with server("serve", "chat", "--port", "0") as cli:
        ana = person(cli.port, "ana")
        ana.send("hola \x1b[2J\x1b]0;pwned\x07 mundo")  # clear the screen, retitle the window
        ana.until("mundo")
        result = run("shell", f"127.0.0.1:{cli.port}", stdin=b"/history 1\n/quit\n")
        assert result.returncode == 0
        shown = [line for line in result.stdout.decode().splitlines() if "mundo" in line]
        # The replay on connecting (in text form: no request yet), then /history's.
        line = "[general] ana: hola \ufffd[2J\ufffd]0;pwned\ufffd mundo"
        assert shown == [f"* {line}", line]
        ana.close()
