"""The sans-I/O HTTP request parser: framing, limits, smuggling shapes, response heads."""

from __future__ import annotations

import pytest

from enlace.protocol.http import HttpError, Request, RequestParser, response_head

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
CL = b"Content-Length: 3\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


def feed(*chunks: bytes, **limits: int | None) -> list[Request | HttpError]:
    parser = RequestParser(**limits)
    out: list[Request | HttpError] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


def error_of(*chunks: bytes, **limits: int | None) -> HttpError:
    events = feed(*chunks, **limits)
    assert events, "expected an error"
    assert isinstance(events[-1], HttpError), events
    return events[-1]


def test_pipelined_requests_come_out_in_order_whatever_the_chunking():
    stream = GET + b"HEAD /b?x=1 HTTP/1.1\r\nHost: x\r\n\r\n" + GET.replace(b"/a", b"/c")
    whole = feed(stream)
    byte_by_byte = feed(*(stream[i : i + 1] for i in range(len(stream))))
    for events in (whole, byte_by_byte):
        assert [(r.method, r.path, r.query) for r in events] == [  # type: ignore[union-attr]
            ("GET", b"/a", b""),
            ("HEAD", b"/b", b"x=1"),
            ("GET", b"/c", b""),
        ]


def test_headers_keep_case_and_order_and_are_found_by_lower_case_name():
    (request,) = feed(b"GET / HTTP/1.1\r\nHost: x\r\nX-Thing: One\r\nAccept: */*\r\n\r\n")
    assert isinstance(request, Request)
    assert request.headers == [(b"Host", b"x"), (b"X-Thing", b"One"), (b"Accept", b"*/*")]
    assert request.header(b"x-thing") == b"One"
    assert request.header(b"missing") is None


def test_keep_alive_follows_the_version_and_connection_header():
    def keep(raw: bytes) -> bool:
        (request,) = feed(raw)
        assert isinstance(request, Request)
        return request.keep_alive

    assert keep(GET)
    assert not keep(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not keep(b"GET / HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host
    assert keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")


def test_a_body_is_read_and_counted_and_the_next_request_still_parses():
    post = b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    chunked = (
        b"POST /g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    events = feed(post + chunked + GET)
    assert [(e.method, e.body_size) for e in events] == [  # type: ignore[union-attr]
        ("POST", 5),
        ("POST", 3),
        ("GET", 0),
    ]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # Content-Length and Transfer-Encoding together: which one frames the body?
        (b"POST / HTTP/1.1\r\nHost: x\r\n" + CL + TE + b"\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\n" + TE + CL + b"\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\rx\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\nHost: x\n\n", 400),  # bare LF line ends
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),  # whitespace before the colon
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET / HTTP/3.7\r\nHost: x\r\n\r\n", 505),
    ],
)
def test_smuggling_shapes_and_malformed_requests_are_refused(raw, status):
    assert error_of(raw).status == status


def test_nothing_after_an_error_is_parsed():
    parser = RequestParser()
    events = parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + GET)
    assert len(events) == 1 and isinstance(events[0], HttpError)
    assert parser.feed(GET) == []


def test_requests_before_an_error_are_still_delivered():
    events = feed(GET + b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(events[0], Request)
    assert isinstance(events[1], HttpError) and events[1].status == 400


def test_request_line_limit_is_414():
    error = error_of(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n", max_request_line=50)
    assert (error.status, error.code) == (414, "uri_too_long")
    # Found while the line is still arriving, a piece at a time.
    pieces = [b"GET /"] + [b"a" * 10] * 6
    assert error_of(*pieces, max_request_line=50).status == 414


def test_header_count_and_size_limits_are_431():
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 5 + b"\r\n"
    assert error_of(many, max_headers=5).status == 431
    assert isinstance(feed(many, max_headers=6)[0], Request)
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 200 + b"\r\n\r\n"
    error = error_of(big, max_header_bytes=100)
    assert (error.status, error.code) == (431, "headers_too_large")


def test_a_head_that_never_ends_is_refused_before_it_is_all_buffered():
    parser = RequestParser(max_request_line=100, max_header_bytes=100)
    events = parser.feed(b"GET / HTTP/1.1\r\nX: ")
    assert events == [] and parser.in_head
    for _ in range(10):
        events = parser.feed(b"y" * 30)  # one endless header value, 30 bytes at a time
        if events:
            break
    assert isinstance(events[-1], HttpError) and events[-1].status == 431


def test_a_partial_head_after_pipelined_requests_is_measured_from_its_start():
    # 50 complete requests in one read, then the start of another: not a large head.
    parser = RequestParser(max_request_line=100, max_header_bytes=100)
    events = parser.feed(GET * 50 + b"GET /next HTTP/1.1\r\nHo")
    assert len(events) == 50 and all(isinstance(e, Request) for e in events)
    assert parser.in_head
    assert len(parser.feed(b"st: x\r\n\r\n")) == 1


def test_body_limit_is_413_from_the_length_or_while_chunks_arrive():
    announced = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
    assert error_of(announced, max_body=10).status == 413
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    error = error_of(chunked, b"6\r\nabcdef\r\n", b"6\r\nabcdef\r\n", max_body=10)
    assert (error.status, error.code) == (413, "body_too_large")


def test_limits_can_be_disabled():
    long_target = b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert isinstance(feed(long_target, max_request_line=None, max_header_bytes=None)[0], Request)


def test_head_and_idle_track_a_request_in_progress():
    parser = RequestParser()
    assert parser.idle and not parser.in_head
    parser.feed(b"GET / HT")
    assert parser.in_head and not parser.idle
    parser.feed(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert parser.idle and not parser.in_head


def test_an_upgrade_stops_parsing_and_keeps_the_bytes_after_the_head():
    upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    parser = RequestParser()
    (request,) = parser.feed(upgrade + b"\x81\x85frame")
    assert isinstance(request, Request) and request.upgrade
    assert parser.upgrade_rest == b"\x81\x85frame"
    assert request.head() == upgrade


def test_an_upgrade_the_server_declines_goes_on_as_http():
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    parser = RequestParser()
    (first,) = parser.feed(upgrade + GET)
    assert isinstance(first, Request) and first.upgrade
    (second,) = parser.resume()
    assert isinstance(second, Request) and second.path == b"/a"
    assert parser.feed(GET)[0].path == b"/a"  # type: ignore[union-attr]


def test_response_head():
    head = response_head(
        200, [("Content-Length", "5")], date=b"Sun, 06 Nov 1994 08:49:37 GMT", keep_alive=False
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\nServer: enlace\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\n"
    )
    assert response_head(404, [], date=b"d", keep_alive=True).startswith(b"HTTP/1.1 404 Not Found")
