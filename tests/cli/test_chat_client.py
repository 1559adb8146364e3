"""``enlace chat`` as a user runs it: in a terminal (pty + pyte), and in plain mode.

Every test talks to a real ``enlace serve chat`` process; the other person in
the room is a plain socket line client, as someone with ``nc`` would be.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
from collections.abc import Callable

import pyte
import pyte.graphics
import pytest

from enlace.cli.chat_client import ChatClient, Line, event_line, nick_colour
from enlace.services.chat import ChatService
from enlace.services.commands import CommandError, Context
from enlace.sync import Server
from tests.cli.support import ENLACE, Terminal, free_port, read_until, run, server
from tests.conftest import connect

needs_pty = pytest.mark.skipif(sys.platform != "linux", reason="needs a Linux pseudo-terminal")

# Servers drop their connections at once on SIGTERM, so that a restart takes no drain time.
CHAT = ("serve", "chat", "--drain-timeout", "0")


class LineUser:
    """Someone in the chat with a plain line client."""

    def __init__(self, port: int, nick: str) -> None:
        self.sock = connect(("127.0.0.1", port), timeout=10)
        self.lines = self.sock.makefile("rb")
        self.send(f"/nick {nick}")
        self.until(f"you are now {nick}")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def until(self, wanted: str) -> str:
        """The first line received that contains ``wanted`` (the socket's timeout bounds it)."""
        while True:
            line = self.lines.readline().decode()
            assert line, f"the server closed the connection before {wanted!r}"
            if wanted in line:
                return line.rstrip("\n")

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


class ChatTerminal(Terminal):
    """``enlace chat`` in a real pseudo-terminal, read back through a terminal emulator."""

    def __init__(self, port: int, tmp_path, *options: str) -> None:
        super().__init__(tmp_path, "chat", f"127.0.0.1:{port}", *options)

    def shows(self, text: str, timeout: float = 10) -> None:
        """Wait for a screen line equal to ``text`` (ignoring the spaces around it)."""
        self.wait_for(lambda lines: any(line.strip() == text for line in lines), timeout)

    def colour_of(self, text: str, word: str) -> str:
        """The foreground colour of ``word`` in the screen line that is ``text``."""
        for row, line in enumerate(self.lines()):
            if line.strip() == text:
                column = line.index(word)
                return str(self.screen.buffer[row][column].fg)
        raise AssertionError(f"no line {text!r}")


def above(first: str, second: str) -> Callable[[list[str]], bool]:
    """A screen predicate: a line ``first`` somewhere above a line ``second``."""

    def check(lines: list[str]) -> bool:
        return first in lines and second in lines and lines.index(first) < lines.index(second)

    return check


# -- in a terminal -------------------------------------------------------------------------------


@needs_pty
def test_chat_in_a_terminal_with_someone_on_nc(tmp_path):
    with server(*CHAT, "--port", "0") as cli:
        bob = LineUser(cli.port, "bob")
        terminal = ChatTerminal(cli.port, tmp_path, "--nick", "ana")
        try:
            # The toolbar: server, nick, room, state; and the members, from /who.
            terminal.shows(f"127.0.0.1:{cli.port}  ana in #general  connected")
            terminal.shows("2 in #general: ana, bob")

            bob.send("hola ana")
            terminal.shows("[general] bob: hola ana")
            # A colour per nick, derived from the nick.
            expected = pyte.graphics.FG_BG_256[nick_colour("bob")]
            assert terminal.colour_of("[general] bob: hola ana", "bob") == expected

            terminal.type("hola bob\r")
            assert bob.until("hola bob") == "[general] ana: hola bob"
            terminal.shows("[general] ana: hola bob")

            # A message pushed while a line is half typed lands above it; the line is intact.
            terminal.type("a medio")
            terminal.wait_for(lambda lines: "ana> a medio" in lines)
            bob.send("te interrumpo")
            terminal.wait_for(above("[general] bob: te interrumpo", "ana> a medio"))
            terminal.type(" escribir\r")
            assert bob.until("escribir") == "[general] ana: a medio escribir"

            # Slash commands go to the server; results and errors are shown.
            terminal.type("/who\r")
            terminal.wait_for(above("> /who", "general: ana, bob"))
            terminal.type("/msg bob un secreto\r")
            assert bob.until("secreto") == "[private] ana -> bob: un secreto"
            terminal.shows("[private] ana -> bob: un secreto")
            terminal.type("/nope\r")
            terminal.shows("ERR unknown_command: unknown command /nope (try /help)")
            terminal.type("//shrug\r")
            assert bob.until("shrug") == "[general] ana: /shrug"

            # Members follow joins and leaves.
            bob.send("/join python")
            terminal.shows("* bob went to python")
            terminal.shows("1 in #general: ana")
            terminal.type("/join python\r")
            terminal.shows(f"127.0.0.1:{cli.port}  ana in #python  connected")
            terminal.shows("2 in #python: ana, bob")
            bob.send("bienvenida")
            terminal.shows("[python] bob: bienvenida")
            terminal.type("/nick anita\r")
            terminal.shows("* ana is now known as anita")
            terminal.shows(f"127.0.0.1:{cli.port}  anita in #python  connected")
            terminal.shows("2 in #python: anita, bob")

            terminal.type("/quit\r")
            assert terminal.finish() == 0
            assert "bye" in terminal.lines()
        finally:
            terminal.close()
            bob.close()
        assert cli.stop()[0] == 0


@needs_pty
def test_chat_reconnects_after_a_server_restart(tmp_path):
    # The history survives the restart (--data), as a room's replay after reconnecting.
    data = ("--data", str(tmp_path / "data"))
    with server(*CHAT, *data, "--port", "0") as first:
        port = first.port
        terminal = ChatTerminal(port, tmp_path, "--nick", "ana", "--room", "python")
        terminal.shows("1 in #python: ana")
        terminal.type("antes\r")
        terminal.shows("[python] ana: antes")
        # The server stops: the client says so and retries by itself.
        assert first.stop(signal.SIGTERM)[0] == 0
    try:
        terminal.shows("-- the server closed the connection; reconnecting (Ctrl-D leaves)")
        terminal.type("sigo aqui")  # half typed while the server is away
        terminal.wait_for(lambda lines: "ana> sigo aqui" in lines)
        with server(*CHAT, *data, "--port", str(port)) as second:
            # Back, with the same nick, in the same room; the typed line survived.
            terminal.shows(f"-- reconnected to 127.0.0.1:{port} as ana in #python")
            terminal.shows(f"127.0.0.1:{port}  ana in #python  connected")
            assert "ana> sigo aqui" in terminal.lines()
            # The room's replay held a message already shown: it is not shown twice.
            assert "(earlier) [python] ana: antes" not in terminal.lines()
            bob = LineUser(port, "bob")
            try:
                bob.send("/join python")
                bob.until("you are in python")
                terminal.shows("2 in #python: ana, bob")
                terminal.type("\r")
                assert bob.until("sigo aqui") == "[python] ana: sigo aqui"
                bob.send("de vuelta")
                terminal.shows("[python] bob: de vuelta")
            finally:
                bob.close()
            terminal.type("\x04")  # Ctrl-D on the empty line leaves
            assert terminal.finish() == 0
            assert second.stop()[0] == 0
    finally:
        terminal.close()


@needs_pty
def test_a_nick_in_use_is_one_clear_line_and_exit_1(tmp_path):
    with server(*CHAT, "--port", "0") as cli:
        ana = LineUser(cli.port, "ana")
        terminal = ChatTerminal(cli.port, tmp_path, "--nick", "ANA")
        try:
            assert terminal.finish() == 1
            # One line, wrapped by the 80-column terminal: rejoin its rows.
            assert "".join(terminal.screen.display).strip() == (
                "enlace: nick 'ANA' refused (nick_taken): "
                "ANA is taken (or looks too much like a nick in use)"
            )
        finally:
            terminal.close()
            ana.close()


# -- without a terminal ---------------------------------------------------------------------------


def test_plain_mode_sends_lines_and_prints_events():
    with server(*CHAT, "--port", "0") as cli:
        bob = LineUser(cli.port, "bob")
        bob.send("/join python")
        bob.until("you are in python")
        bob.send("antes de ana")
        bob.until("antes de ana")
        try:
            result = run(
                "chat", f"127.0.0.1:{cli.port}", "--nick", "ana", "--room", "#Python",
                stdin=b"hola\n/who\n/nope\n/msg bob psst\n//shrug\n/quit\nnever sent\n",
            )  # fmt: skip
            assert result.returncode == 0
            assert result.stdout.decode().splitlines() == [
                "(earlier) [python] bob: antes de ana",
                "[python] ana: hola",
                "python: ana, bob",
                "ERR unknown_command: unknown command /nope (try /help)",
                "[private] ana -> bob: psst",
                "[python] ana: /shrug",
                "bye",
            ]
            assert (
                result.stderr.decode()
                == f"-- connected to 127.0.0.1:{cli.port} as ana in #python\n"
            )
            assert bob.until("hola") == "[python] ana: hola"
            assert bob.until("psst") == "[private] ana -> bob: psst"
        finally:
            bob.close()


def test_plain_mode_refusals_are_one_clear_line_and_exit_1():
    with server(*CHAT, "--port", "0") as cli:
        result = run("chat", f"127.0.0.1:{cli.port}", "--nick", "a b", stdin=b"hola\n")
        assert result.returncode == 1
        assert result.stdout == b""
        assert result.stderr.decode() == (
            "enlace: nick 'a b' refused (bad_nick): "
            "nick contains U+0020 SPACE: a nick is one word, without spaces\n"
        )
        result = run("chat", f"127.0.0.1:{cli.port}", "--nick", "ana", "--room", "no room")
        assert result.returncode == 1
        assert result.stderr.decode().startswith("enlace: room 'no room' refused (bad_room): ")
    with server("serve", "message", "--port", "0") as cli:
        result = run("chat", f"127.0.0.1:{cli.port}", "--nick", "ana")
        assert result.returncode == 1
        assert result.stderr.decode() == (
            f"enlace: 127.0.0.1:{cli.port} has no chat (no /nick command); "
            "is it enlace serve chat?\n"
        )


def test_no_server_at_start_is_one_clear_line_unless_retry():
    port = free_port()
    result = run("chat", f"127.0.0.1:{port}", "--nick", "ana")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"enlace: cannot connect to 127.0.0.1:{port}: connection refused\n"
    )

    client = subprocess.Popen(
        [*ENLACE, "chat", f"127.0.0.1:{port}", "--nick", "ana", "--retry"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        waiting = read_until(client, b"(Ctrl-C gives up)\n")
        assert b"connection refused; retrying until it answers" in waiting
        with server(*CHAT, "--port", str(port)):
            output, _ = client.communicate(b"hola\n/quit\n", timeout=15)
        assert client.returncode == 0
        assert b"-- connected to" in output
        assert b"[general] ana: hola\n" in output
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)


# -- reconnecting to a server that is not quite the same ------------------------------------------


class _HoldsAna(ChatService):
    """A chat server on which someone else already holds the nick ``ana``."""

    def nick(self, ctx: Context, name: str) -> str:
        """Choose your nickname."""
        if name == "ana":
            raise CommandError("nick_taken", "ana is taken")
        return super().nick(ctx, name)


def test_reconnecting_makes_do_with_nick_underscore_and_the_default_room():
    first = Server(ChatService(), port=0, drain_timeout=0)
    first.start()
    port = first.address[1]
    shown: queue.Queue[str] = queue.Queue()

    def until(wanted: str) -> None:
        """Skip shown lines up to one that starts with ``wanted``; fail after 10 s without."""
        while not shown.get(timeout=10).startswith(wanted):
            pass

    chat = ChatClient("127.0.0.1", port, nick="ana", room="python", track_members=False)
    chat.start()
    chat.attach(lambda line: shown.put(line.plain()))
    try:
        until(f"-- connected to 127.0.0.1:{port} as ana in #python")
        first.shutdown(0)
        until("-- the server closed the connection; reconnecting (Ctrl-D leaves)")
        # Back on a server where the nick is held and only the default room fits.
        with Server(_HoldsAna(max_rooms=1), port=port, drain_timeout=0):
            until(f"-- reconnected to 127.0.0.1:{port} as ana_ in #general")
            until(
                "-- ana is still in use on the server (your old connection?): "
                "you are ana_ for now; /nick ana later"
            )
            until("-- cannot rejoin #python: too_many_rooms: ")
            assert chat.snapshot()[:2] == ("ana_", "general")
            chat.submit("sigo aqui")
            until("[general] ana_: sigo aqui")
            chat.close()
    finally:
        chat.close()
        first.shutdown(0)


# -- what the lines look like ---------------------------------------------------------------------


def test_each_nick_has_a_stable_colour():
    assert nick_colour("ana") == nick_colour("ana")
    colours = {nick_colour(name) for name in ("ana", "bob", "carla", "dmitri", "李雷", "eve")}
    assert len(colours) > 1  # not all the same
    line = event_line({"event": "message", "room": "general", "from": "bob", "text": "x"}, "ana")
    assert f"\x1b[38;5;{nick_colour('bob')}mbob\x1b[0m" in line.ansi()
    assert "\x1b[38;5;" not in line.ansi(colour=False)


def test_events_render_as_lines_and_cannot_smuggle_escapes():
    def shown(event: dict) -> str:
        return event_line(event, "ana").plain()

    assert shown({"event": "message", "room": "r", "from": "bob", "text": "hi"}) == "[r] bob: hi"
    replayed = {"event": "message", "room": "r", "from": "bob", "text": "hi", "replay": True}
    assert shown(replayed) == "(earlier) [r] bob: hi"
    assert shown({"event": "private", "from": "bob", "to": "ana", "text": "psst"}) == (
        "[private] bob -> ana: psst"
    )
    assert shown({"event": "join", "room": "r", "nick": "bob", "text": "bob joined r"}) == (
        "* bob joined r"
    )
    assert shown({"event": "error", "code": "flooding", "text": "slow down"}) == (
        "ERR flooding: slow down"
    )
    hostile = {"event": "message", "room": "r", "from": "bob", "text": "\x1b[2Jgone\r\nnext"}
    assert shown(hostile) == "[r] bob: \ufffd[2Jgone\ufffd\n  next"
    assert Line.of("dim", "* x").ansi() == "\x1b[2m* x\x1b[0m"
