"""``enlace serve web`` and the web server in ``enlace up``, as real processes."""

from __future__ import annotations

import re
import signal
import socket

import pytest

from enlace.cli import parser, up_launches
from enlace.cli.web import WebApp
from enlace.services.chat import ChatService
from tests.cli.support import run, server
from tests.conftest import RUNTIMES
from tests.web.httpkit import curl, get


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_serve_web_serves_the_built_in_site_and_logs_each_request(runtime):
    with server("serve", "web", "--port", "0", "--runtime", runtime) as cli:
        assert re.search(
            rb"enlace: web listening on 127\.0\.0\.1:\d+ \(tcp, \S+ runtime\)", cli.banner
        )
        assert f"try it: open http://127.0.0.1:{cli.port}/".encode() in cli.banner
        home = curl("-i", f"http://127.0.0.1:{cli.port}/")
        assert home.stdout.startswith(b"HTTP/1.1 200 OK")
        assert b"<h1>enlace</h1>" in home.stdout
        code, err = cli.stop(signal.SIGINT)
    assert code == 0
    assert re.search(rb'enlace\.web: 127\.0\.0\.1 - - \[[^]]+\] "GET / HTTP/1\.1" 200 \d+', err)


def test_serve_web_root_and_list(tmp_path):
    (tmp_path / "notes.txt").write_text("apuntes")
    (tmp_path / "sub").mkdir()
    with server("serve", "web", "--port", "0", "--root", str(tmp_path), "--list") as cli:
        listing = get(("127.0.0.1", cli.port), "/")
        assert b'href="notes.txt"' in listing.body and b'href="sub/"' in listing.body
        assert get(("127.0.0.1", cli.port), "/notes.txt").body == b"apuntes"
        cli.stop()
    with server("serve", "web", "--port", "0", "--root", str(tmp_path)) as cli:
        assert get(("127.0.0.1", cli.port), "/").status == 404  # no listing without --list
        cli.stop()


def test_limits_and_timeouts_come_from_the_options(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    args = ["--max-request-line", "64", "--max-headers", "2", "--head-timeout", "none"]
    with server("serve", "web", "--port", "0", "--root", str(tmp_path), *args) as cli:
        address = ("127.0.0.1", cli.port)
        assert get(address, "/" + "x" * 100).status == 414
        assert get(address, "/a.txt", {"A": "1", "B": "2"}).status == 431
        assert get(address, "/a.txt").body == b"a"
        cli.stop()


def test_a_bad_root_is_one_clear_line(tmp_path):
    result = run("serve", "web", "--port", "0", "--root", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("enlace: cannot serve"), result.stderr
    assert "Traceback" not in result.stderr.decode()


def test_a_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run("serve", "web", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert b"address already in use" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_up_runs_the_web_server_and_its_home_page_lists_every_service(runtime):
    with server("up", "--any-port", "--runtime", runtime, marker=b"Ctrl-C stops everything") as cli:
        table = cli.table()
        assert table["web"][0] == "tcp"
        page = get(("127.0.0.1", table["web"][1]), "/").body.decode()
        for name, (kind, port) in table.items():
            assert f"<td>{name}</td><td>{kind} 127.0.0.1:{port}</td>" in page
        assert "enlace chat 127.0.0.1:" in page  # the try-it lines
        code, _ = cli.stop(signal.SIGTERM)
        assert code == 0


def test_under_up_the_browser_chat_shares_the_chat_services_rooms():
    launches = {launch.name: launch for launch in up_launches(parser().parse_args(["up"]))}
    web, chat = launches["web"].service, launches["chat"].service
    assert isinstance(web, WebApp) and isinstance(chat, ChatService)
    assert web.chat is chat
