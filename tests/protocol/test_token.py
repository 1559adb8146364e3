"""The token gate, sans-I/O: every form of the first payload, cut anywhere, and its limits."""

from __future__ import annotations

import pytest

from enlace.protocol.envelope import loads
from enlace.protocol.token import TokenGate


def feed_bytewise(gate: TokenGate, data: bytes):
    verdict = None
    for i in range(len(data)):
        verdict = gate.receive(data[i : i + 1])
        if verdict is not None:
            return verdict, data[i + 1 :]
    return verdict, b""


def test_text_line_token_accepted_and_the_rest_kept():
    gate = TokenGate("s3cret")
    verdict = gate.receive(b"/token s3cret\r\n/upper hola\n")
    assert verdict is not None and verdict.accepted
    assert verdict.reply == b"token accepted\n"
    assert verdict.rest == b"/upper hola\n"


def test_token_cut_into_single_bytes():
    gate = TokenGate("s3cret")
    verdict, after = feed_bytewise(gate, b"/token s3cret\nX")
    assert verdict is not None and verdict.accepted
    assert verdict.rest == b"" and after == b"X"  # the gate took nothing past the newline


def test_framed_text_and_json_forms():
    frame = b"/token s3cret"
    verdict = TokenGate("s3cret").receive(len(frame).to_bytes(4, "big") + frame + b"\x00\x00")
    assert verdict is not None and verdict.accepted and verdict.rest == b"\x00\x00"
    assert verdict.reply == len(b"token accepted").to_bytes(4, "big") + b"token accepted"
    body = b'{"id": 7, "cmd": "token", "args": ["s3cret"]}'
    verdict = TokenGate("s3cret").receive(len(body).to_bytes(4, "big") + body)
    assert verdict is not None and verdict.accepted
    assert loads(verdict.reply[4:]) == {"id": 7, "ok": True, "result": "token accepted"}


def test_json_line_with_a_wrong_token_gets_a_json_error():
    verdict = TokenGate("s3cret").receive(b'{"id": "a", "cmd": "token", "args": ["nope"]}\n')
    assert verdict is not None and not verdict.accepted
    reply = loads(verdict.reply)
    assert reply["id"] == "a" and reply["error"]["code"] == "bad_token"


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (b"/token nope\n", b"bad_token"),
        (b"/token\n", b"bad_token"),
        (b"/token s3cret2\n", b"bad_token"),
        (b"/upper hola\n", b"token_required"),
        (b"hola\n", b"token_required"),
        (b"\xff\xfe\n", b"token_required"),
    ],
)
def test_anything_else_is_refused_with_a_code(first, code):
    verdict = TokenGate("s3cret").receive(first)
    assert verdict is not None and not verdict.accepted
    assert verdict.reply.startswith(b"ERR " + code + b": ")
    assert verdict.rest == b""


def test_a_long_first_line_or_frame_is_refused_before_it_is_buffered():
    gate = TokenGate("s3cret", max_token=64)
    assert gate.receive(b"a" * 60) is None
    verdict = gate.receive(b"a" * 10)
    assert verdict is not None and b"token_too_long" in verdict.reply
    verdict = TokenGate("s3cret", max_token=64).receive((10**6).to_bytes(4, "big"))
    assert verdict is not None and not verdict.accepted and b"token_too_long" in verdict.reply


def test_empty_token_is_a_programming_error():
    with pytest.raises(ValueError, match="empty"):
        TokenGate("")


KEEP_ALIVES = {"framed": b"\x00\x00\x00\x00", "line": b"\n", "crlf": b"\r\n"}
TOKENS = {"framed": b"\x00\x00\x00\x0d/token s3cret", "line": b"/token s3cret\n"}


@pytest.mark.parametrize("kind", ["framed", "line", "crlf"])
def test_keep_alives_before_the_token_are_not_the_first_payload(kind):
    keep_alive, token = KEEP_ALIVES[kind], TOKENS["framed" if kind == "framed" else "line"]
    gate = TokenGate("s3cret")
    assert gate.receive(keep_alive * 3) is None  # no reply to a keep-alive, no verdict
    verdict = gate.receive(token + keep_alive)
    assert verdict is not None and verdict.accepted
    assert verdict.rest == keep_alive  # after the token: the service's, as it came
    verdict, after = feed_bytewise(TokenGate("s3cret"), keep_alive * 2 + token + b"X")
    assert verdict is not None and verdict.accepted and after == b"X"


def test_keep_alives_do_not_count_towards_the_token_limit():
    gate = TokenGate("s3cret", max_token=64)
    assert gate.receive(b"\n" * 10_000) is None
    verdict = gate.receive(b"/token s3cret\n")
    assert verdict is not None and verdict.accepted


def test_a_keep_alive_then_something_else_is_still_refused():
    verdict = TokenGate("s3cret").receive(b"\n/upper hola\n")
    assert verdict is not None and not verdict.accepted
    assert verdict.reply.startswith(b"ERR token_required: ")


@pytest.mark.parametrize("cut", [None, 1], ids=["whole", "0x16-alone-first"])
def test_a_tls_client_hello_gets_the_message_servers_answer(cut):
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)
    gate = TokenGate("s3cret")
    if cut is not None:
        assert gate.receive(hello[:cut]) is None
    verdict = gate.receive(hello[cut:] if cut else hello)
    assert verdict is not None and not verdict.accepted
    assert verdict.reply == (
        b"ERR tls_not_supported: this port speaks plain TCP, not TLS: connect without --tls\n"
    )
