"""The WebSocket server protocol without sockets: handshake decisions, limits, timers.

The peer is wsproto's client side, so every byte crosses a real RFC 6455
encoder and decoder; time is whatever ``now`` the test passes.
"""

from __future__ import annotations

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from enlace.protocol.websocket import (
    Refusal,
    ServerProtocol,
    origin_allowed,
    token_matches,
)
from tests.web.wsclient import CLOSE, TEXT, frame, upgrade_request


class Peer:
    """A wsproto client talking to a ServerProtocol through bytes."""

    def __init__(self, server: ServerProtocol, *, host: str = "127.0.0.1:8088", **request: object):
        self.server = server
        self.client = WSConnection(ConnectionType.CLIENT)
        head = self.client.send(Request(host=host, target="/ws", **request))  # type: ignore[arg-type]
        self.opened = server.handshake(head, now=0.0)
        self.events = self.deliver()

    def deliver(self) -> list[Event]:
        self.client.receive_data(self.server.data_to_send())
        return list(self.client.events())

    def send(self, event: Event, now: float = 0.0) -> list[str]:
        return self.server.receive_data(self.client.send(event), now)


def open_peer(**options: object) -> Peer:
    peer = Peer(ServerProtocol(**options))  # type: ignore[arg-type]
    assert peer.opened and isinstance(peer.events[0], AcceptConnection)
    return peer


# -- the Origin rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "127.0.0.1:8088", True),  # not a browser
        ("http://127.0.0.1:8088", "127.0.0.1:8088", True),
        ("HTTP://LOCALHOST:8088", "localhost:8088", True),
        ("http://example.org", "example.org", True),  # default ports on both sides
        ("http://example.org:80", "example.org", True),
        ("https://example.org", "example.org:443", True),
        ("http://[::1]:8088", "[::1]:8088", True),
        ("http://127.0.0.1:8089", "127.0.0.1:8088", False),  # another port is another origin
        ("https://example.org", "example.org", True),  # a browser leaves the default port out
        ("http://evil.example", "127.0.0.1:8088", False),
        ("http://127.0.0.1.evil.example:8088", "127.0.0.1:8088", False),
        ("null", "127.0.0.1:8088", False),
        ("file://", "127.0.0.1:8088", False),
        ("ws://127.0.0.1:8088", "127.0.0.1:8088", False),
        ("http://127.0.0.1:99999", "127.0.0.1:99999", False),  # not a port
        ("http://127.0.0.1:8088", "127.0.0.1:x", False),
    ],
)
def test_origin_rule(origin, host, allowed):
    assert origin_allowed(origin, host) is allowed


def test_listed_origins_and_the_wildcard():
    assert origin_allowed(
        "https://chat.example.org", "127.0.0.1:8088", ["https://chat.example.org/"]
    )
    assert not origin_allowed("https://chat.example.org:444", "h", ["https://chat.example.org"])
    assert origin_allowed("null", "127.0.0.1:8088", ["null"])
    assert origin_allowed("http://anything.example", "h", ["*"])


# -- the token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers", "ok"),
    [
        ("/ws?token=s3cret", [], True),
        ("/ws?room=x&token=s3cret", [], True),
        ("/ws?token=s3cre", [], False),
        ("/ws?token=s3cret2", [], False),
        ("/ws", [], False),
        ("/ws", [(b"authorization", b"Bearer s3cret")], True),
        ("/ws", [(b"Authorization", b"bearer  s3cret ")], True),
        ("/ws", [(b"authorization", b"Basic s3cret")], False),
        ("/ws?token=no", [(b"authorization", b"Bearer s3cret")], True),
        ("/ws?token=%73%33cret", [], True),  # percent-encoded in the URL, as browsers may
    ],
)
def test_token(target, headers, ok):
    assert token_matches(target, headers, "s3cret") is ok


# -- the handshake ---------------------------------------------------------------------


def test_a_valid_upgrade_is_accepted_with_101():
    peer = open_peer()
    assert peer.server.state == "open"
    assert peer.server.request is not None and peer.server.request.target == "/ws"


def test_a_foreign_origin_gets_a_complete_403_response():
    peer = Peer(ServerProtocol(), extra_headers=[(b"Origin", b"http://evil.example")])
    assert not peer.opened
    assert peer.server.should_close and peer.server.state == "closed"
    rejected, *body = peer.events
    assert isinstance(rejected, RejectConnection) and rejected.status_code == 403
    text = b"".join(event.data for event in body if isinstance(event, RejectData))
    assert text == b"origin http://evil.example may not connect here\n"
    assert peer.server.refusal == Refusal(403, "origin http://evil.example may not connect here")


def test_two_origin_headers_are_a_bad_request():
    origins = [(b"Origin", b"http://127.0.0.1:8088"), (b"Origin", b"http://evil.example")]
    peer = Peer(ServerProtocol(), extra_headers=origins)
    assert not peer.opened and peer.server.refusal is not None
    assert peer.server.refusal.status == 400


def test_a_token_is_checked_after_the_origin():
    server = ServerProtocol(token="s3cret")
    assert not Peer(server).opened
    assert server.refusal is not None and server.refusal.status == 403
    assert Peer(ServerProtocol(token="s3cret"), host="h:1").opened is False
    peer = Peer(
        ServerProtocol(token="s3cret"), extra_headers=[(b"Authorization", b"Bearer s3cret")]
    )
    assert peer.opened


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /ws HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # not an upgrade at all
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Version: 13\r\n\r\n", 400),  # no key
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
        (b"GET /ws HTTP/1.1\r\n", 400),  # incomplete
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS on the plain port
    ],
)  # fmt: skip
def test_bad_handshakes_are_refused(head, status):
    server = ServerProtocol()
    assert server.handshake(head, 0.0) is False
    response = server.data_to_send()
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nConnection: close\r\n" in response
    assert server.should_close
    if status == 426:
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in response


