"""Tests for the message server's payloads in :mod:`enlace.protocol.envelope`.

:func:`parse_payload` sorts one payload into a text command, a JSON request,
chat text, nothing (a keep-alive) or a :class:`BadRequest`, and every error
code it can give is provoked here. :class:`ServerConnection` is fed frames and
lines whole and byte by byte, must answer in the kind (frames or lines) decided
by the first byte and in the form (text or JSON) of the latest request, and
turns oversize input into a fatal ``BadRequest`` as early as possible, after
the requests that the same bytes completed before it. Error replies are bounded
by the frame limit. Property tests with hypothesis check that arbitrary bytes
never make either raise, and give the same requests however they are cut.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enlace.limits import MAX_FRAME, MAX_JSON, MAX_JSON_DEPTH, MAX_LINE
from enlace.protocol.envelope import (
    MAX_ID,
    BadRequest,
    ChatText,
    JsonRequest,
    Request,
    ServerConnection,
    TextCommand,
    dumps,
    loads,
    parse_payload,
    render_event,
    render_result,
)
from enlace.services.message import MessageService

# ----------------------------------------------------------------------------------------- helpers


def header(size: int) -> bytes:
    """A raw 4-byte big-endian length prefix."""
    return struct.pack(">I", size)


def frame(payload: bytes) -> bytes:
    return header(len(payload)) + payload


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(min(max(c, 0), len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed(conn: ServerConnection, chunks: Iterable[bytes]) -> list[Request | BadRequest]:
    items: list[Request | BadRequest] = []
    for chunk in chunks:
        items.extend(conn.receive(chunk))
    return items


def parsed(payloads: Iterable[bytes]) -> list[Request | BadRequest]:
    """What parse_payload makes of each payload, keep-alives left out."""
    return [item for item in map(parse_payload, payloads) if item is not None]


def nested(depth: int) -> bytes:
    """A JSON request whose deepest value sits ``depth`` levels down (the object is level 1)."""
    inner = depth - 1
    return b'{"cmd":"x","args":' + b"[" * inner + b"]" * inner + b"}"


def json_body(data: bytes) -> Any:
    """The JSON of one encoded frame or line, checked to be exactly one."""
    if data.endswith(b"\n"):
        assert data.count(b"\n") == 1
        return orjson.loads(data[:-1])
    assert data[:4] == header(len(data) - 4)
    return orjson.loads(data[4:])


# ---------------------------------------------------------------------------- parse_payload: text


def test_empty_payload_is_a_keep_alive() -> None:
    assert parse_payload(b"") is None


@pytest.mark.parametrize(
    ("payload", "name", "rest"),
    [
        (b"/ping", "ping", ""),
        (b"/PING", "ping", ""),
        (b"/Upper hola", "upper", "hola"),
        (b"/say   hola  mundo  ", "say", "hola  mundo"),
        (b"/echo \t x \t", "echo", "x"),
        (b"/caf\xc3\xa9 \xc3\xb1", "caf\u00e9", "\u00f1"),
        (b"/x/y z", "x/y", "z"),
    ],
)
def test_text_command(payload: bytes, name: str, rest: str) -> None:
    assert parse_payload(payload) == TextCommand(name, rest)
    assert parse_payload(payload).form == "text"  # type: ignore[union-attr]


@pytest.mark.parametrize("payload", [b"/", b"/ ping", b"/  ", b"/\tping x"])
def test_text_command_needs_a_name_right_after_the_slash(payload: bytes) -> None:
    result = parse_payload(payload)
    assert isinstance(result, BadRequest)
    assert result.code == "bad_request"
    assert result.form == "text"
    assert not result.fatal
    assert "/help" in result.message


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"//x", "/x"),
        (b"//", "/"),
        (b"///ping", "//ping"),
        (b"hola", "hola"),
        (b" /ping", " /ping"),
        (b" {}", " {}"),
        (b"[general] hola", "[general] hola"),
        (b"[1,]", "[1,]"),
        (b"caf\xc3\xa9", "caf\u00e9"),
        (b"\x00\x01", "\x00\x01"),
    ],
)
def test_chat_text(payload: bytes, text: str) -> None:
    assert parse_payload(payload) == ChatText(text)


@pytest.mark.parametrize(
    ("payload", "position"), [(b"\xff", 0), (b"hola \xff", 5), (b"/ping \xc3", 6), (b"//\x80", 2)]
)
def test_invalid_utf8_text(payload: bytes, position: int) -> None:
    assert parse_payload(payload) == BadRequest(
        "invalid_utf8", f"payload is not valid UTF-8 (byte {position})", "text"
    )


# ---------------------------------------------------------------------------- parse_payload: JSON


def test_json_request_fields() -> None:
    result = parse_payload(b'{"id": 7, "cmd": "upper", "args": ["hola", 1, null, [true]]}')
    assert result == JsonRequest(7, "upper", ["hola", 1, None, [True]])
    assert isinstance(result, JsonRequest)
    assert result.form == "json"
    assert result.line is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"cmd":"ping"}', JsonRequest(None, "ping", [])),
        (b'{"id":null,"cmd":"ping"}', JsonRequest(None, "ping", [])),
        (b'{"id":"a-1","cmd":"UPPER"}', JsonRequest("a-1", "upper", [])),
        (b'{"id":"","cmd":"/Help"}', JsonRequest("", "help", [])),
        (b'{"id":0,"cmd":"x","args":[]}', JsonRequest(0, "x", [])),
        (b'{"id":-3,"cmd":"x"}', JsonRequest(-3, "x", [])),
        (b'{"id":1,"cmd":"say","line":"hola  mundo"}', JsonRequest(1, "say", [], "hola  mundo")),
        (b'{"cmd":"say","line":"a","args":[]}', JsonRequest(None, "say", [], "a")),
        (b'{"cmd":"say","line":""}', JsonRequest(None, "say", [], "")),
        (b'{"cmd":"x","line":null,"args":[1]}', JsonRequest(None, "x", [1])),
        (b'{"cmd":"x","unknown":{"y":1}}', JsonRequest(None, "x", [])),
        (b'{"cmd":"a","cmd":"b"}', JsonRequest(None, "b", [])),
        (b'{"cmd":"x"} \n\t', JsonRequest(None, "x", [])),
    ],
)
def test_json_requests(payload: bytes, expected: JsonRequest) -> None:
    assert parse_payload(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b'{"cmd":"x","args":[NaN]}',
        b'{"cmd":"x","args":[Infinity]}',
        b'{"cmd":"x","args":[-Infinity]}',
        b'{"cmd":"x","args":[1,]}',
        b'{"cmd":"x",}',
        b'{"cmd":"x"',
        b"{cmd: 'x'}",
        b'{"cmd":"x"} {}',
        b'{"cmd":"x"}\x00',
        b'{"cmd":"x" /* no */}',
        b'{"cmd":"\\ud800"}',  # half a surrogate pair: cannot be sent back as UTF-8
        b"{",
    ],
)
def test_invalid_json(payload: bytes) -> None:
    result = parse_payload(payload)
    assert isinstance(result, BadRequest)
    assert result.code == "invalid_json"
    assert result.form == "json"
    assert result.id is None
    assert not result.fatal
    assert result.message.startswith("invalid JSON: ")


@pytest.mark.parametrize("payload", [b'{"cmd":"\xff"}', b'{"cmd":"x","args":["caf\xe9"]}'])
def test_invalid_utf8_json(payload: bytes) -> None:
    result = parse_payload(payload)
    assert isinstance(result, BadRequest)
    assert (result.code, result.form, result.id, result.fatal) == (
        "invalid_utf8",
        "json",
        None,
        False,
    )


def test_json_size_limit() -> None:
    payload = b'{"cmd":"ping","args":["' + b"x" * 20 + b'"]}'
    assert isinstance(parse_payload(payload, max_json=len(payload)), JsonRequest)
    assert parse_payload(payload, max_json=len(payload) - 1) == BadRequest(
        "json_too_large",
        f"JSON of {len(payload)} bytes exceeds the {len(payload) - 1}-byte limit",
        "json",
    )
    assert isinstance(parse_payload(payload, max_json=None), JsonRequest)


def test_json_size_limit_default() -> None:
    payload = b'{"cmd":"x","args":["' + b"x" * (MAX_JSON - 22) + b'"]}'
    assert len(payload) == MAX_JSON + 1
    result = parse_payload(payload)
    assert isinstance(result, BadRequest)
    assert result.code == "json_too_large"
    assert isinstance(parse_payload(payload[:-4] + payload[-3:]), JsonRequest)  # exactly MAX_JSON


def test_json_depth_limit_is_32() -> None:
    assert MAX_JSON_DEPTH == 32
    assert orjson.loads(nested(32))["args"] is not None
    assert isinstance(parse_payload(nested(32)), JsonRequest)
    assert parse_payload(nested(33)) == BadRequest(
        "json_too_deep", "JSON nested deeper than 32 levels", "json"
    )
    assert parse_payload(nested(5000), max_json=None) == BadRequest(
        "json_too_deep", "JSON nested deeper than 32 levels", "json"
    )


def test_json_depth_counts_objects_too() -> None:
    inner = b'{"a":' * 32 + b"1" + b"}" * 32
    assert isinstance(parse_payload(b'{"cmd":"x","o":' + inner + b"}"), BadRequest)
    shallow = b'{"a":' * 31 + b"1" + b"}" * 31
    assert isinstance(parse_payload(b'{"cmd":"x","o":' + shallow + b"}"), JsonRequest)


def test_json_depth_limit_configurable() -> None:
    assert isinstance(parse_payload(nested(3), max_json_depth=3), JsonRequest)
    result = parse_payload(nested(4), max_json_depth=3)
    assert isinstance(result, BadRequest)
    assert result.code == "json_too_deep"
    assert "3 levels" in result.message
    assert isinstance(parse_payload(nested(100), max_json_depth=None), JsonRequest)


def test_brackets_inside_strings_are_not_depth() -> None:
    payload = b'{"cmd":"x","args":["' + b"[{" * 100 + b'"]}'
    assert parse_payload(payload) == JsonRequest(None, "x", ["[{" * 100])


@pytest.mark.parametrize("payload", [b"[1]", b"[]", b'[{"cmd":"x"}]', b'["x"]'])
def test_json_array_is_not_an_object(payload: bytes) -> None:
    result = parse_payload(payload)
    assert isinstance(result, BadRequest)
    assert (result.code, result.form, result.id, result.fatal) == (
        "not_an_object",
        "json",
        None,
        False,
    )


def test_array_that_is_not_valid_json_stays_text() -> None:
    # Too large or not JSON at all: then it is just text that starts with "[".
    assert parse_payload(b"[1]", max_json=2) == ChatText("[1]")
    assert parse_payload(b"[NaN]") == ChatText("[NaN]")
    result = parse_payload(b'["\xff"]')
    assert isinstance(result, BadRequest)
    assert (result.code, result.form) == ("invalid_utf8", "text")


def test_a_too_deep_array_is_still_json_and_not_an_object() -> None:
    for deep in (b"[" * 40 + b"]" * 40, b"[" * 200_000 + b"]" * 200_000):
        result = parse_payload(deep)
        assert isinstance(result, BadRequest)
        assert (result.code, result.form, result.fatal) == ("not_an_object", "json", False)


@pytest.mark.parametrize("levels", [33, 40, 500, 981, 5000, 200_000])
def test_depth_is_the_brackets_nesting_valid_json_or_not(levels: int) -> None:
    # Measured on the bytes, so the answer never depends on how deep a parser got
    # before it failed (the standard library's gives up near 1,000 levels).
    unclosed = parse_payload(b"[" * levels, max_json=None)
    assert isinstance(unclosed, BadRequest)
    assert (unclosed.code, unclosed.form) == ("not_an_object", "json")
    request = parse_payload(b'{"cmd":"x","args":' + b"[" * levels, max_json=None)
    assert isinstance(request, BadRequest)
    assert request.code == "json_too_deep"


def test_invalid_json_within_the_depth_limit_is_judged_as_before() -> None:
    assert parse_payload(b"[" * 32) == ChatText("[" * 32)
    assert parse_payload(b"[1,2") == ChatText("[1,2")
    request = parse_payload(b'{"cmd":"x","args":' + b"[" * 31)
    assert isinstance(request, BadRequest)
    assert request.code == "invalid_json"


def test_brackets_in_strings_with_escapes_are_not_nesting() -> None:
    quoted = b'{"cmd":"x","args":["\\\\\\"' + b"[" * 40 + b'"]}'  # \\ then \" inside
    assert parse_payload(quoted) == JsonRequest(None, "x", ['\\"' + "[" * 40])
    after = b'{"cmd":"x","a":"\\\\"' + b"[" * 40  # the string ends: 40 levels follow
    result = parse_payload(after)
    assert isinstance(result, BadRequest)
    assert result.code == "json_too_deep"
    unterminated = parse_payload(b'{"cmd":"x","a":"' + b"[" * 40)  # a string to the end
    assert isinstance(unterminated, BadRequest)
    assert unterminated.code == "invalid_json"
    lone = parse_payload(b'{"a":"' + b"[" * 40 + b"\\")  # a lone \ at the end, in the string
    assert isinstance(lone, BadRequest)
    assert lone.code == "invalid_json"


@pytest.mark.parametrize(
    ("payload", "request_id"),
    [
        (b'{"id":1}', 1),
        (b'{"id":"k","cmd":""}', "k"),
        (b'{"id":2,"cmd":null}', 2),
        (b'{"id":3,"cmd":5}', 3),
        (b'{"id":4,"cmd":["x"]}', 4),
        (b'{"cmd":true}', None),
    ],
)
def test_cmd_must_be_a_non_empty_string(payload: bytes, request_id: object) -> None:
    assert parse_payload(payload) == BadRequest(
        "bad_request", '"cmd" must be a non-empty string', "json", request_id
    )


@pytest.mark.parametrize("args", [b"null", b'"a b"', b"{}", b"1", b"true"])
def test_args_must_be_a_list(args: bytes) -> None:
    assert parse_payload(b'{"id":9,"cmd":"x","args":' + args + b"}") == BadRequest(
        "bad_request", '"args" must be an array', "json", 9
    )


@pytest.mark.parametrize("request_id", [b"true", b"false", b"1.5", b"1.0", b"[1]", b'{"a":1}'])
def test_id_of_a_bad_type(request_id: bytes) -> None:
    # A bad id cannot be echoed, so the error has none.
    assert parse_payload(b'{"id":' + request_id + b',"cmd":"x"}') == BadRequest(
        "bad_request", '"id" must be a string or an integer', "json", None
    )


@pytest.mark.parametrize(
    "body",
    [b'"line":"a","args":["b"]', b'"line":5', b'"line":["a"]', b'"line":true', b'"line":{}'],
)
def test_line_must_be_a_string_without_args(body: bytes) -> None:
    assert parse_payload(b'{"id":"r","cmd":"say",' + body + b"}") == BadRequest(
        "bad_request", '"line" must be a string, and not given with "args"', "json", "r"
    )


@pytest.mark.parametrize(
    ("request_id", "echoed"),
    [
        (b"18446744073709551615", 2**64 - 1),
        (b"-9223372036854775808", -(2**63)),
        (b"-0", 0),
        (b'"7.0"', "7.0"),
    ],
)
def test_id_range(request_id: bytes, echoed: int | str) -> None:
    result = parse_payload(b'{"id":' + request_id + b',"cmd":"x"}')
    assert result == JsonRequest(echoed, "x", [])


@pytest.mark.parametrize("request_id", [b"18446744073709551616", b"-9223372036854775809", b"1e3"])
def test_id_out_of_range_is_not_an_integer(request_id: bytes) -> None:
    result = parse_payload(b'{"id":' + request_id + b',"cmd":"x"}')
    assert isinstance(result, BadRequest)
    assert (result.code, result.id) == ("bad_request", None)


def test_max_id_is_256() -> None:
    assert MAX_ID == 256


@pytest.mark.parametrize("char", ["i", "\u00e9", "\U0001f600", '"'])
def test_string_id_of_max_id_characters_is_accepted(char: str) -> None:
    # Characters, not bytes: 256 emoji are 1024 bytes of UTF-8 and still accepted.
    request_id = char * MAX_ID
    payload = dumps({"id": request_id, "cmd": "x"})
    assert parse_payload(payload) == JsonRequest(request_id, "x", [])


@pytest.mark.parametrize("char", ["i", "\u00e9", "\U0001f600", '"'])
def test_string_id_longer_than_max_id_is_refused(char: str) -> None:
    payload = dumps({"id": char * (MAX_ID + 1), "cmd": "x"})
    # Too long to echo, so the error has no id.
    assert parse_payload(payload) == BadRequest(
        "bad_request", '"id" is longer than 256 characters', "json", None
    )


def test_integer_ids_are_not_bounded_by_max_id() -> None:
    assert parse_payload(b'{"id":10000000000000000000,"cmd":"x"}') == JsonRequest(10**19, "x", [])


@pytest.mark.parametrize(
    ("cmd", "name"),
    [(b'"/"', ""), (b'"//UP"', "up"), (b'"/Upper"', "upper"), (b'"\\u00dcBER"', "\u00fcber")],
)
def test_cmd_is_lower_cased_then_slashes_removed(cmd: bytes, name: str) -> None:
    assert parse_payload(b'{"cmd":' + cmd + b"}") == JsonRequest(None, name, [])


@pytest.mark.parametrize(
    ("payload", "message", "request_id"),
    [
        (b'{"id":true,"cmd":"","args":5}', '"id" must be a string or an integer', None),
        (b'{"id":1,"cmd":"","args":5}', '"cmd" must be a non-empty string', 1),
        (b'{"id":2,"cmd":"x","args":5,"line":5}', '"args" must be an array', 2),
        (
            b'{"id":"' + b"i" * (MAX_ID + 1) + b'","cmd":"","args":5}',
            '"id" is longer than 256 characters',
            None,
        ),
    ],
)
def test_checks_come_in_the_documented_order(
    payload: bytes, message: str, request_id: int | None
) -> None:
    assert parse_payload(payload) == BadRequest("bad_request", message, "json", request_id)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            b"/ping\n",
            BadRequest("bad_request", "a command needs a name right after '/' (try /help)"),
        ),
        (b"/upper\thola", TextCommand("upper\thola", "")),
        (b"/\xc3\x9cBER x", TextCommand("\u00fcber", "x")),
        (b"  hola ", ChatText("  hola ")),
    ],
)
def test_documented_edge_cases(payload: bytes, expected: object) -> None:
    assert parse_payload(payload) == expected


# -------------------------------------------------------------------------------- loads and dumps


def test_loads_is_strict() -> None:
    for text in ("NaN", "[Infinity]", "[1,]", "{'a': 1}", "", "1 2"):
        with pytest.raises(ValueError):
            loads(text)


def test_loads_accepts_str_and_bytes() -> None:
    assert loads('{"a": [1, "\u00e9"]}') == {"a": [1, "\u00e9"]}
    assert loads(b'{"a": [1, "\xc3\xa9"]}') == {"a": [1, "\u00e9"]}


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ('"[[[["', 0),
        ("[]", 1),
        ("{}", 1),
        ('["[[["]', 1),
        ("[[1], 2]", 2),
        ('{"a": {"b": {}}}', 3),
        ('[{"a": [1]}, []]', 3),
        ('{"a": [], "b": [[[]]]}', 4),
    ],
)
def test_loads_depth(text: str, depth: int) -> None:
    assert loads(text, max_depth=depth) == orjson.loads(text)
    assert loads(text, max_depth=None) == orjson.loads(text)
    if depth > 0:
        with pytest.raises(ValueError, match=f"JSON nested deeper than {depth - 1} levels"):
            loads(text, max_depth=depth - 1)
        with pytest.raises(ValueError):
            loads(text.encode(), max_depth=depth - 1)


def test_loads_default_depth() -> None:
    assert loads("[" * 32 + "]" * 32) is not None
    with pytest.raises(ValueError, match="deeper than 32 levels"):
        loads("[" * 33 + "]" * 33)
    assert loads("[" * 1000 + "]" * 1000, max_depth=None) is not None


def test_dumps_is_compact_utf8() -> None:
    assert dumps({"a": [1, "\u00e9"], "b": None}) == b'{"a":[1,"\xc3\xa9"],"b":null}'


# ------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("result", "text"),
    [
        ("HOLA", "HOLA"),
        ("", ""),
        ("a\nb", "a\nb"),
        (None, "ok"),
        (3, "3"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        ([1, "a"], '[1,"a"]'),
        ({"n": 1, "s": "\u00e9"}, '{"n":1,"s":"\u00e9"}'),
    ],
)
def test_render_result(result: object, text: str) -> None:
    assert render_result(result) == text


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (
            {"event": "message", "room": "general", "from": "ana", "text": "hola", "ts": 1.0},
            "[general] ana: hola",
        ),
        ({"event": "message", "room": "general"}, "[general] ?: "),
        (
            {"event": "private", "from": "ana", "to": "beto", "text": "hi"},
            "[private] ana -> beto: hi",
        ),
        ({"event": "private"}, "[private] ? -> ?: "),
        ({"event": "message", "text": "no room"}, "* no room"),
        ({"event": "joined", "text": "beto joined general"}, "* beto joined general"),
        ({"event": "tick", "n": 1}, '* {"event":"tick","n":1}'),
        ({}, "* {}"),
    ],
)
def test_render_event(event: dict[str, Any], text: str) -> None:
    assert render_event(event) == text


# ------------------------------------------------------------------------ ServerConnection: input


def test_nothing_happens_before_the_first_byte() -> None:
    conn = ServerConnection()
    assert conn.kind == "unknown"
    assert conn.form == "text"
    assert conn.receive(b"") == []
    assert conn.kind == "unknown"
    assert conn.eof() == []


@pytest.mark.parametrize(
    ("first", "kind"), [(b"\x00", "framed"), (b"/", "lines"), (b"\n", "lines")]
)
def test_first_byte_decides_the_kind(first: bytes, kind: str) -> None:
    conn = ServerConnection()
    assert conn.receive(first) == []
    assert conn.kind == kind


@pytest.mark.parametrize("first", [b"\x01", b"\xff", b"{", b" ", b"\r"])
def test_anything_but_nul_means_lines(first: bytes) -> None:
    conn = ServerConnection()
    conn.receive(first)
    assert conn.kind == "lines"


def test_kind_is_kept_after_the_first_byte() -> None:
    conn = ServerConnection()
    conn.receive(b"hola\n")
    assert conn.receive(b"\x00\x00\x00\x02/x\n") == [ChatText("\x00\x00\x00\x02/x")]
    assert conn.kind == "lines"


PAYLOADS = [
    b"/ping",
    b"",
    b'{"id":1,"cmd":"upper","args":["hola"]}',
    b"hola a todos",
    b"//x",
    b"\xff",
    b"/Say  a  b ",
    b'{"id":"z","cmd":"say","line":"a b"}',
    b"[1]",
    b"{oops",
]
EXPECTED: list[Request | BadRequest] = [
    item for item in (parse_payload(p) for p in PAYLOADS) if item is not None
]


@pytest.mark.parametrize("split", ["whole", "bytewise", "pairs"])
def test_frames_whole_or_in_pieces(split: str) -> None:
    stream = b"".join(frame(p) for p in PAYLOADS)
    chunks = {"whole": [stream], "bytewise": bytewise(stream), "pairs": split_at(stream, [3, 9])}
    conn = ServerConnection()
    assert feed(conn, chunks[split]) == EXPECTED
    assert conn.kind == "framed"
    assert conn.eof() == []


@pytest.mark.parametrize("split", ["whole", "bytewise", "pairs"])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_lines_whole_or_in_pieces(split: str, ending: bytes) -> None:
    stream = b"".join(p + ending for p in PAYLOADS)
    chunks = {"whole": [stream], "bytewise": bytewise(stream), "pairs": split_at(stream, [3, 9])}
    conn = ServerConnection()
    assert feed(conn, chunks[split]) == EXPECTED
    assert conn.kind == "lines"
    assert conn.eof() == []


def test_items_come_out_as_soon_as_complete() -> None:
    conn = ServerConnection()
    data = frame(b"/a") + frame(b"/b")
    assert conn.receive(data[:5]) == []
    assert conn.receive(data[5:7]) == [TextCommand("a", "")]
    assert conn.receive(data[7:]) == [TextCommand("b", "")]


def test_form_follows_the_latest_request() -> None:
    conn = ServerConnection()
    assert conn.form == "text"
    conn.receive(b'{"cmd":"x"}\n')
    assert conn.form == "json"
    conn.receive(b"\n")  # a keep-alive is not a request
    assert conn.form == "json"
    conn.receive(b"/ping\n")
    assert conn.form == "text"
    conn.receive(b"{bad\n")  # a bad JSON request still says "JSON"
    assert conn.form == "json"
    conn.receive(b"hola\n")
    assert conn.form == "text"
    conn.receive(b"[1]\n")
    assert conn.form == "json"
    conn.receive(b"\xff\n")
    assert conn.form == "text"


def test_form_follows_the_last_request_of_a_batch() -> None:
    conn = ServerConnection()
    conn.receive(frame(b"/a") + frame(b'{"cmd":"b"}'))
    assert conn.form == "json"
    conn.receive(frame(b'{"cmd":"b"}') + frame(b"hola") + frame(b""))
    assert conn.form == "text"


def test_limits_are_passed_on() -> None:
    conn = ServerConnection(max_json=12, max_json_depth=2)
    items = conn.receive(b'{"cmd":"abcdefgh"}\n{"cmd":"x"}\n[[[1]]]\n{"a":[[1]]}\n')
    assert [getattr(i, "code", None) for i in items] == [
        "json_too_large",
        None,
        "not_an_object",
        "json_too_deep",
    ]
    assert items[1] == JsonRequest(None, "x", [])


# ------------------------------------------------------------------------ ServerConnection: limits


def test_oversize_frame_header_is_fatal_before_any_payload() -> None:
    conn = ServerConnection()
    assert conn.receive(header(MAX_FRAME)) == []  # at the limit: waits for the payload
    conn = ServerConnection()
    assert conn.receive(header(MAX_FRAME + 1)) == [
        BadRequest(
            "frame_too_large",
            f"frame of {MAX_FRAME + 1} bytes exceeds the {MAX_FRAME}-byte limit",
            "text",
            fatal=True,
        )
    ]


def test_oversize_frame_header_byte_by_byte() -> None:
    conn = ServerConnection(max_frame=10)
    out = [conn.receive(b) for b in bytewise(header(11))]
    assert out[:3] == [[], [], []]
    assert len(out[3]) == 1
    assert out[3][0].code == "frame_too_large"  # type: ignore[union-attr]
    assert out[3][0].fatal  # type: ignore[union-attr]


@pytest.mark.parametrize("same_chunk", [False, True], ids=["earlier-chunk", "same-chunk"])
def test_fatal_error_takes_the_form_of_the_latest_request(same_chunk: bool) -> None:
    # A limit large enough for the error reply itself (see test_error_reply_limit_*).
    conn = ServerConnection(max_frame=200)
    request = frame(b'{"id":1,"cmd":"x"}')
    if same_chunk:
        items = conn.receive(request + header(201))
    else:
        items = [*conn.receive(request), *conn.receive(header(201))]
    message = "frame of 201 bytes exceeds the 200-byte limit"
    assert items == [
        JsonRequest(1, "x", []),
        BadRequest("frame_too_large", message, "json", None, fatal=True),
    ]
    item = items[1]
    assert isinstance(item, BadRequest)
    assert json_body(conn.error(item, item.code, item.message)) == {
        "ok": False,
        "error": {"code": "frame_too_large", "message": message},
    }


def test_fatal_error_after_a_batch_takes_the_form_of_its_last_request() -> None:
    conn = ServerConnection(max_line=12)
    assert conn.receive(b'{"cmd":"a"}\n') == [JsonRequest(None, "a", [])]
    form_before = conn.form
    assert form_before == "json"
    items = conn.receive(b'{"cmd":"b"}\n/c\n\n' + b"x" * 13)
    assert items == [
        JsonRequest(None, "b", []),
        TextCommand("c", ""),
        BadRequest(
            "line_too_long", "line of more than 12 bytes exceeds the 12-byte limit", fatal=True
        ),
    ]
    assert conn.form == "text"
    assert conn.error(items[-1], "line_too_long", "m") == b"ERR line_too_long: m\n"


def test_frame_at_the_limit_passes() -> None:
    conn = ServerConnection(max_frame=10)
    assert conn.receive(frame(b"0123456789")) == [ChatText("0123456789")]


def test_overlong_line_is_fatal_before_its_end() -> None:
    conn = ServerConnection()
    assert conn.receive(b"x" * MAX_LINE) == []
    assert conn.receive(b"\n") == [ChatText("x" * MAX_LINE)]
    (item,) = conn.receive(b"y" * (MAX_LINE + 1))  # no newline needed
    assert isinstance(item, BadRequest)
    assert (item.code, item.form, item.fatal) == ("line_too_long", "text", True)
    assert f"{MAX_LINE}-byte limit" in item.message


def test_overlong_complete_line() -> None:
    conn = ServerConnection(max_line=5)
    assert conn.receive(b"12345\r\n") == [ChatText("12345")]  # the CR is not counted
    assert conn.receive(b"12345\r") == []
    (item,) = conn.receive(b"6\n")
    assert isinstance(item, BadRequest)
    assert (item.code, item.fatal) == ("line_too_long", True)


def test_after_a_fatal_error_the_connection_stays_failed() -> None:
    conn = ServerConnection(max_frame=4)
    (first,) = conn.receive(header(5))
    (again,) = conn.receive(frame(b"/ok"))
    assert isinstance(first, BadRequest)
    assert again == first


def test_no_limits() -> None:
    conn = ServerConnection(max_frame=None)
    assert conn.receive(header(MAX_FRAME * 4)) == []
    conn = ServerConnection(max_line=None)
    assert conn.receive(b"x" * (MAX_LINE * 2) + b"\n") == [ChatText("x" * (MAX_LINE * 2))]


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (
            frame(b"/ping") + header(11),
            BadRequest(
                "frame_too_large", "frame of 11 bytes exceeds the 10-byte limit", fatal=True
            ),
        ),
        (
            b"/ping\n" + b"x" * 11,
            BadRequest(
                "line_too_long",
                "line of more than 10 bytes exceeds the 10-byte limit",
                fatal=True,
            ),
        ),
    ],
    ids=["frame", "line"],
)
def test_requests_before_a_fatal_error_are_not_lost(stream: bytes, error: BadRequest) -> None:
    # Byte by byte, /ping is served before the error; in one read it is too,
    # since every request gets exactly one reply.
    expected = [TextCommand("ping", ""), error]
    assert feed(ServerConnection(max_frame=10, max_line=10), bytewise(stream)) == expected
    conn = ServerConnection(max_frame=10, max_line=10)
    assert conn.receive(stream) == expected
    # The connection stays failed: every later call gives the error again.
    assert conn.receive(frame(b"/ok") + b"/ok\n") == [error]
    if conn.kind == "lines":
        assert conn.eof() == [error]
    else:
        assert conn.eof() == []  # a framed client's close is never answered


def test_every_request_before_a_fatal_error_is_returned_in_order() -> None:
    conn = ServerConnection(max_frame=40)
    payloads = [b"/a", b"", b'{"id":2,"cmd":"b"}', b"hola", b"{bad"]
    items = conn.receive(b"".join(map(frame, payloads)) + header(41) + frame(b"/never"))
    assert items == [
        *parsed(payloads),
        BadRequest(
            "frame_too_large", "frame of 41 bytes exceeds the 40-byte limit", "json", fatal=True
        ),
    ]


def test_trace_sees_the_payloads_before_a_fatal_error() -> None:
    seen: list[tuple[str, bytes]] = []
    conn = ServerConnection(max_line=5)
    conn.trace = lambda direction, payload: seen.append((direction, payload))
    conn.receive(b"/a\r\n\nabcdef\n/b\n")
    assert seen == [("in", b"/a"), ("in", b"")]


# -------------------------------------------------------------------------- ServerConnection: eof


def test_eof_serves_a_final_unterminated_line() -> None:
    conn = ServerConnection()
    assert conn.receive(b"/a\n/b x") == [TextCommand("a", "")]
    assert conn.eof() == [TextCommand("b", "x")]


def test_eof_final_line_keeps_its_cr() -> None:
    conn = ServerConnection()
    conn.receive(b"hola\r")
    assert conn.eof() == [ChatText("hola\r")]


def test_eof_after_a_complete_line_gives_nothing() -> None:
    conn = ServerConnection()
    conn.receive(b"/a\n")
    assert conn.eof() == []


def test_eof_final_line_updates_the_form() -> None:
    conn = ServerConnection()
    conn.receive(b'/a\n{"cmd":"b"}')
    assert conn.form == "text"
    assert conn.eof() == [JsonRequest(None, "b", [])]
    assert conn.form == "json"


def test_eof_inside_a_frame_gives_nothing() -> None:
    conn = ServerConnection()
    assert conn.receive(frame(b"/a") + header(5) + b"/b") == [TextCommand("a", "")]
    assert conn.eof() == []
    conn = ServerConnection()
    conn.receive(b"\x00\x00")
    assert conn.eof() == []


def test_eof_after_an_overlong_line_is_fatal() -> None:
    conn = ServerConnection(max_line=5)
    conn.receive(b"123456")
    (item,) = conn.eof()
    assert isinstance(item, BadRequest)
    assert (item.code, item.fatal) == ("line_too_long", True)


# ----------------------------------------------------------------------- ServerConnection: output


def framed() -> ServerConnection:
    conn = ServerConnection()
    assert conn.receive(frame(b"")) == []
    assert conn.kind == "framed"
    return conn


def lines() -> ServerConnection:
    conn = ServerConnection()
    conn.receive(b"\n")
    assert conn.kind == "lines"
    return conn


def test_encode_per_kind() -> None:
    assert framed().encode(b"hola") == b"\x00\x00\x00\x04hola"
    assert framed().encode(b"") == b"\x00\x00\x00\x00"
    assert lines().encode(b"hola") == b"hola\n"


@pytest.mark.parametrize(
    ("result", "text"),
    [("HOLA", b"HOLA"), (None, b"ok"), ({"a": 1}, b'{"a":1}'), (3, b"3"), ("", b"")],
)
def test_text_reply(result: object, text: bytes) -> None:
    request = TextCommand("x", "")
    assert framed().reply(request, result) == frame(text)
    assert lines().reply(request, result) == text + b"\n"
    assert lines().reply(ChatText("hola"), result) == text + b"\n"


@pytest.mark.parametrize(
    ("request_id", "body"),
    [
        (7, b'{"id":7,"ok":true,"result":"HOLA"}'),
        ("a", b'{"id":"a","ok":true,"result":"HOLA"}'),
        (0, b'{"id":0,"ok":true,"result":"HOLA"}'),
        (None, b'{"ok":true,"result":"HOLA"}'),
    ],
)
def test_json_reply(request_id: str | int | None, body: bytes) -> None:
    request = JsonRequest(request_id, "upper", ["hola"])
    assert framed().reply(request, "HOLA") == frame(body)
    assert lines().reply(request, "HOLA") == body + b"\n"


def test_json_reply_results() -> None:
    request = JsonRequest(1, "x", [])
    assert framed().reply(request, None) == frame(b'{"id":1,"ok":true,"result":null}')
    assert lines().reply(request, {"n": [1, 2]}) == b'{"id":1,"ok":true,"result":{"n":[1,2]}}\n'
    assert lines().reply(request, "a\nb") == b'{"id":1,"ok":true,"result":"a\\nb"}\n'


def test_reply_form_is_the_request_form_not_the_connection_form() -> None:
    conn = lines()
    conn.receive(b'{"cmd":"x"}\n')
    assert conn.form == "json"
    assert conn.reply(TextCommand("x", ""), "r") == b"r\n"
    assert conn.error(TextCommand("x", ""), "c", "m") == b"ERR c: m\n"


def test_text_error() -> None:
    request = TextCommand("foo", "")
    expected = b"ERR unknown_command: unknown command /foo (try /help)"
    message = "unknown command /foo (try /help)"
    assert framed().error(request, "unknown_command", message) == frame(expected)
    assert lines().error(request, "unknown_command", message) == expected + b"\n"
    assert lines().error(BadRequest("bad_request", "m"), "bad_request", "m") == (
        b"ERR bad_request: m\n"
    )


@pytest.mark.parametrize(
    ("answered", "body"),
    [
        (JsonRequest(7, "x", []), b'{"id":7,"ok":false,"error":{"code":"c","message":"m"}}'),
        (JsonRequest("q", "x", []), b'{"id":"q","ok":false,"error":{"code":"c","message":"m"}}'),
        (JsonRequest(None, "x", []), b'{"ok":false,"error":{"code":"c","message":"m"}}'),
        (
            BadRequest("c", "m", "json", 5),
            b'{"id":5,"ok":false,"error":{"code":"c","message":"m"}}',
        ),
        (BadRequest("c", "m", "json"), b'{"ok":false,"error":{"code":"c","message":"m"}}'),
    ],
)
def test_json_error(answered: JsonRequest | BadRequest, body: bytes) -> None:
    assert framed().error(answered, "c", "m") == frame(body)
    assert lines().error(answered, "c", "m") == body + b"\n"


def test_before_any_byte_output_is_framed() -> None:
    # "busy" goes to a connection that has sent nothing: it is a frame, always.
    conn = ServerConnection()
    message = "too many connections (limit 3)"
    assert conn.error(None, "busy", message) == frame(b"ERR busy: " + message.encode())


REPLACEMENT = "(message too long to send)"


def error_payload(answered: Request | BadRequest, code: str, message: str) -> bytes:
    """The error payload documented for ``answered``, built independently of ServerConnection."""
    if answered.form == "text":
        return f"ERR {code}: {message}".encode()
    body: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    request_id = getattr(answered, "id", None)
    if request_id is not None:
        body = {"id": request_id, **body}
    return dumps(body)


def on_the_wire(kind: str, payload: bytes) -> bytes:
    return frame(payload) if kind == "framed" else payload + b"\n"


def connection(kind: str, max_frame: int | None) -> ServerConnection:
    conn = ServerConnection(max_frame=max_frame)
    assert conn.receive(frame(b"") if kind == "framed" else b"\n") == []
    assert conn.kind == kind
    return conn


@pytest.mark.parametrize("kind", ["framed", "lines"])
@pytest.mark.parametrize(
    "answered",
    [
        JsonRequest(7, "x", []),
        JsonRequest("q" * MAX_ID, "x", []),
        JsonRequest(None, "x", []),
        BadRequest("c", "m", "json", 5),
        TextCommand("x", ""),
        ChatText("hola"),
        BadRequest("c", "m"),
    ],
    ids=["int-id", "max-id", "no-id", "bad-json", "text", "chat", "bad-text"],
)
@pytest.mark.parametrize(
    "message", ["m" * 100, "\u00e9" * 60, '"' * 60], ids=["ascii", "utf8", "escaped"]
)
def test_error_message_is_replaced_exactly_when_the_reply_would_exceed_max_frame(
    kind: str, answered: Request | BadRequest, message: str
) -> None:
    # What counts is the encoded payload: UTF-8 bytes, JSON escapes, the id and the code.
    full = error_payload(answered, "some_code", message)
    short = error_payload(answered, "some_code", REPLACEMENT)
    assert len(short) < len(full)
    at_limit = connection(kind, max_frame=len(full))
    assert at_limit.error(answered, "some_code", message) == on_the_wire(kind, full)
    # One byte over: the message is replaced; the code and the id are kept.
    one_less = connection(kind, max_frame=len(full) - 1)
    assert one_less.error(answered, "some_code", message) == on_the_wire(kind, short)
    # Without a limit nothing is replaced, however long.
    unlimited = connection(kind, max_frame=None)
    huge = message * (MAX_FRAME // len(message) + 1)
    assert unlimited.error(answered, "some_code", huge) == on_the_wire(
        kind, error_payload(answered, "some_code", huge)
    )


def test_replacement_keeps_the_code_and_id_in_json() -> None:
    conn = connection("framed", max_frame=100)
    data = conn.error(JsonRequest("abc", "x", []), "not_allowed", "n" * 100)
    assert json_body(data) == {
        "id": "abc",
        "ok": False,
        "error": {"code": "not_allowed", "message": REPLACEMENT},
    }
    assert len(data) - 4 <= 100


def test_replacement_for_the_connection_follows_its_form() -> None:
    conn = connection("lines", max_frame=50)
    assert conn.error(None, "busy", "b" * 50) == f"ERR busy: {REPLACEMENT}\n".encode()
    conn.receive(b'{"cmd":"x"}\n')
    assert conn.error(None, "busy", "b" * 50) == (
        dumps({"ok": False, "error": {"code": "busy", "message": REPLACEMENT}}) + b"\n"
    )


def test_error_replies_obey_the_frame_limit() -> None:
    # The appendix's case: a message that repeats the client's input (a command name as
    # long as a frame allows) and the longest id; at the default limit the reply fits.
    conn = framed()
    request = JsonRequest("i" * MAX_ID, "x" * MAX_FRAME, [])
    message = f"unknown command /{request.cmd} (try /help)"
    data = conn.error(request, "unknown_command", message)
    assert len(data) - 4 <= MAX_FRAME
    assert json_body(data) == {
        "id": "i" * MAX_ID,
        "ok": False,
        "error": {"code": "unknown_command", "message": REPLACEMENT},
    }
    # An error reply that fits is sent whole.
    short = conn.error(request, "unknown_command", "unknown command /nope (try /help)")
    assert json_body(short)["error"]["message"] == "unknown command /nope (try /help)"


def test_error_for_the_connection_follows_its_form() -> None:
    conn = lines()
    assert conn.error(None, "busy", "later") == b"ERR busy: later\n"
    conn.receive(b'{"id":3,"cmd":"x"}\n')
    assert conn.error(None, "busy", "later") == (
        b'{"ok":false,"error":{"code":"busy","message":"later"}}\n'
    )


def test_bad_request_from_the_wire_is_answered_with_its_id() -> None:
    conn = framed()
    (item,) = conn.receive(frame(b'{"id":4,"cmd":""}'))
    assert isinstance(item, BadRequest)
    assert json_body(conn.error(item, item.code, item.message)) == {
        "id": 4,
        "ok": False,
        "error": {"code": "bad_request", "message": '"cmd" must be a non-empty string'},
    }


def test_events_follow_the_form() -> None:
    event = {"event": "message", "room": "general", "from": "ana", "text": "hola"}
    conn = lines()
    assert conn.event(event) == b"[general] ana: hola\n"
    conn.receive(b'{"cmd":"x"}\n')
    assert conn.event(event) == (
        b'{"event":"message","room":"general","from":"ana","text":"hola"}\n'
    )
    conn.receive(b"/x\n")
    assert conn.event({"event": "joined", "text": "beto"}) == b"* beto\n"
    conn = framed()
    assert conn.event({"event": "tick"}) == frame(b'* {"event":"tick"}')
    conn.receive(frame(b'{"cmd":"x"}'))
    assert conn.event({"event": "tick"}) == frame(b'{"event":"tick"}')


def test_reply_too_large() -> None:
    # A limit large enough for the reply_too_large error itself to be sent whole.
    conn = ServerConnection(max_frame=120)
    conn.receive(frame(b""))
    request = JsonRequest(1, "x", [])
    fits = "x" * (120 - len(b'{"id":1,"ok":true,"result":""}'))
    assert conn.reply(request, fits) == frame(dumps({"id": 1, "ok": True, "result": fits}))
    too_long = fits + "x"
    data = conn.reply(request, too_long)
    assert json_body(data) == {
        "id": 1,
        "ok": False,
        "error": {
            "code": "reply_too_large",
            "message": "the reply of 121 bytes exceeds the 120-byte limit",
        },
    }
    assert len(data) - 4 <= 120


def test_reply_too_large_under_a_tiny_limit_keeps_only_the_code() -> None:
    # Under 40 bytes even the error's own message does not fit: it is replaced.
    conn = ServerConnection(max_frame=40)
    conn.receive(frame(b""))
    assert json_body(conn.reply(JsonRequest(1, "x", []), "x" * 40)) == {
        "id": 1,
        "ok": False,
        "error": {"code": "reply_too_large", "message": REPLACEMENT},
    }


def test_reply_too_large_in_text_form() -> None:
    conn = ServerConnection(max_frame=80)
    conn.receive(b"\n")
    assert conn.reply(TextCommand("x", ""), "1" * 80) == b"1" * 80 + b"\n"
    assert conn.reply(TextCommand("x", ""), "1" * 81) == (
        b"ERR reply_too_large: the reply of 81 bytes exceeds the 80-byte limit\n"
    )
    # Counted in bytes, not characters.
    assert conn.reply(TextCommand("x", ""), "\u00e9" * 41) == (
        b"ERR reply_too_large: the reply of 82 bytes exceeds the 80-byte limit\n"
    )


def test_reply_too_large_in_text_form_under_a_tiny_limit() -> None:
    conn = ServerConnection(max_frame=5)
    conn.receive(b"\n")
    assert conn.reply(TextCommand("x", ""), "12345") == b"12345\n"
    assert conn.reply(TextCommand("x", ""), "123456") == (
        f"ERR reply_too_large: {REPLACEMENT}\n".encode()
    )


def test_reply_size_unbounded() -> None:
    conn = ServerConnection(max_frame=None)
    conn.receive(frame(b""))
    big = "x" * (MAX_FRAME + 1)
    assert conn.reply(TextCommand("x", ""), big) == frame(big.encode())


# -------------------------------------------- the unknown-command message, as the service sends it


class RecordingTransport:
    """A transport without I/O for one message-server connection: it records what is written."""

    peer = ("127.0.0.1", 4242)

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        raise AssertionError("not expected here")

    def resume_reading(self) -> None:
        raise AssertionError("not expected here")

    def call_async(
        self,
        work: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        work.close()
        raise AssertionError("not expected here")


def served(data: bytes) -> list[bytes]:
    """What the message service (which builds the message on ServerConnection) answers."""
    transport = RecordingTransport()
    handler = MessageService().handler()
    handler.connection_made(transport)
    handler.data_received(data)
    assert not transport.closed
    return transport.written


def unknown(shown: str) -> str:
    return f"unknown command /{shown} (try /help)"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("nope", "nope"),
        ("a" * 40, "a" * 40),
        ("a" * 41, "a" * 40 + "\u2026"),
        ("B" * 500, "b" * 40 + "\u2026"),  # lower-cased first
        ("\u00f1" * 40, "\u00f1" * 40),  # characters, not bytes
        ("\u00f1" * 41, "\u00f1" * 40 + "\u2026"),
        ("x/" * 30, "x/" * 20 + "\u2026"),
    ],
    ids=["short", "40", "41", "500-upper", "40-utf8", "41-utf8", "slashes"],
)
def test_unknown_command_name_is_abbreviated_past_40_characters(name: str, shown: str) -> None:
    line = f"/{name} with args\n".encode()
    assert served(line) == [f"ERR unknown_command: {unknown(shown)}\n".encode()]
    request = dumps({"id": 3, "cmd": name})
    assert served(frame(request)) == [
        frame(
            dumps(
                {
                    "id": 3,
                    "ok": False,
                    "error": {"code": "unknown_command", "message": unknown(shown)},
                }
            )
        )
    ]


def test_unknown_command_as_long_as_a_frame_allows_gets_a_short_reply() -> None:
    name = "z" * (MAX_FRAME - 1)
    (data,) = served(frame(b"/" + name.encode()))
    message = unknown("z" * 40 + "\u2026")
    assert data == frame(f"ERR unknown_command: {message}".encode())


# -------------------------------------------------------------------------- ServerConnection: trace


def test_trace_sees_every_payload_in_and_out() -> None:
    seen: list[tuple[str, bytes]] = []
    conn = ServerConnection(max_frame=120)
    conn.trace = lambda direction, payload: seen.append((direction, payload))
    items = conn.receive(frame(b"/ping") + frame(b"") + frame(b'{"id":1,"cmd":"x"}'))
    assert seen == [("in", b"/ping"), ("in", b""), ("in", b'{"id":1,"cmd":"x"}')]
    seen.clear()
    conn.reply(items[0], "pong")
    conn.reply(items[1], "y" * 100)  # too large: only the error goes out
    conn.error(None, "c", "m")
    conn.error(None, "c", "m" * 200)  # too large: only the replacement goes out
    conn.event({"event": "e"})
    assert seen == [
        ("out", b"pong"),
        (
            "out",
            dumps(
                {
                    "id": 1,
                    "ok": False,
                    "error": {
                        "code": "reply_too_large",
                        "message": "the reply of 130 bytes exceeds the 120-byte limit",
                    },
                }
            ),
        ),
        ("out", b'{"ok":false,"error":{"code":"c","message":"m"}}'),
        ("out", b'{"ok":false,"error":{"code":"c","message":"(message too long to send)"}}'),
        ("out", b'{"event":"e"}'),
    ]


def test_trace_sees_the_final_line() -> None:
    seen: list[tuple[str, bytes]] = []
    conn = ServerConnection()
    conn.trace = lambda direction, payload: seen.append((direction, payload))
    conn.receive(b"a\r\nb")
    conn.eof()
    assert seen == [("in", b"a"), ("in", b"b")]


# -------------------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=200, deadline=None)

JSONISH = b'{}[]":,/ \\01aenxlu\xc3\xa9\xff\n'
payload_bytes = st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(JSONISH), max_size=60).map(bytes),
    st.builds(
        lambda body: b"{" + body,
        st.lists(st.sampled_from(JSONISH), max_size=40).map(bytes),
    ),
    st.sampled_from(PAYLOADS),
)


@PROPERTY
@given(
    payload=payload_bytes,
    max_json=st.sampled_from([None, 8, MAX_JSON]),
    max_depth=st.sampled_from([None, 0, 2, MAX_JSON_DEPTH]),
)
def test_property_parse_payload_never_raises(
    payload: bytes, max_json: int | None, max_depth: int | None
) -> None:
    result = parse_payload(payload, max_json=max_json, max_json_depth=max_depth)
    if not payload:
        assert result is None
        return
    assert isinstance(result, TextCommand | JsonRequest | ChatText | BadRequest)
    if payload[:1] == b"{":
        assert result.form == "json"
        assert isinstance(result, JsonRequest | BadRequest)
    if isinstance(result, BadRequest):
        assert not result.fatal
        assert result.code in {
            "invalid_utf8",
            "invalid_json",
            "json_too_large",
            "json_too_deep",
            "not_an_object",
            "bad_request",
        }
    if isinstance(result, ChatText):
        assert result.text == payload.decode()[payload.startswith(b"//") :]


ALPHABET = b'\x00\x01\x05/{}[]"acd:\r\n\xff'
server_streams = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from(ALPHABET), max_size=80).map(bytes),
    st.lists(st.sampled_from(PAYLOADS), max_size=8).map(lambda ps: b"".join(map(frame, ps))),
    st.lists(st.sampled_from(PAYLOADS), max_size=8).map(b"\n".join),
)
cut_points = st.lists(st.integers(min_value=0, max_value=80), max_size=20)


def run_server(chunks: Iterable[bytes]) -> tuple[list[Request | BadRequest], BadRequest | None]:
    """Feed until the first fatal error (the server closes then), then say EOF."""
    conn = ServerConnection(max_frame=40, max_line=40)
    items: list[Request | BadRequest] = []
    for chunk in [*chunks, None]:
        got = conn.receive(chunk) if chunk is not None else conn.eof()
        for item in got:
            if isinstance(item, BadRequest) and item.fatal:
                return items, item
            items.append(item)
    return items, None


@PROPERTY
@given(data=server_streams, cuts=cut_points)
def test_property_server_connection_is_independent_of_splitting(
    data: bytes, cuts: list[int]
) -> None:
    whole, whole_error = run_server([data])
    by_byte, byte_error = run_server(bytewise(data))
    split, split_error = run_server(split_at(data, cuts))
    for item in whole + by_byte + split:
        assert isinstance(item, TextCommand | JsonRequest | ChatText | BadRequest)
    if byte_error is None:
        assert whole_error is None
        assert split_error is None
        assert whole == by_byte == split
    else:
        assert whole_error is not None
        assert split_error is not None
        assert whole_error.code == split_error.code == byte_error.code
        assert whole_error.code in {"frame_too_large", "line_too_long"}
        # The error takes the form of the latest request, which is the same however cut.
        assert whole_error.form == split_error.form == byte_error.form
        assert whole_error.fatal
        assert split_error.fatal
        # The requests before the error: all of them, however the stream is cut.
        assert whole == by_byte
        assert split == by_byte


# ------------------------------------------- receive_text_commands: the fast path of receive()

# Payloads at the edges of "a plain text command": each must come out exactly as receive() says.
COMMANDISH = [
    b"",
    b"/echo hola",
    b"/ECHO  dos  espacios ",
    b"/ping",
    b"/",
    b"/ x",
    b"//x",
    b"/\tx",
    b"/echo\thola",
    b"/echo\xc2\xa0x",  # a no-break space is whitespace to strip(), not the separator
    b"/\xc3\x91and\xc3\xba \xe2\x80\x83x\xe2\x80\x83",
    b"/\xc4\xb0",  # lower() lengthens it
    b"/echo \xff",
    b"\xff",
    b"hola",
    b'{"cmd": "ping"}',
    b"[1]",
    b"/" + b"a" * 35,
]
fast_streams = st.lists(
    st.one_of(
        st.sampled_from(COMMANDISH).map(frame),
        st.binary(max_size=12).map(lambda body: frame(b"/" + body)),
        st.sampled_from([header(41), header(40), b"\x00\x00"]),  # over the limit, or cut short
    ),
    max_size=10,
).map(b"".join)


def receive_fast(conn: ServerConnection, chunk: bytes) -> list[Request | BadRequest]:
    """What the message server does with a chunk: the fast path, else receive()."""
    conn.detect(chunk)
    commands = conn.receive_text_commands(chunk)
    if commands is None:
        return conn.receive(chunk)
    return [TextCommand(name, rest) for name, rest in commands]


@PROPERTY
@given(
    data=fast_streams,
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=4),
    start_json=st.booleans(),
)
def test_property_receive_text_commands_is_receive(
    data: bytes, cuts: list[int], start_json: bool
) -> None:
    for chunks in ([data], split_at(data, cuts), bytewise(data)):
        reference, fast = ServerConnection(max_frame=40), ServerConnection(max_frame=40)
        if start_json:  # so that a text command visibly changes the form
            for conn in (reference, fast):
                conn.receive(frame(b'{"cmd": "ping"}'))
        for chunk in chunks:
            assert receive_fast(fast, chunk) == reference.receive(chunk)
            assert fast.form == reference.form
        # Whatever either holds of a cut frame, or its failure, shows in what comes next.
        probe = frame(b"/ping") + frame(b"hola")
        assert receive_fast(fast, probe) == reference.receive(probe)
        assert fast.eof() == reference.eof()


def test_receive_text_commands_serves_only_plain_framed_commands() -> None:
    conn = ServerConnection(max_frame=40)
    assert conn.receive_text_commands(frame(b"/ping")) is None  # the kind is not known yet
    conn.detect(b"\x00")
    data = frame(b"/UPPER  hola ") + frame(b"") + frame(b"/ping") + frame(b"/echo")[:6]
    assert conn.receive_text_commands(data) == [("upper", "hola"), ("ping", "")]
    assert conn.form == "text"
    # The cut frame waits in the decoder, where receive() finishes it.
    assert conn.receive_text_commands(b"cho") is None
    assert conn.receive(b"cho") == [TextCommand("echo", "")]
    for payload in (b"hola", b"//x", b'{"cmd":"x"}', b"/", b"/ x", b"/\tx", b"\xff"):
        assert conn.receive_text_commands(frame(payload)) is None
    assert conn.receive_text_commands(header(41)) is None
    conn.trace = lambda direction, payload: None
    assert conn.receive_text_commands(frame(b"/ping")) is None
    lines = ServerConnection()
    lines.detect(b"/")
    assert lines.receive_text_commands(b"/ping\n") is None


def test_a_tls_client_hello_is_refused_in_clear_text():
    connection = ServerConnection()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)
    assert connection.receive(hello) == [
        BadRequest(
            "tls_not_supported",
            "this port speaks plain TCP, not TLS: connect without --tls",
            "text",
            fatal=True,
        )
    ]
    assert connection.kind == "lines"


def test_a_line_starting_with_ctrl_v_alone_is_still_a_line():
    connection = ServerConnection()
    assert connection.receive(b"\x16hola\n") == [ChatText("\x16hola")]


TLS_HELLO_ERROR = BadRequest(
    "tls_not_supported",
    "this port speaks plain TCP, not TLS: connect without --tls",
    "text",
    fatal=True,
)


def test_a_tls_client_hello_cut_after_its_first_byte_is_still_refused():
    connection = ServerConnection()
    assert connection.receive(b"\x16") == []
    assert connection.kind == "unknown"  # one byte kept: 0x16 alone decides nothing
    assert connection.receive(b"\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)) == [
        TLS_HELLO_ERROR
    ]
    assert connection.tls_hello
    assert connection.receive(b"more of the handshake\n") == []  # nothing after it is served


def test_detect_then_receive_sees_a_split_client_hello():
    # The message server's way: detect() each new piece, then receive() the deciding one.
    connection = ServerConnection()
    assert not connection.detect(b"\x16")
    assert connection.detect(b"\x03\x01") and connection.tls_hello
    assert connection.receive(b"\x03\x01") == [TLS_HELLO_ERROR]


def test_a_kept_0x16_is_served_with_the_bytes_after_it():
    connection = ServerConnection()
    assert not connection.detect(b"\x16")
    assert connection.detect(b"hola\n") and not connection.tls_hello
    assert connection.receive(b"hola\n") == [ChatText("\x16hola")]
    assert connection.receive(b"adios\n") == [ChatText("adios")]  # the byte is served once


def test_a_lone_0x16_then_eof_is_no_request():
    connection = ServerConnection()
    assert connection.receive(b"\x16") == []
    assert connection.eof() == []
    assert connection.kind == "unknown"
