"""Static files over real loopback sockets, checked with curl and raw HTTP.

Every test runs on asyncio's event loop and on uvloop.
"""

from __future__ import annotations

import gzip
import logging
import os
import re

import pytest

from enlace.web.static import content_type
from tests.web.httpkit import Conn, curl, get, request_bytes, web

__all__ = ["web"]  # the fixture, imported for pytest


@pytest.fixture
def site(tmp_path):
    (tmp_path / "hola.txt").write_text("hola, mundo\n")
    (tmp_path / "page.html").write_text("<p>page</p>")
    (tmp_path / "data.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_text("<h1>docs</h1>")
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_a_file_comes_with_its_type_length_and_validators(web, site):
    server = web(site)
    result = curl("-i", f"{server.url}/hola.txt")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert result.returncode == 0, result.stderr
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"hola, mundo\n"
    assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in head
    assert b"\r\nContent-Length: 12\r\n" in head
    assert re.search(rb'\r\nETag: "[0-9a-f]+-c"\r\n', head)
    assert re.search(rb"\r\nLast-Modified: \w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT\r\n", head)
    assert b"\r\nAccept-Ranges: bytes\r\n" in head


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.html", "text/html; charset=utf-8"),
        ("a.CSS", "text/css; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        ("a.svg", "image/svg+xml; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.woff2", "font/woff2"),
        ("noext", "application/octet-stream"),
    ],
)
def test_content_types(name, kind):
    assert content_type(name) == kind


def test_head_has_the_headers_of_get_and_no_body(web, site):
    server = web(site)
    with Conn(server.address) as conn:
        conn.send(request_bytes("/data.bin", method="HEAD") + request_bytes("/hola.txt"))
        head = conn.response(head_only=True)
        assert head.status == 200 and head.headers["content-length"] == "1024"
        assert head.body == b""
        after = conn.response()  # the next response starts right after the head
        assert after.body == b"hola, mundo\n"


def test_if_none_match_and_if_modified_since_give_304(web, site):
    server = web(site)
    first = get(server.address, "/page.html")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    again = curl("-i", "-H", f"If-None-Match: {etag}", f"{server.url}/page.html")
    assert again.stdout.startswith(b"HTTP/1.1 304 Not Modified")
    assert again.stdout.endswith(b"\r\n\r\n")  # no body
    assert f"ETag: {etag}".encode() in again.stdout
    weak = get(server.address, "/page.html", {"If-None-Match": f'"nope", W/{etag}'})
    assert weak.status == 304
    assert get(server.address, "/page.html", {"If-Modified-Since": modified}).status == 304
    older = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert get(server.address, "/page.html", {"If-Modified-Since": older}).status == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    both = {"If-None-Match": '"other"', "If-Modified-Since": modified}
    assert get(server.address, "/page.html", both).status == 200


def test_a_changed_file_gets_a_new_etag(web, site):
    server = web(site)
    before = get(server.address, "/hola.txt").headers["etag"]
    (site / "hola.txt").write_text("adios\n")
    os.utime(site / "hola.txt", ns=(1, 1_000_000_000))
    after = get(server.address, "/hola.txt", {"If-None-Match": before})
    assert after.status == 200 and after.body == b"adios\n"
    assert after.headers["etag"] != before


def test_byte_ranges(web, site):
    server = web(site)
    data = (site / "data.bin").read_bytes()
    result = curl("-i", "-r", "10-19", f"{server.url}/data.bin")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 Partial Content")
    assert b"\r\nContent-Range: bytes 10-19/1024\r\n" in head
    assert body == data[10:20]
    suffix = get(server.address, "/data.bin", {"Range": "bytes=-5"})
    assert (suffix.status, suffix.body) == (206, data[-5:])
    open_ended = get(server.address, "/data.bin", {"Range": "bytes=1000-"})
    assert (open_ended.status, open_ended.body) == (206, data[1000:])
    past_end = get(server.address, "/data.bin", {"Range": "bytes=1020-5000"})
    assert past_end.headers["content-range"] == "bytes 1020-1023/1024"