def test_the_test_clients_request_is_valid():
    server = ServerProtocol()
    assert server.handshake(upgrade_request("127.0.0.1", 8088), 0.0)
    assert server.data_to_send().startswith(b"HTTP/1.1 101 ")


# -- messages ----------------------------------------------------------------------------


def test_text_messages_come_out_whole_and_in_order():
    peer = open_peer()
    data = peer.client.send(TextMessage("uno")) + peer.client.send(TextMessage("dos"))
    assert peer.server.receive_data(data, 0.0) == ["uno", "dos"]
    first = peer.client.send(TextMessage("¡ho", message_finished=False))
    rest = peer.client.send(TextMessage("la!"))
    cut = len(first) + 3
    both = first + rest
    assert peer.server.receive_data(both[:cut], 0.0) == []
    assert peer.server.receive_data(both[cut:], 0.0) == ["¡hola!"]


def test_text_goes_out_as_text_messages():
    peer = open_peer()
    peer.server.send_text('{"event":"message"}')
    events = peer.deliver()
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert events[0].data == '{"event":"message"}'


@pytest.mark.parametrize("size", [1000, 1001])
def test_the_message_limit_is_inclusive_and_counted_in_bytes(size):
    peer = open_peer(max_message=1000)
    text = "ñ" * (size // 2) + "a" * (size % 2)  # two bytes a character
    assert len(text.encode()) == size
    received = peer.send(TextMessage(text))
    if size == 1000:
        assert received == [text]
        return
    assert received == []
    close = peer.deliver()[0]
    assert isinstance(close, CloseConnection) and close.code == 1009
    assert peer.server.state == "closing" and not peer.server.should_close
    assert peer.server.receive_data(frame(TEXT, b"sent before our close arrived"), 0.0) == []
    assert peer.server.data_to_send() == b""
    peer.server.receive_data(frame(CLOSE, (1009).to_bytes(2, "big")), 0.0)
    assert peer.server.should_close  # the peer answered the close: now the TCP side ends
    assert peer.server.should_close


def test_binary_closes_with_1003():
    peer = open_peer()
    assert peer.send(BytesMessage(b"\x00\x00\x00\x00")) == []
    close = peer.deliver()[0]
    assert isinstance(close, CloseConnection) and close.code == 1003


def test_invalid_utf8_fails_the_connection_with_1007():
    peer = open_peer()
    assert peer.server.receive_data(frame(TEXT, b"ok \xc3("), 0.0) == []
    close = peer.deliver()[0]
    assert isinstance(close, CloseConnection) and close.code == 1007
    assert peer.server.should_close  # the parser cannot go on: no closing handshake


def test_an_unmasked_frame_from_a_client_is_a_protocol_error():
    peer = open_peer()
    assert peer.server.receive_data(b"\x81\x02hi", 0.0) == []
    close = peer.deliver()[0]
    assert isinstance(close, CloseConnection) and close.code == 1002
    assert peer.server.should_close


def test_pings_from_the_peer_are_answered():
    peer = open_peer()
    peer.send(Ping(b"hola"))
    assert peer.deliver() == [Pong(b"hola")]


def test_the_peer_closing_is_answered_with_its_code():
    peer = open_peer()
    peer.send(CloseConnection(1000, "bye"))
    events = peer.deliver()
    assert isinstance(events[0], CloseConnection) and events[0].code == 1000
    assert peer.server.should_close
    assert (peer.server.close_code, peer.server.close_reason) == (1000, "bye")


def test_eof_without_a_close_frame_is_1006():
    peer = open_peer()
    peer.server.receive_eof()
    assert peer.server.should_close and peer.server.close_code == 1006


# -- timers ----------------------------------------------------------------------------


def test_pings_go_out_every_interval_and_pongs_keep_the_connection():
    peer = open_peer(ping_interval=20.0, ping_timeout=5.0)
    server = peer.server
    assert server.next_deadline == 20.0
    server.tick(19.9)
    assert peer.deliver() == []
    server.tick(20.0)
    (ping,) = peer.deliver()
    assert isinstance(ping, Ping)
    assert server.next_deadline == 25.0  # the pong's deadline comes first
    peer.send(ping.response(), now=21.0)
    assert server.next_deadline == 40.0
    server.tick(40.0)
    (second,) = peer.deliver()
    assert isinstance(second, Ping) and second.payload != ping.payload


def test_no_pong_in_time_closes_with_1011_at_once():
    peer = open_peer(ping_interval=20.0, ping_timeout=5.0)
    peer.server.tick(20.0)
    (ping,) = peer.deliver()
    assert isinstance(ping, Ping)
    peer.send(Pong(b"not the payload"), now=21.0)  # a pong for another ping does not count
    peer.server.tick(25.0)
    (close,) = peer.deliver()
    assert isinstance(close, CloseConnection) and close.code == 1011
    assert close.reason == "keepalive ping timeout"
    assert peer.server.should_close and peer.server.next_deadline is None


def test_a_close_not_answered_in_time_ends_the_connection():
    peer = open_peer(close_timeout=5.0)
    peer.server.close(1001, "server shutting down", now=100.0)
    (close,) = peer.deliver()
    assert isinstance(close, CloseConnection) and close.code == 1001
    assert peer.server.next_deadline == 105.0
    peer.server.tick(104.0)
    assert not peer.server.should_close
    peer.server.tick(105.0)
    assert peer.server.should_close


def test_none_disables_the_timers():
    peer = open_peer(ping_interval=None, close_timeout=None)
    assert peer.server.next_deadline is None
    peer.server.close(1001, "", now=0.0)
    assert peer.server.next_deadline is None
