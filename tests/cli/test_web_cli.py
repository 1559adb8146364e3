"""``enlace serve web`` and the web server in ``enlace up``, as real processes."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

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


# -- HTTPS, the token and the allow-list from the command line ------------------------------


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate made by ``enlace cert`` (localhost, 127.0.0.1, ::1)."""
    where = tmp_path_factory.mktemp("cert")
    made = run("cert", "--out", str(where))
    assert made.returncode == 0, made.stderr
    return str(where / "enlace-cert.pem"), str(where / "enlace-key.pem")


def wss_ping(port: int, cert: str, query: str = "") -> str:
    context = ssl.create_default_context(cafile=cert)
    url = f"wss://localhost:{port}/ws{query}"
    with ws_connect(url, ssl=context, open_timeout=15) as ws:
        ws.send(json.dumps({"id": 1, "cmd": "ping"}))
        while True:
            message = ws.recv(timeout=5)
            assert isinstance(message, str)
            if message.startswith("{") and json.loads(message).get("id") == 1:
                return str(json.loads(message)["result"])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_serve_web_over_https_with_a_token_from_the_environment(runtime, cert_files, monkeypatch):
    cert, key = cert_files
    monkeypatch.setenv("ENLACE_TOKEN", "s3cret-web")
    args = ["--tls-cert", cert, "--tls-key", key, "--runtime", runtime]
    with server("serve", "web", "--port", "0", *args, marker=b"tls: ") as cli:
        port = cli.port
        try_it = f"open https://127.0.0.1:{port}/chat.html#token=TOKEN in a browser"
        assert try_it.encode() in cli.banner
        assert f"curl --cacert {cert} https://127.0.0.1:{port}/".encode() in cli.banner
        home = curl("-i", "--cacert", cert, f"https://localhost:{port}/")
        assert home.returncode == 0, home.stderr
        assert home.stdout.startswith(b"HTTP/1.1 200 OK") and b"<h1>enlace</h1>" in home.stdout
        plain = curl("-i", f"http://127.0.0.1:{port}/")
        assert plain.stdout.startswith(b"HTTP/1.1 400")
        assert b"The plain HTTP request was sent to HTTPS port" in plain.stdout
        assert wss_ping(port, cert, "?token=s3cret-web") == "pong"
        with pytest.raises(InvalidStatus) as refused:
            wss_ping(port, cert, "?token=guess")
        assert refused.value.response.status_code == 403
        assert curl("--cacert", cert, f"https://localhost:{port}/chat.html").returncode == 0
        code, err = cli.stop(signal.SIGINT)
    assert code == 0
    assert b"s3cret-web" not in cli.banner + err and b"guess" not in err
    assert b'"GET /ws?token=<hidden> HTTP/1.1" 101' in err
    assert b'"GET /ws?token=<hidden> HTTP/1.1" 403' in err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_up_with_a_certificate_serves_https_and_wss_on_the_web_entry(runtime, cert_files):
    cert, key = cert_files
    args = ["--tls-cert", cert, "--tls-key", key, "--token", "up-secret", "--runtime", runtime]
    with server("up", "--any-port", *args, marker=b"Ctrl-C stops everything") as cli:
        port = cli.table()["web"][1]
        assert f"open https://127.0.0.1:{port}/chat.html#token=TOKEN".encode() in cli.banner
        assert b"the web server: https:// and wss://" in cli.banner
        page = curl("--cacert", cert, f"https://localhost:{port}/")
        assert page.returncode == 0 and b"https://127.0.0.1:" in page.stdout
        assert wss_ping(port, cert, "?token=up-secret") == "pong"
        code, err = cli.stop(signal.SIGTERM)
    assert code == 0
    assert b"up-secret" not in cli.banner + err


def test_serve_web_closes_a_client_outside_the_allow_list_at_once():
    with server("serve", "web", "--port", "0", "--allow", "10.0.0.0/8") as cli:
        refused = curl("-sS", f"http://127.0.0.1:{cli.port}/")
        assert refused.returncode != 0 and refused.stdout == b""
        code, err = cli.stop()
    assert code == 0
    assert b"127.0.0.1 refused: not in the allow-list" in err
    assert b'"GET / HTTP/1.1"' not in err  # never reached the HTTP handler


def test_serve_web_origin_lets_another_sites_pages_in():
    with server("serve", "web", "--port", "0", "--origin", "https://chat.example") as cli:
        url = f"ws://127.0.0.1:{cli.port}/ws"
        with ws_connect(url, origin="https://chat.example", open_timeout=15) as ws:
            ws.send(json.dumps({"id": 1, "cmd": "ping"}))
            while True:  # the chat greets in text form before the first request
                message = ws.recv(timeout=5)
                if isinstance(message, str) and message.startswith("{"):
                    assert json.loads(message) == {"id": 1, "ok": True, "result": "pong"}
                    break
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, origin="https://evil.example", open_timeout=15)
        assert refused.value.response.status_code == 403