def test_unsatisfiable_range_is_416_and_odd_ranges_give_the_whole_file(web, site):
    server = web(site)
    refused = get(server.address, "/data.bin", {"Range": "bytes=5000-"})
    assert refused.status == 416
    assert refused.headers["content-range"] == "bytes */1024"
    # "\u00b2" and "\u00b9" (superscript 2 and 1, one byte each in Latin-1) pass
    # str.isdigit() but not int(): no 500 for them either.
    odd = (
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=9-2",
        "bytes=x-y",
        "bytes=\u00b2-",
        "bytes=0-\u00b9",
    )
    for whole in odd:
        response = get(server.address, "/data.bin", {"Range": whole})
        assert (response.status, len(response.body)) == (200, 1024), whole
    # A position of thousands of digits is past the end like any other (int() refuses it).
    huge = "9" * 5000
    assert get(server.address, "/data.bin", {"Range": f"bytes={huge}-"}).status == 416
    to_the_end = get(server.address, "/data.bin", {"Range": f"bytes=1000-{huge}"})
    assert (to_the_end.status, to_the_end.body) == (206, (bytes(range(256)) * 4)[1000:])
    suffix = get(server.address, "/data.bin", {"Range": f"bytes=-{huge}"})
    assert (suffix.status, len(suffix.body)) == (206, 1024)


def test_if_range_with_a_stale_validator_gives_the_whole_file(web, site):
    server = web(site)
    etag = get(server.address, "/data.bin").headers["etag"]
    fresh = get(server.address, "/data.bin", {"Range": "bytes=0-3", "If-Range": etag})
    assert fresh.status == 206
    stale = get(server.address, "/data.bin", {"Range": "bytes=0-3", "If-Range": '"old"'})
    assert (stale.status, len(stale.body)) == (200, 1024)


def test_directories_redirect_to_the_slash_and_serve_index_html(web, site):
    server = web(site)
    moved = get(server.address, "/docs?x=1")
    assert moved.status == 301
    assert moved.headers["location"] == "/docs/?x=1"
    followed = curl("-L", f"{server.url}/docs")
    assert followed.stdout == b"<h1>docs</h1>"


def test_a_directory_without_index_is_404_unless_listing_is_on(web, site):
    (site / "empty" / "<b>&'.txt").write_text("x")
    (site / "empty" / "sub").mkdir()
    plain = web(site)
    assert get(plain.address, "/empty/").status == 404
    listing = web(site, listing=True)
    page = get(listing.address, "/empty/")
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    text = page.body.decode()
    assert "<b>" not in text  # escaped, never markup
    assert "&lt;b&gt;&amp;&#x27;.txt" in text
    assert 'href="%3Cb%3E%26%27.txt"' in text
    assert text.index('href="sub/"') < text.index("&lt;b&gt;")  # directories first
    assert 'href="../"' in text
    assert curl(f"{listing.url}/empty/%3Cb%3E%26%27.txt").stdout == b"x"


def test_listing_is_bounded(web, site):
    for i in range(5):
        (site / "empty" / f"f{i}").write_text("x")
    server = web(site, listing=True)
    server.server.files.max_listing = 3
    text = get(server.address, "/empty/").body.decode()
    assert text.count("<li><a") == 4  # ../ and three files
    assert "2 more not shown (limit 3)" in text


def test_missing_file_gets_the_404_page(web, site):
    server = web(site)
    missing = get(server.address, "/nope.txt")
    assert missing.status == 404
    assert missing.headers["content-type"] == "text/html; charset=utf-8"
    assert b"404 Not Found" in missing.body


