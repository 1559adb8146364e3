"""The classic services, over real loopback sockets, on both runtimes."""

from __future__ import annotations

import itertools
import pickle
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enlace.services import EchoService, GreetService, UdpEchoService, UpperService
from tests.conftest import connect, read_exactly, read_to_eof


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">I", read_exactly(sock, 4))
    return read_exactly(sock, size)


# -- upper ------------------------------------------------------------------------


def test_upper_answers_the_classic_exchange(serve):
    server = serve(UpperService())
    with connect(server.address) as sock:
        sock.sendall(b"hola servidor")
        assert read_exactly(sock, 13) == b"HOLA SERVIDOR"


def test_upper_handles_a_character_split_across_packets(serve):
    server = serve(UpperService())
    text = "ñandú".encode()
    with connect(server.address) as sock:
        for byte in text:  # every UTF-8 sequence is cut in the middle
            sock.sendall(bytes([byte]))
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == "ÑANDÚ".encode()


def test_upper_passes_bytes_that_are_not_utf8_through(serve):
    server = serve(UpperService())
    with connect(server.address) as sock:
        sock.sendall(b"abc\xff\xfexyz\xc3")  # invalid bytes, and a truncated sequence at EOF
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b"ABC\xff\xfeXYZ\xc3"


def test_upper_serves_many_clients_at_once(serve):
    server = serve(UpperService())

    def client(number: int) -> bytes:
        with connect(server.address) as sock:
            sock.sendall(f"cliente {number} dice hola".encode())
            sock.shutdown(socket.SHUT_WR)
            return read_to_eof(sock)

    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(client, range(100)))
    assert replies == [f"CLIENTE {n} DICE HOLA".encode() for n in range(100)]


# -- echo -------------------------------------------------------------------------


def test_echo_returns_10_mb_of_binary_after_half_close(serve):
    server = serve(EchoService())
    payload = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    with connect(server.address, timeout=15) as sock:
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(read_to_eof(sock)))
        reader.start()  # read while sending, as a real client must for 10 MB
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(15)
    assert received == [payload]


def test_echo_returns_a_pickled_object_unchanged(serve):
    # The client may unpickle what it sent itself; the server never unpickles anything.
    server = serve(EchoService())
    data = pickle.dumps({"nombre": "Ana", "notas": [7.5, 9.0]})
    with connect(server.address) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert pickle.loads(read_to_eof(sock)) == {"nombre": "Ana", "notas": [7.5, 9.0]}


def test_echo_streams_as_it_goes(serve):
    server = serve(EchoService())
    with connect(server.address) as sock:
        for word in (b"uno\n", b"dos\n", b"tres\n"):
            sock.sendall(word)
            assert read_exactly(sock, len(word)) == word  # no need to close first


def test_200_concurrent_clients_each_get_their_own_bytes(serve):
    server = serve(EchoService())

    def client(number: int) -> bool:
        payload = number.to_bytes(2, "big") * (32 * 1024)  # 64 KiB, distinct per client
        with connect(server.address, timeout=20) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return read_to_eof(sock) == payload

    with ThreadPoolExecutor(200) as pool:
        assert all(pool.map(client, range(200)))


def test_a_client_vanishing_mid_transfer_does_not_disturb_others(serve):
    server = serve(EchoService())
    steady = connect(server.address)
    rude = connect(server.address)
    rude.sendall(b"x" * 512 * 1024)
    # SO_LINGER 0: close with a reset, the rudest way to leave.
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rude.close()
    with steady:
        steady.sendall(b"still here")
        assert read_exactly(steady, 10) == b"still here"
    with connect(server.address) as late:
        late.sendall(b"and me")
        late.shutdown(socket.SHUT_WR)
        assert read_to_eof(late) == b"and me"


def test_framed_echo_returns_each_frame(serve):
    server = serve(EchoService(framed=True))
    frames = [b"hola", b"", b"x" * 70000, "ñandú".encode()]
    with connect(server.address) as sock:
        sock.sendall(b"".join(frame(f) for f in frames))
        # The empty frame is a keep-alive: no echo for it.
        assert [read_frame(sock) for _ in range(3)] == [b"hola", b"x" * 70000, "ñandú".encode()]


def test_framed_echo_answers_1000_frames_in_one_write_in_order(serve):
    server = serve(EchoService(framed=True))
    with connect(server.address) as sock:
        sock.sendall(b"".join(frame(str(i).encode()) for i in range(1000)))
        assert [read_frame(sock) for _ in range(1000)] == [str(i).encode() for i in range(1000)]


