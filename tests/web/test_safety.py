"""Refusals: paths out of the root, redirects, limits, smuggling, slowloris, the connection cap.

Each refusal is checked on the wire (status, and whether the connection is
closed), and the server is shown to go on serving others normally.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from enlace.limits import LINGER_TIMEOUT, MAX_LINGERING_REFUSALS
from tests.conftest import assert_flood_is_cut, connect, reset_within
from tests.web.httpkit import Conn, curl, exchange, get, request_bytes, web

__all__ = ["web"]

SECRET = b"top secret, outside the root"
CL_TE = b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "secret.txt").write_bytes(SECRET)
    public = tmp_path / "public"
    public.mkdir()
    (public / "ok.txt").write_text("ok")
    (public / "dir").mkdir()
    (public / "dir" / "index.html").write_text("index")
    return public


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/dir/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/..%2fsecret.txt",
        "/dir/..%2f..%2fsecret.txt",
        "/%252e%252e/secret.txt",
        "/ok.txt%00.html",
        "/..\\secret.txt",
        "/dir\\..\\..\\secret.txt",
        "/%5c..%5csecret.txt",
        "/./ok.txt",
        "/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 dots
        "/%0d%0aSet-Cookie:x",
    ],
)
def test_paths_that_try_to_leave_the_root_are_refused(web, root, path):
    server = web(root)
    raw = exchange(
        server.address, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert status_of(raw) in (400, 404), raw[:200]
    assert SECRET not in raw


def test_curl_cannot_reach_outside_either(web, root):
    server = web(root)
    result = curl("--path-as-is", "-i", f"{server.url}/dir/../../secret.txt")
    assert result.stdout.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404"))
    assert SECRET not in result.stdout


def test_symlinks_out_of_the_root_are_404_and_inside_it_work(web, root):
    os.symlink(root.parent / "secret.txt", root / "leak.txt")
    os.symlink(root.parent, root / "up")
    os.symlink(root / "ok.txt", root / "alias.txt")
    server = web(root)
    assert get(server.address, "/leak.txt").status == 404
    assert get(server.address, "/up/secret.txt").status == 404
    assert get(server.address, "/up/").status == 404
    assert get(server.address, "/alias.txt").body == b"ok"


def test_a_symlinked_precompressed_sibling_out_of_the_root_is_not_served(web, root):
    (root / "app.js").write_text("app();")
    os.symlink(root.parent / "secret.txt", root / "app.js.gz")
    server = web(root)
    response = get(server.address, "/app.js", {"Accept-Encoding": "gzip"})
    assert response.body == b"app();"


def test_a_fifo_in_the_root_is_404_and_does_not_block_the_server(web, root):
    os.mkfifo(root / "pipe")
    server = web(root)
    assert get(server.address, "/pipe").status == 404
    assert get(server.address, "/ok.txt").body == b"ok"


@pytest.mark.parametrize(
    "path",
    ["//evil.example/..", "//evil.example/dir", "/\\evil.example/dir", "/%2fevil.example/dir"],
)
def test_no_redirect_location_starts_with_two_slashes(web, root, path):
    (root / "evil.example").mkdir()
    (root / "evil.example" / "dir").mkdir()
    server = web(root)
    raw = exchange(
        server.address, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"location:"):
            location = line.split(b":", 1)[1].strip()
            assert location.startswith(b"/") and location[1:2] not in (b"/", b"\\"), location


def test_a_redirect_keeps_one_leading_slash(web, root):
    server = web(root)
    response = get(server.address, "//dir")
    assert (response.status, response.headers["location"]) == (301, "/dir/")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 17000 + b"\r\n\r\n", 431),
        (b"POST /ok.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: x\r\n" + CL_TE + b"\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
)
def test_limits_and_smuggling_shapes_get_their_status_and_a_close(web, root, raw, status):
    server = web(root)
    with Conn(server.address) as conn:
        conn.send(raw + request_bytes("/ok.txt"))  # a request smuggled behind must not run
        response = conn.response()
        assert response.status == status
        assert response.headers["connection"] == "close"
        assert conn.closed()
    assert get(server.address, "/ok.txt").body == b"ok"  # the server goes on


def test_other_methods_are_405_with_allow_and_the_connection_goes_on(web, root):
    server = web(root)
    with Conn(server.address) as conn:
        for method in ("DELETE", "OPTIONS", "PUT"):
            conn.send(request_bytes("/ok.txt", method=method))
            response = conn.response()
            assert (response.status, response.headers["allow"]) == (405, "GET, HEAD")
        conn.send(b"POST /ok.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
        assert conn.response().status == 405
        conn.send(request_bytes("/ok.txt"))
        assert conn.response().body == b"ok"  # the body was read past, not taken as a request


def test_limits_can_be_set_per_server(web, root):
    server = web(root, max_request_line=100, max_headers=3, max_body=10)
    assert get(server.address, "/" + "a" * 150).status == 414
    assert get(server.address, "/ok.txt", {"A": "1", "B": "2", "C": "3"}).status == 431
    assert get(server.address, "/ok.txt", {"A": "1"}).status == 200


def test_a_slowloris_client_is_cut_at_the_head_timeout_while_others_are_served(web, root):
    server = web(root, head_timeout=0.6)
    slow = connect(server.address)
    slow.sendall(b"GET /ok.txt HTTP/1.1\r\n")
    started = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:
        # One header byte every 50 ms: never idle, never done.
        while not stop.wait(0.05):
            try:
                slow.sendall(b"X")
            except OSError:
                return

    dripping = threading.Thread(target=trickle)
    dripping.start()
    try:
        served = 0
        while time.monotonic() - started < 0.5:
            assert get(server.address, "/ok.txt").body == b"ok"
            served += 1
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        dripping.join()
        slow.close()
    assert served > 5
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout")
    assert 0.55 <= elapsed < 3


def test_an_idle_keep_alive_connection_is_closed_at_its_timeout(web, root):
    server = web(root, keepalive_timeout=0.3)
    with Conn(server.address) as conn:
        conn.send(request_bytes("/ok.txt"))
        assert conn.response().status == 200
        started = time.monotonic()
        assert conn.closed()
        assert 0.25 <= time.monotonic() - started < 3


def test_over_the_connection_cap_a_client_gets_503_and_the_others_are_untouched(web, root):
    server = web(root, max_connections=2)
    first, second = Conn(server.address), Conn(server.address)
    with first, second:
        for conn in (first, second):
            conn.send(request_bytes("/ok.txt"))
            assert conn.response().status == 200
        with Conn(server.address) as third:
            third.send(request_bytes("/ok.txt"))
            refusal = third.response()
            assert refusal.status == 503 and refusal.headers["connection"] == "close"
            assert third.closed()
        first.send(request_bytes("/ok.txt"))
        assert first.response().body == b"ok"
    deadline = time.monotonic() + 5
    while server.server.connection_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.connection_count == 0


def test_refused_clients_lingering_at_once_are_bounded(web, root):
    # A flood of refused clients that never close: MAX_LINGERING_REFUSALS of them linger
    # after their 503; past that, the 503 is sent and the socket closed at once, so
    # their late bytes meet a reset, as on the TCP servers.
    server = web(root, max_connections=1)
    with Conn(server.address) as first, contextlib.ExitStack() as flood:
        first.send(request_bytes("/ok.txt"))
        assert first.response().status == 200
        refused = [
            flood.enter_context(Conn(server.address)) for _ in range(MAX_LINGERING_REFUSALS + 1)
        ]
        for conn in refused:
            assert conn.response().status == 503
        assert reset_within(refused[-1].sock, LINGER_TIMEOUT / 2)
        assert not reset_within(refused[0].sock, 0.05)  # still lingering
        first.send(request_bytes("/ok.txt"))
        assert first.response().body == b"ok"


def test_a_refused_client_that_keeps_sending_is_cut_after_linger_bytes(web, root):
    # After the 503 the server reads and drops what the client still sends (a lingering
    # close), but not without end: past LINGER_BYTES it closes, well before LINGER_TIMEOUT.
    server = web(root, max_connections=1)
    with Conn(server.address) as first, Conn(server.address) as flood:
        first.send(request_bytes("/ok.txt"))
        assert first.response().status == 200
        flood.send(request_bytes("/ok.txt"))
        assert flood.response().status == 503
        assert_flood_is_cut(flood.send)
        first.send(request_bytes("/ok.txt"))
        assert first.response().body == b"ok"


def test_a_client_that_resets_mid_file_does_not_disturb_the_server(web, tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    (tmp_path / "ok.txt").write_text("ok")
    server = web(tmp_path)
    for _ in range(3):
        sock = connect(server.address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request_bytes("/big.bin"))
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset, with most of the file unsent
    assert get(server.address, "/ok.txt").body == b"ok"
    deadline = time.monotonic() + 5
    while server.server.connection_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.connection_count == 0


def test_a_client_that_stops_reading_is_dropped_at_the_send_timeout(web, tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    server = web(tmp_path, send_timeout=0.5)
    sock = connect(server.address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(request_bytes("/big.bin"))
    deadline = time.monotonic() + 5
    while server.server.connection_count and time.monotonic() < deadline:
        time.sleep(0.05)  # the client reads nothing; the server must give up on it
    assert server.server.connection_count == 0
    sock.close()


def test_a_link_retargeted_out_of_the_root_after_being_served_is_404(web, root):
    (root / "inside.txt").write_text("inside")
    (root / "big-inside.bin").write_bytes(b"i" * 200_000)
    os.symlink(root / "inside.txt", root / "link.txt")
    os.symlink(root / "big-inside.bin", root / "big-link.bin")
    (root.parent / "big-secret.bin").write_bytes(SECRET * 10_000)
    server = web(root)
    assert get(server.address, "/link.txt").body == b"inside"  # served, and remembered
    assert len(get(server.address, "/big-link.bin").body) == 200_000
    for link, target in (("link.txt", "secret.txt"), ("big-link.bin", "big-secret.bin")):
        os.remove(root / link)
        os.symlink(root.parent / target, root / link)
        response = get(server.address, f"/{link}")
        assert response.status == 404 and SECRET not in response.body