def test_precompressed_siblings_are_served_to_clients_that_accept_them(web, site):
    text = b"body { color: red; }\n" * 50
    (site / "app.css").write_bytes(text)
    (site / "app.css.gz").write_bytes(gzip.compress(text))
    (site / "app.css.br").write_bytes(b"brotli-bytes")
    server = web(site)
    plain = get(server.address, "/app.css")
    assert plain.body == text and "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"
    zipped = curl("--compressed", "-H", "Accept-Encoding: gzip", f"{server.url}/app.css")
    assert zipped.stdout == text  # curl decoded the gzip body we sent
    raw = get(server.address, "/app.css", {"Accept-Encoding": "gzip, deflate"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.headers["content-type"] == "text/css; charset=utf-8"
    assert gzip.decompress(raw.body) == text
    assert raw.headers["etag"] != plain.headers["etag"]
    br = get(server.address, "/app.css", {"Accept-Encoding": "gzip, br"})
    assert (br.headers["content-encoding"], br.body) == ("br", b"brotli-bytes")
    refused = get(server.address, "/app.css", {"Accept-Encoding": "br;q=0, identity"})
    assert refused.body == text
    ranged = get(server.address, "/app.css", {"Accept-Encoding": "gzip", "Range": "bytes=0-3"})
    assert (ranged.status, ranged.body) == (206, text[:4])  # ranges: the identity body


def test_a_stale_precompressed_sibling_is_ignored(web, site):
    (site / "old.js").write_text("new();")
    (site / "old.js.gz").write_bytes(gzip.compress(b"old();"))
    os.utime(site / "old.js.gz", (1, 1))
    server = web(site)
    assert get(server.address, "/old.js", {"Accept-Encoding": "gzip"}).body == b"new();"


@pytest.mark.parametrize("size", [200_000, 5 * 1024 * 1024 + 7])
def test_large_files_arrive_whole(web, tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "big.bin").write_bytes(data)
    server = web(tmp_path)
    result = curl(f"{server.url}/big.bin", f"{server.url}/big.bin", "-o", "/dev/null", "-o", "-")
    assert result.stdout == data
    part = get(server.address, "/big.bin", {"Range": f"bytes=100000-{size - 2}"})
    assert part.body == data[100000 : size - 1]


def test_keep_alive_reuses_one_connection(web, site):
    server = web(site)
    urls = [f"{server.url}/hola.txt", f"{server.url}/data.bin", f"{server.url}/docs/"]
    result = curl("-w", "%{num_connects} ", *urls, *["-o", "/dev/null"] * 3)
    assert result.stdout.endswith(b"1 0 0 ")  # one connection made, then reused


def test_pipelined_requests_are_answered_in_order_around_a_sendfile(web, tmp_path):
    big = os.urandom(3 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    server = web(tmp_path)
    with Conn(server.address) as conn:
        conn.send(
            request_bytes("/a.txt")
            + request_bytes("/big.bin")
            + request_bytes("/b.txt")
            + request_bytes("/missing")
            + request_bytes("/a.txt")
        )
        bodies = [conn.response() for _ in range(5)]
    assert [r.status for r in bodies] == [200, 200, 200, 404, 200]
    assert bodies[0].body == b"a" and bodies[1].body == big and bodies[2].body == b"b"


def test_every_request_gets_an_access_log_line(web, site, caplog):
    server = web(site)
    with caplog.at_level(logging.INFO, logger="enlace.web"):
        server.server._log_requests = True
        get(server.address, "/hola.txt")
        get(server.address, '/nope"x')
    lines = [r.getMessage() for r in caplog.records if r.name == "enlace.web"]
    when = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"
    assert re.fullmatch(rf'127\.0\.0\.1 - - {when} "GET /hola\.txt HTTP/1\.1" 200 12', lines[0])
    assert lines[1].endswith('"GET /nope\\"x HTTP/1.1" 404 ' + lines[1].rsplit(" ", 1)[1])


def test_the_built_in_site_is_served_by_default(web):
    server = web()
    home = get(server.address, "/")
    assert home.status == 200 and b"<h1>enlace</h1>" in home.body
    assert b"Only the web server runs here" in home.body
    assert get(server.address, "/index.html").body == home.body
    css = get(server.address, "/style.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"


def test_repeated_requests_see_changes_and_head_matches_get(web, tmp_path):
    (tmp_path / "big.bin").write_bytes(b"a" * 100_000)
    (tmp_path / "small.txt").write_text("one")
    server = web(tmp_path)
    for _ in range(2):  # the second time from the server's cache of replies
        assert len(get(server.address, "/big.bin").body) == 100_000
        head = get(server.address, "/big.bin", method="HEAD")
        assert head.headers["content-length"] == "100000" and head.body == b""
        assert get(server.address, "/small.txt").body == b"one"
    (tmp_path / "small.txt").write_text("two!")
    assert get(server.address, "/small.txt").body == b"two!"
    (tmp_path / "small.txt").unlink()
    assert get(server.address, "/small.txt").status == 404
