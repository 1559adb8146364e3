"""``enlace serve chat --hub redis://...``: two server processes, one chat, as users see it.

Each test starts its own ``redis-server`` (no persistence) on a free port and
two ``python -m enlace serve chat --port 0 --hub URL`` processes; people talk
over plain line connections, one server each. Redis is stopped by its PID
while the servers run, and started again on the same port.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from enlace.services.redis_hub import BACK, UNREACHABLE
from tests.cli.support import ENLACE, free_port, server
from tests.cli.test_chat_data import LineClient, person
from tests.services.test_redis_hub import running_redis


@pytest.fixture
def redis_server(tmp_path):
    yield from running_redis(tmp_path)


def serve_chat(url: str, runtime: str):
    return server("serve", "chat", "--port", "0", "--hub", url, "--runtime", runtime)


@pytest.mark.parametrize("runtime", ["threads", "asyncio"])
def test_people_on_two_servers_talk(redis_server, runtime):
    with serve_chat(redis_server.url, runtime) as a, serve_chat(redis_server.url, runtime) as b:
        assert a.port != b.port
        ana, bob = person(a.port, "ana"), person(b.port, "bob")
        ana.send("hola bob, ¿me lees desde el otro servidor?")
        assert bob.until("otro servidor")[-1] == (
            "[general] ana: hola bob, ¿me lees desde el otro servidor?"
        )
        bob.send("/msg ana sí, perfectamente")
        assert ana.until("perfectamente")[-1] == "[private] bob -> ana: sí, perfectamente"
        bob.send("/who")
        assert bob.until("general:")[-1] == "general: ana, bob"
        for client in (ana, bob):
            client.close()
        for cli in (a, b):
            code, err = cli.stop(signal.SIGTERM)
            assert code == 0, err


def test_servers_outlive_redis_and_join_up_again_when_it_returns(redis_server):
    url = redis_server.url
    with serve_chat(url, "asyncio") as a, serve_chat(url, "threads") as b:
        ana, carla, bob = person(a.port, "ana"), person(a.port, "carla"), person(b.port, "bob")
        ana.send("antes")
        assert bob.until("antes")[-1] == "[general] ana: antes"

        redis_server.stop()  # SIGTERM by PID
        for client in (ana, carla, bob):
            assert client.until("chat hub")[-1] == f"* {UNREACHABLE}"
        ana.send("solo en a")
        assert carla.until("solo en a")[-1] == "[general] ana: solo en a"
        bob.send("solo en b")
        assert bob.until("solo en b")[-1] == "[general] bob: solo en b"
        newcomer = LineClient(b.port)  # a server without its hub still takes people in
        newcomer.send("/ping")
        assert newcomer.until("pong")[-1] == "pong"

        redis_server.start()  # the same port: both servers reconnect on their own
        for client in (ana, carla, bob):
            assert client.until("chat hub")[-1] == f"* {BACK}"
        bob.send("otra vez juntos")
        assert ana.until("otra vez juntos")[-1] == "[general] bob: otra vez juntos"
        assert not any("solo en b" in line for line in carla.until("otra vez juntos"))
        for client in (ana, carla, bob, newcomer):
            client.close()
        for cli in (a, b):
            code, err = cli.stop(signal.SIGTERM)
            assert code == 0, err
            assert b"unreachable" in err and b"reachable again" in err  # and logged


def test_a_hub_that_cannot_be_reached_stops_the_start_with_one_line():
    port = free_port()  # nothing listens there
    command = [*ENLACE, "serve", "chat", "--port", "0", "--hub", f"redis://127.0.0.1:{port}/0"]
    result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"enlace: cannot reach the chat hub at redis://127.0.0.1:{port}/0: connection refused\n"
    )
    assert b"listening" not in result.stdout


def test_data_and_hub_do_not_go_together(tmp_path):
    command = [*ENLACE, "serve", "chat", "--data", str(tmp_path), "--hub", "redis://h:1/0"]
    result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert result.returncode == 2
    assert b"argument --hub: not allowed with argument --data" in result.stderr