def test_framed_echo_refuses_an_oversize_header_before_the_payload(serve):
    server = serve(EchoService(framed=True, max_frame=1024))
    with connect(server.address) as sock:
        sock.sendall(struct.pack(">I", 4 * 1024**3 - 1))  # announces 4 GiB, sends nothing
        error = read_frame(sock)
        assert error.startswith(b"ERR frame_too_large: ")
        assert read_to_eof(sock) == b""
    with connect(server.address) as sock:  # and the server still serves
        sock.sendall(frame(b"next"))
        assert read_frame(sock) == b"next"


# -- greet ------------------------------------------------------------------------


def test_greet_counts_clients_from_zero(serve):
    server = serve(GreetService())
    greetings = []
    for _ in range(3):
        with connect(server.address) as sock:
            greetings.append(read_to_eof(sock))
    assert greetings == [
        b"0. Hola nuevo amigo!\n",
        b"1. Hola nuevo amigo!\n",
        b"2. Hola nuevo amigo!\n",
    ]


def test_greet_message_can_change_and_counts_concurrent_clients_once_each(serve):
    server = serve(GreetService("Bienvenida"))

    def client(_: int) -> bytes:
        with connect(server.address) as sock:
            return read_to_eof(sock)

    with ThreadPoolExecutor(20) as pool:
        greetings = sorted(pool.map(client, range(60)))
    numbers = sorted(int(g.split(b".")[0]) for g in greetings)
    assert numbers == list(range(60))
    assert all(g.endswith(b". Bienvenida\n") for g in greetings)


def test_greet_refuses_multiline_messages():
    with pytest.raises(ValueError, match="single line"):
        GreetService("hola\nadios")


# -- udp --------------------------------------------------------------------------


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    return sock


def test_udp_echoes_each_datagram_to_its_sender(serve):
    server = serve(UdpEchoService())
    with udp_client() as a, udp_client() as b:
        a.sendto(b"hola desde a", server.address)
        b.sendto(b"hola desde b", server.address)
        assert a.recvfrom(65536) == (b"hola desde a", server.address)
        assert b.recvfrom(65536) == (b"hola desde b", server.address)


def test_udp_answers_an_oversize_datagram_with_a_shorter_error(serve):
    server = serve(UdpEchoService(), max_datagram=1000)
    with udp_client() as sock:
        sock.sendto(b"z" * 1000, server.address)
        assert sock.recv(65536) == b"z" * 1000  # exactly the limit is fine
        sock.sendto(b"z" * 1001, server.address)
        reply = sock.recv(65536)
        assert reply.startswith(b"ERR datagram_too_large")
        assert len(reply) <= 1001


class _Amplifier(UdpEchoService):
    def reply(self, data: bytes, peer: tuple[str, int]) -> bytes | None:
        return data * 2


def test_udp_never_sends_a_reply_larger_than_its_request(serve):
    server = serve(_Amplifier())
    with udp_client() as sock:
        sock.settimeout(0.5)
        sock.sendto(b"ping", server.address)
        with pytest.raises(TimeoutError):
            sock.recv(65536)


def test_framed_echo_answers_good_frames_then_refuses_a_bad_header_in_the_same_chunk(serve):
    server = serve(EchoService(framed=True, max_frame=1024))
    with connect(server.address) as sock:
        sock.sendall(frame(b"antes") + struct.pack(">I", 4096))  # one write: good, then too big
        assert read_frame(sock) == b"antes"
        assert read_frame(sock).startswith(b"ERR frame_too_large: frame of 4096 bytes")
        assert read_to_eof(sock) == b""


class _Recorder:
    """A transport without I/O: what a handler writes, and whether it closed."""

    peer = ("127.0.0.1", 4242)

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data

    def close(self) -> None:
        self.closed = True


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=8),
    oversize=st.booleans(),
    points=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_framed_echo_however_the_stream_is_cut(fastpath, payloads, oversize, points):
    # The echo of whole frames is written as it comes, through the C scan or the
    # Python one; a frame cut anywhere waits for its end; an oversize header ends it.
    data = b"".join(frame(p) for p in payloads) + (struct.pack(">I", 41) if oversize else b"")
    marks = [0, *sorted(min(p, len(data)) for p in points), len(data)]
    handler = EchoService(framed=True, max_frame=40).handler()
    transport = _Recorder()
    handler.connection_made(transport)  # type: ignore[arg-type]
    for start, end in itertools.pairwise(marks):
        if start < end and not transport.closed:
            handler.data_received(data[start:end])
    expected = b"".join(frame(p) for p in payloads if p)
    if oversize:
        expected += frame(b"ERR frame_too_large: frame of 41 bytes exceeds the 40-byte limit")
    assert bytes(transport.written) == expected
    assert transport.closed == oversize
