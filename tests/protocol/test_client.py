"""Tests for the client side of the message protocol in :mod:`enlace.protocol.client`.

:class:`ClientConnection` numbers its requests from 1 and frames them as
compact JSON; what arrives is sorted into replies (matched by id), events and
plain text, in order, however the bytes are split; bytes that break the framing
raise, even after a valid frame in the same chunk, and a reply's malformed
``error`` is tolerated. It speaks to a
:class:`~enlace.protocol.envelope.ServerConnection` here too, so the two halves
are checked to agree on the wire format.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enlace.exceptions import FrameTooLarge, LocalProtocolError
from enlace.limits import MAX_FRAME
from enlace.protocol.client import ClientConnection, Event, EventQueue, Reply, Text, as_event
from enlace.protocol.envelope import BadRequest, JsonRequest, ServerConnection

# ----------------------------------------------------------------------------------------- helpers


def header(size: int) -> bytes:
    return struct.pack(">I", size)


def frame(payload: bytes) -> bytes:
    return header(len(payload)) + payload


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ----------------------------------------------------------------------------------------- request


def test_request_ids_count_from_one() -> None:
    client = ClientConnection()
    assert client.request("ping", [])[0] == 1
    assert client.request("ping", [])[0] == 2
    assert client.request("say", [], line="x")[0] == 3
    assert ClientConnection().request("ping", [])[0] == 1  # per connection


def test_request_with_args_exact_bytes() -> None:
    client = ClientConnection()
    request_id, data = client.request("upper", ["hola", 1, None, True])
    assert request_id == 1
    body = b'{"id":1,"cmd":"upper","args":["hola",1,null,true]}'
    assert data == frame(body)


def test_request_without_args() -> None:
    _, data = ClientConnection().request("ping", [])
    assert data == frame(b'{"id":1,"cmd":"ping","args":[]}')


def test_request_with_line_exact_bytes() -> None:
    client = ClientConnection()
    client.request("ping", [])
    request_id, data = client.request("say", [], line="hola  \u00e9")
    assert request_id == 2
    assert data == frame(b'{"id":2,"cmd":"say","line":"hola  \xc3\xa9"}')
    _, empty = client.request("say", [], line="")
    assert empty == frame(b'{"id":3,"cmd":"say","line":""}')


def test_request_is_what_the_server_reads() -> None:
    client, server = ClientConnection(), ServerConnection()
    _, first = client.request("Upper", ["hola"])
    _, second = client.request("say", [], line="a b")
    assert server.receive(first + second) == [
        JsonRequest(1, "upper", ["hola"]),
        JsonRequest(2, "say", [], "a b"),
    ]


def test_payload_is_framed() -> None:
    client = ClientConnection()
    assert client.payload(b"/ping") == b"\x00\x00\x00\x05/ping"
    assert client.payload(b"") == b"\x00\x00\x00\x00"


def test_request_over_the_frame_limit_is_refused() -> None:
    client = ClientConnection(max_frame=30)
    with pytest.raises(LocalProtocolError):
        client.request("x", ["y" * 30])
    with pytest.raises(LocalProtocolError):
        client.payload(b"z" * 31)
    assert client.payload(b"z" * 30) == frame(b"z" * 30)
    big = b"z" * (MAX_FRAME + 1)
    assert ClientConnection(max_frame=None).payload(big) == frame(big)


# ----------------------------------------------------------------------------------------- receive


def test_reply_ok() -> None:
    client = ClientConnection()
    assert client.receive(frame(b'{"id":1,"ok":true,"result":"HOLA"}')) == [Reply(1, True, "HOLA")]
    assert client.receive(frame(b'{"id":"a","ok":true,"result":{"n":[1]}}')) == [
        Reply("a", True, {"n": [1]})
    ]
    assert client.receive(frame(b'{"ok":true}')) == [Reply(None, True, None, "", "")]


def test_reply_error() -> None:
    client = ClientConnection()
    body = b'{"id":4,"ok":false,"error":{"code":"unknown_command","message":"no /foo"}}'
    (reply,) = client.receive(frame(body))
    assert reply == Reply(4, False, None, "unknown_command", "no /foo")
    assert isinstance(reply, Reply)
    assert (reply.code, reply.message) == ("unknown_command", "no /foo")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"ok":false}', Reply(None, False)),
        (b'{"ok":false,"error":null}', Reply(None, False)),
        (b'{"ok":false,"error":{}}', Reply(None, False)),
        (b'{"ok":false,"error":{"code":7}}', Reply(None, False, None, "7", "")),
        (b'{"ok":0,"result":1}', Reply(None, False, 1)),
        (b'{"ok":1,"result":1}', Reply(None, True, 1)),
        (b'{"ok":true,"event":"x"}', Reply(None, True)),  # "ok" makes it a reply
    ],
)
def test_reply_odd_but_tolerated(body: bytes, expected: Reply) -> None:
    assert ClientConnection().receive(frame(body)) == [expected]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (b'"boom"', "boom"),
        (b'""', ""),
        (b'"caf\xc3\xa9"', "caf\u00e9"),
        (b"[1]", "[1]"),
        (b"[]", "[]"),
        (b'["a",2]', "['a', 2]"),
        (b"5", "5"),
        (b"0", "0"),
        (b"true", "True"),
        (b"false", "False"),
    ],
)
def test_reply_with_a_non_object_error_does_not_raise(error: bytes, message: str) -> None:
    # Bytes from the peer may only ever raise a RemoteProtocolError; the runtimes
    # catch nothing else, so an AttributeError would kill the client's reader.
    # Instead such an error is the generic code "error" with str(value) as message.
    body = b'{"id":1,"ok":false,"error":' + error + b"}"
    assert ClientConnection().receive(frame(body)) == [Reply(1, False, None, "error", message)]


def test_reply_with_a_non_object_error_keeps_its_result() -> None:
    body = b'{"id":"k","ok":true,"result":[1],"error":"odd"}'
    assert ClientConnection().receive(frame(body)) == [Reply("k", True, [1], "error", "odd")]


def test_event() -> None:
    data = {"event": "message", "room": "general", "from": "ana", "text": "hola"}
    assert ClientConnection().receive(frame(orjson.dumps(data))) == [Event(data)]
    assert ClientConnection().receive(frame(b'{"event":null}')) == [Event({"event": None})]


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"HOLA", "HOLA"),
        (b"ERR busy: try later", "ERR busy: try later"),
        (b"[general] ana: hola", "[general] ana: hola"),
        (b"{not json", "{not json"),
        (b'{"id":1}', '{"id":1}'),  # JSON, but neither a reply nor an event
        (b"{}", "{}"),
        (b"[1]", "[1]"),
        (b"1", "1"),
        (b'"ok"', '"ok"'),
        (b' {"ok":true}', ' {"ok":true}'),
        (b"caf\xc3\xa9", "caf\u00e9"),
        (b"bad \xff", "bad \ufffd"),
        (b'{"ok":"\xff"}', '{"ok":"\ufffd"}'),
    ],
)
def test_text(payload: bytes, text: str) -> None:
    assert ClientConnection().receive(frame(payload)) == [Text(text)]


def test_keep_alive_gives_nothing() -> None:
    assert ClientConnection().receive(frame(b"") * 3) == []


STREAM = [
    b'{"event":"joined","text":"ana"}',
    b'{"id":1,"ok":true,"result":"pong"}',
    b"",
    b"* beto joined",
    b'{"id":2,"ok":false,"error":{"code":"bad_arguments","message":"usage: /add A B"}}',
    b'{"id":3,"ok":true,"result":[1,2]}',
    b'{"event":"message","room":"r","from":"b","text":"x"}',
]
SORTED = [
    Event({"event": "joined", "text": "ana"}),
    Reply(1, True, "pong"),
    Text("* beto joined"),
    Reply(2, False, None, "bad_arguments", "usage: /add A B"),
    Reply(3, True, [1, 2]),
    Event({"event": "message", "room": "r", "from": "b", "text": "x"}),
]


@pytest.mark.parametrize("split", ["whole", "bytewise", "halves", "odd"])
def test_receive_in_order_across_splits(split: str) -> None:
    data = b"".join(frame(p) for p in STREAM)
    middle = len(data) // 2
    chunks = {
        "whole": [data],
        "bytewise": bytewise(data),
        "halves": [data[:middle], b"", data[middle:]],
        "odd": [data[i : i + 7] for i in range(0, len(data), 7)],
    }[split]
    client = ClientConnection()
    items: list[Reply | Event | Text] = []
    for chunk in chunks:
        items.extend(client.receive(chunk))
    assert items == SORTED


def test_partial_frame_waits() -> None:
    client = ClientConnection()
    data = frame(b'{"id":1,"ok":true,"result":1}')
    assert client.receive(data[:3]) == []
    assert client.receive(data[3:-1]) == []
    assert client.receive(data[-1:]) == [Reply(1, True, 1)]


def test_oversize_frame_from_the_server_raises() -> None:
    client = ClientConnection(max_frame=10)
    assert client.receive(frame(b"0123456789")) == [Text("0123456789")]
    with pytest.raises(FrameTooLarge) as info:
        client.receive(header(11))  # before any payload arrives
    assert (info.value.size, info.value.limit) == (11, 10)
    with pytest.raises(FrameTooLarge) as again:
        client.receive(b"")  # and it stays failed
    assert again.value is info.value


@pytest.mark.parametrize("partial", [False, True], ids=["fresh", "after-a-partial-frame"])
def test_oversize_frame_after_a_valid_frame_in_the_same_chunk_raises(partial: bool) -> None:
    # The server broke the protocol: the connection is over, so the chunk raises
    # even though it completed a valid reply first, and nothing of it is traced.
    seen: list[tuple[str, bytes]] = []
    client = ClientConnection(max_frame=40)
    client.trace = lambda direction, payload: seen.append((direction, payload))
    data = frame(b'{"id":1,"ok":true,"result":"pong"}') + header(41) + b"x" * 41
    if partial:
        assert client.receive(data[:6]) == []
        data = data[6:]
    with pytest.raises(FrameTooLarge) as info:
        client.receive(data)
    assert (info.value.size, info.value.limit) == (41, 40)
    assert str(info.value) == "frame of 41 bytes exceeds the 40-byte limit"
    assert seen == []
    for later in (b"", frame(b"x")):
        with pytest.raises(FrameTooLarge) as again:
            client.receive(later)
        assert again.value is info.value


def test_oversize_frame_default_limit() -> None:
    client = ClientConnection()
    assert client.receive(header(MAX_FRAME)) == []
    with pytest.raises(FrameTooLarge):
        ClientConnection().receive(header(MAX_FRAME + 1))


# ------------------------------------------------------------------------------------------- trace


def test_trace_sees_out_and_in() -> None:
    seen: list[tuple[str, bytes]] = []
    client = ClientConnection()
    client.trace = lambda direction, payload: seen.append((direction, payload))
    client.request("ping", [])
    client.request("say", [], line="a")
    client.payload(b"/help")
    client.receive(frame(b'{"id":1,"ok":true,"result":"pong"}') + frame(b"") + frame(b"x"))
    assert seen == [
        ("out", b'{"id":1,"cmd":"ping","args":[]}'),
        ("out", b'{"id":2,"cmd":"say","line":"a"}'),
        ("out", b"/help"),
        ("in", b'{"id":1,"ok":true,"result":"pong"}'),
        ("in", b""),
        ("in", b"x"),
    ]


def test_no_trace_by_default() -> None:
    client = ClientConnection()
    assert client.trace is None
    client.request("ping", [])
    client.receive(frame(b"x"))


# ------------------------------------------------------------------------ talking to the server


def test_round_trip_with_the_server() -> None:
    client, server = ClientConnection(), ServerConnection()
    _, data = client.request("upper", ["hola"])
    (request,) = server.receive(data)
    out = server.reply(request, "HOLA")
    out += server.error(request, "busy", "later")
    out += server.event({"event": "tick"})
    out += server.reply(server.receive(client.payload(b"/ping"))[0], "pong")
    assert client.receive(out) == [
        Reply(1, True, "HOLA"),
        Reply(1, False, None, "busy", "later"),
        Event({"event": "tick"}),
        Text("pong"),
    ]


def test_error_too_long_for_the_frame_limit_reaches_the_client_with_its_code() -> None:
    # Both ends share a small limit; the server's error must not break the client.
    client, server = ClientConnection(max_frame=100), ServerConnection(max_frame=100)
    request_id, data = client.request("nope", [])
    (request,) = server.receive(data)
    out = server.error(request, "unknown_command", "unknown command /" + "nope" * 50)
    assert len(out) - 4 <= 100
    assert client.receive(out) == [
        Reply(request_id, False, None, "unknown_command", "(message too long to send)")
    ]


def test_fatal_error_after_a_request_reaches_the_client() -> None:
    # The request before the server's fatal error is answered, then the error.
    client, server = ClientConnection(), ServerConnection(max_frame=200)
    request_id, data = client.request("upper", ["hola"])
    request, fatal = server.receive(data + header(201))
    assert request == JsonRequest(request_id, "upper", ["hola"])
    assert isinstance(request, JsonRequest)
    assert isinstance(fatal, BadRequest)
    assert fatal.fatal
    out = server.reply(request, "HOLA") + server.error(fatal, fatal.code, fatal.message)
    assert client.receive(out) == [
        Reply(request_id, True, "HOLA"),
        Reply(
            None, False, None, "frame_too_large", "frame of 201 bytes exceeds the 200-byte limit"
        ),
    ]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(
    cmd=st.text(alphabet="abcxyz_", min_size=1, max_size=8),
    args=st.lists(json_values, max_size=4),
    result=json_values,
)
def test_property_round_trip(cmd: str, args: list[Any], result: Any) -> None:
    client, server = ClientConnection(), ServerConnection(max_json_depth=None)
    request_id, data = client.request(cmd, args)
    (request,) = server.receive(data)
    assert request == JsonRequest(request_id, cmd, args)
    assert client.receive(server.reply(request, result)) == [Reply(request_id, True, result)]


def test_event_queue_is_bounded_and_counts_what_it_drops() -> None:
    queue = EventQueue(2)
    assert [queue.put({"n": n}) for n in range(4)] == [False, False, True, False]
    assert queue.dropped == 2
    assert [queue.get(), queue.get(), queue.get()] == [{"n": 2}, {"n": 3}, None]


def test_as_event_names_what_is_not_an_awaited_reply() -> None:
    assert as_event(Event({"event": "x"})) == {"event": "x"}
    assert as_event(Text("ERR busy: full")) == {"event": "text", "text": "ERR busy: full"}
    assert as_event(Reply(None, False, code="frame_too_large", message="m")) == {
        "event": "error",
        "code": "frame_too_large",
        "text": "m",
    }
