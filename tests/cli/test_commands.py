"""The ``enlace`` command end to end: real processes, real clients, real signals."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess

import pytest

from tests.cli.support import ENLACE, free_port, read_until, run, server
from tests.conftest import RUNTIMES, connect, read_exactly, read_to_eof


def assert_one_clear_line(result: subprocess.CompletedProcess[bytes], *parts: str) -> None:
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("enlace: ")
    for part in parts:
        assert part in lines[0]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_serve_upper_then_sigint_exits_zero(runtime):
    with server("serve", "upper", "--port", "0", "--runtime", runtime) as cli:
        assert b"upper listening on 127.0.0.1:" in cli.banner
        assert b"try it: " in cli.banner
        with connect(("127.0.0.1", cli.port)) as sock:
            sock.sendall("hola servidor ñandú".encode())
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == "HOLA SERVIDOR ÑANDÚ".encode()
        code, err = cli.stop(signal.SIGINT)
    assert code == 0
    assert b"closed (done): in 21 B, out 21 B" in err  # the per-connection log line


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigterm_lets_an_open_connection_finish(runtime):
    with server("serve", "echo", "--port", "0", "--runtime", runtime) as cli:
        sock = connect(("127.0.0.1", cli.port))
        sock.sendall(b"antes")
        assert read_exactly(sock, 5) == b"antes"
        cli.process.send_signal(signal.SIGTERM)
        read_until_stderr = cli.process.stderr
        assert read_until_stderr is not None
        # Once the server says it is stopping, new clients are refused but ours is served.
        line = b""
        while b"stopping" not in line:
            line = read_until_stderr.readline()
            assert line, "the server exited without draining"
        sock.sendall(b"durante")
        assert read_exactly(sock, 7) == b"durante"
        sock.close()
        assert cli.process.wait(10) == 0


def test_drain_timeout_bounds_the_wait_for_a_silent_client():
    with (
        server("serve", "echo", "--port", "0", "--drain-timeout", "0.3") as cli,
        connect(("127.0.0.1", cli.port)) as sock,
    ):
        sock.sendall(b"x")
        assert read_exactly(sock, 1) == b"x"
        code, _ = cli.stop(signal.SIGTERM, timeout=8)
        assert code == 0
        assert read_to_eof(sock) == b""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_framed_echo_from_the_command_line(runtime):
    with server("serve", "echo", "--framed", "--port", "0", "--runtime", runtime) as cli:
        with connect(("127.0.0.1", cli.port)) as sock:
            sock.sendall(struct.pack(">I", 4) + b"hola")
            assert read_exactly(sock, 8) == struct.pack(">I", 4) + b"hola"
        assert cli.stop()[0] == 0


def test_greet_with_another_message():
    with server("serve", "greet", "--port", "0", "--message", "Hello new friend!") as cli:
        outputs = [run("connect", "127.0.0.1", str(cli.port)).stdout for _ in range(2)]
        assert outputs == [b"0. Hello new friend!\n", b"1. Hello new friend!\n"]
        assert cli.stop()[0] == 0


def test_connect_half_closes_and_prints_the_whole_reply():
    data = bytes(range(256)) * 4096  # 1 MiB of binary
    with server("serve", "echo", "--port", "0") as cli:
        result = run("connect", "127.0.0.1", str(cli.port), stdin=data)
        assert result.returncode == 0
        assert result.stdout == data
        assert run("connect", f"127.0.0.1:{cli.port}", stdin=b"hola\n").stdout == b"hola\n"


def test_connect_exits_when_the_server_closes_even_with_stdin_open():
    with server("serve", "greet", "--port", "0") as cli:
        client = subprocess.Popen(
            [*ENLACE, "connect", "127.0.0.1", str(cli.port)],
            stdin=subprocess.PIPE,  # left open, like a terminal nobody types in
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert read_until(client, b"\n") == b"0. Hola nuevo amigo!\n"
        assert client.wait(10) == 0
        assert client.stdin is not None
        client.stdin.close()


def test_connect_udp_prints_each_reply():
    with server("serve", "udp", "--port", "0") as cli:
        result = run("connect", "--udp", "127.0.0.1", str(cli.port), stdin=b"uno\ndos\ntres\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"uno\ndos\ntres\n"


def test_connect_udp_to_nothing_says_so():
    result = run("connect", "--udp", "127.0.0.1", str(free_port()), stdin=b"hola\n")
    assert_one_clear_line(result, "no UDP service", "port unreachable")


def test_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "echo", "--port", str(port))
    assert_one_clear_line(result, f"cannot listen on 127.0.0.1:{port}", "address already in use")


def test_bad_host_is_one_clear_line():
    result = run("serve", "upper", "--host", "no-such-host.invalid", "--port", "0")
    assert_one_clear_line(result, "cannot resolve 'no-such-host.invalid'")


def test_connection_refused_is_one_clear_line():
    port = free_port()
    result = run("connect", "127.0.0.1", str(port))
    assert_one_clear_line(result, f"cannot connect to 127.0.0.1:{port}", "refused")


def test_bad_arguments_exit_2():
    assert run("serve", "echo", "--idle-timeout", "soon").returncode == 2
    assert run("connect", "127.0.0.1", "notaport").returncode == 2
    assert run("serve", "nosuchservice").returncode == 2


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_up_runs_every_service_and_stops_cleanly(runtime):
    with server("up", "--any-port", "--runtime", runtime, marker=b"Ctrl-C stops everything") as cli:
        table = cli.table()
        assert set(table) == {"upper", "echo", "greet", "udp", "chat", "web"}
        assert table["udp"][0] == "udp"
        with connect(("127.0.0.1", table["upper"][1])) as sock:
            sock.sendall(b"hola")
            assert read_exactly(sock, 4) == b"HOLA"
        with connect(("127.0.0.1", table["echo"][1])) as sock:
            sock.sendall(b"eco")
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == b"eco"
        with connect(("127.0.0.1", table["greet"][1])) as sock:
            assert read_to_eof(sock) == b"0. Hola nuevo amigo!\n"
        udp = run("connect", "--udp", "127.0.0.1", str(table["udp"][1]), stdin=b"datagrama\n")
        assert udp.stdout == b"datagrama\n"
        code, _ = cli.stop(signal.SIGTERM)
        assert code == 0


def test_every_command_has_help():
    for args in (["--help"], ["up", "--help"], ["serve", "echo", "--help"], ["connect", "--help"]):
        result = run(*args)
        assert result.returncode == 0
        assert b"usage: enlace" in result.stdout


@pytest.mark.skipif(shutil.which("nc") is None, reason="netcat (nc) is not installed")
def test_nc_interactive_echo_as_it_goes():
    with server("serve", "echo", "--port", "0") as cli:
        nc = subprocess.Popen(
            ["nc", "127.0.0.1", str(cli.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert nc.stdin is not None
        try:
            for line in (b"hola\n", b"que tal\n"):
                nc.stdin.write(line)
                nc.stdin.flush()
                assert read_until(nc, line) == line  # echoed before we close anything
        finally:
            nc.kill()
            nc.wait(5)


@pytest.mark.skipif(shutil.which("nc") is None, reason="netcat (nc) is not installed")
def test_nc_half_close_with_upper():
    with server("serve", "upper", "--port", "0") as cli:
        result = subprocess.run(
            ["nc", "-N", "127.0.0.1", str(cli.port)],
            input=b"hola servidor\n",
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert result.stdout == b"HOLA SERVIDOR\n"


def test_a_port_out_of_range_is_a_usage_error_not_a_wrapped_port():
    result = run("serve", "echo", "--port", "70000")
    assert result.returncode == 2
    assert b"a port is a number from 0 to 65535" in result.stderr


def test_log_level_works_before_or_after_the_command():
    for args in (
        ("--log-level", "warning", "serve", "echo", "--port", "0"),
        ("serve", "echo", "--port", "0", "--log-level", "warning"),
    ):
        with server(*args) as cli:
            with connect(("127.0.0.1", cli.port)) as sock:
                sock.sendall(b"x")
                sock.shutdown(socket.SHUT_WR)
                assert read_to_eof(sock) == b"x"
            code, err = cli.stop()
        assert code == 0
        assert b"closed (done)" not in err  # the INFO line is not logged at warning
