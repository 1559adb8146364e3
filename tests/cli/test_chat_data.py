"""``enlace serve chat --data DIR``: rooms and history survive a restart, as a user sees it."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess

import pytest

from enlace.services.store import DATA_FILE, SCHEMA_VERSION
from tests.cli.support import ENLACE, server
from tests.conftest import connect


class LineClient:
    """What ``nc 127.0.0.1 PORT`` is to a person: lines out, lines in."""

    def __init__(self, port: int) -> None:
        self.sock = connect(("127.0.0.1", port))
        self.lines = self.sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def until(self, wanted: str) -> list[str]:
        """Lines up to and including the first that contains ``wanted``."""
        seen = []
        while True:
            line = self.lines.readline()
            assert line, "the server closed the connection"
            seen.append(line.decode().rstrip("\n"))
            if wanted in seen[-1]:
                return seen

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def person(port: int, nick: str) -> LineClient:
    client = LineClient(port)
    client.send(f"/nick {nick}")
    client.until(f"you are now {nick}")
    return client


@pytest.mark.parametrize(("before", "after"), [("threads", "asyncio"), ("asyncio", "threads")])
def test_rooms_and_history_survive_a_restart(tmp_path, before, after):
    data = tmp_path / "chat-data"  # missing: the server creates it
    serve_chat = ("serve", "chat", "--port", "0", "--data", str(data))
    talk = [
        ("ana", "hola bob"),
        ("bob", "hola ana, ¿qué tal?"),
        ("ana", "'; DROP TABLE messages; --"),
    ]
    with server(*serve_chat, "--runtime", before) as cli:
        ana, bob = person(cli.port, "ana"), person(cli.port, "bob")
        for client in (ana, bob):
            client.send("/join python")
            client.until("you are in python")
        for nick, text in talk:
            speaker, listener = (ana, bob) if nick == "ana" else (bob, ana)
            speaker.send(text)
            expected = f"[python] {nick}: {text}"
            assert speaker.until(text)[-1] == expected  # kept: the server sent it out
            assert listener.until(text)[-1] == expected
        ana.close()
        bob.close()
        code, err = cli.stop(signal.SIGTERM)
    assert code == 0, err
    assert (data / DATA_FILE).is_file()
    assert not (data / f"{DATA_FILE}-wal").exists()  # closed cleanly: the log is in the file

    with server(*serve_chat, "--runtime", after) as cli:
        carla = person(cli.port, "carla")
        carla.send("/rooms")
        assert carla.until("python (")[-1] == "python (0)"
        carla.send("/join python")
        replay = [line for line in carla.until("you are in python") if line.startswith("[")]
        assert replay == [f"[python] {nick}: {text}" for nick, text in talk]
        carla.close()
        assert cli.stop(signal.SIGTERM)[0] == 0


def _unwritable(tmp_path):
    data = tmp_path / "read-only"
    data.mkdir()
    data.chmod(0o555)
    return data


def _a_file(tmp_path):
    data = tmp_path / "a-file"
    data.write_text("not a directory")
    return data


def _newer_schema(tmp_path):
    data = tmp_path / "newer"
    data.mkdir()
    with sqlite3.connect(data / DATA_FILE) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    return data


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_unwritable, "the directory is not writable"),
        (_a_file, "not a directory"),
        (
            _newer_schema,
            f"{DATA_FILE} has schema version {SCHEMA_VERSION + 1}, and this enlace knows "
            f"version {SCHEMA_VERSION} (written by a newer enlace?)",
        ),
    ],
)
def test_data_the_server_cannot_use_is_one_clear_line(tmp_path, make, reason):
    data = make(tmp_path)
    command = [*ENLACE, "serve", "chat", "--port", "0", "--data", str(data)]
    if make is _unwritable and os.geteuid() == 0:
        # root writes anywhere; without CAP_DAC_OVERRIDE it obeys the mode bits like anyone.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and setpriv is missing to drop CAP_DAC_OVERRIDE")
        command = ["setpriv", "--bounding-set=-dac_override", "--", *command]
    result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.decode() == f"enlace: cannot open chat data in {data}: {reason}\n"
    assert b"listening" not in result.stdout
