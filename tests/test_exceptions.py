"""Tests for :mod:`enlace.exceptions`: the class tree, the codes, and OSError translation.

The tree must be the one the module docstring draws, every class must carry its
own distinct ``code``, and :func:`translate_oserror` must pick the right class
and write ``cannot <action> <host>:<port>: <reason>``. Besides synthetic
OSErrors, real sockets on 127.0.0.1 produce a refused connection and a port
that is already in use.
"""

from __future__ import annotations

import errno
import re
import socket

import pytest

import enlace.exceptions as exceptions_module
from enlace.exceptions import (
    AddressError,
    AddressInUse,
    ConnectionClosed,
    ConnectionRefused,
    EnlaceError,
    FrameTooLarge,
    IncompleteFrame,
    LineTooLong,
    LocalProtocolError,
    NetworkError,
    ProtocolError,
    RemoteProtocolError,
    RequestError,
    Timeout,
    TLSError,
    translate_oserror,
)
from enlace.sockets import connect_tcp, listen_tcp, listen_udp

# Each class and its direct parent, as the module docstring draws them.
TREE: dict[type[EnlaceError], type[Exception]] = {
    EnlaceError: Exception,
    ProtocolError: EnlaceError,
    RemoteProtocolError: ProtocolError,
    FrameTooLarge: RemoteProtocolError,
    LineTooLong: FrameTooLarge,
    IncompleteFrame: RemoteProtocolError,
    LocalProtocolError: ProtocolError,
    RequestError: EnlaceError,
    NetworkError: EnlaceError,
    AddressInUse: NetworkError,
    AddressError: NetworkError,
    ConnectionRefused: NetworkError,
    ConnectionClosed: NetworkError,
    Timeout: NetworkError,
    TLSError: NetworkError,
}

CODES = {
    EnlaceError: "error",
    ProtocolError: "protocol_error",
    RemoteProtocolError: "remote_protocol_error",
    LocalProtocolError: "local_protocol_error",
    FrameTooLarge: "frame_too_large",
    LineTooLong: "line_too_long",
    IncompleteFrame: "incomplete_frame",
    RequestError: "request_error",
    NetworkError: "network_error",
    AddressInUse: "address_in_use",
    AddressError: "bad_address",
    ConnectionRefused: "connection_refused",
    ConnectionClosed: "connection_closed",
    Timeout: "timeout",
    TLSError: "tls_error",
}


# ---------------------------------------------------------------------------------------- the tree


@pytest.mark.parametrize("cls", list(TREE), ids=lambda c: c.__name__)
def test_each_class_has_the_documented_parent(cls: type[EnlaceError]) -> None:
    assert cls.__bases__ == (TREE[cls],)


def test_tree_matches_the_module_docstring() -> None:
    """Read the drawing itself, so the docstring and the code cannot drift apart."""
    doc = exceptions_module.__doc__
    assert doc is not None
    drawn: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*(?:[│ ]*[├└]── )?)([A-Z][A-Za-z]+)\s{2,}", line)
        if not match or not hasattr(exceptions_module, match.group(2)):
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[name] = stack[-1][1] if stack else "Exception"
        stack.append((depth, name))
    expected = {cls.__name__: parent.__name__ for cls, parent in TREE.items()}
    assert drawn == expected


def test_the_tree_holds_every_exported_exception() -> None:
    exported = {
        obj
        for name in exceptions_module.__all__
        if isinstance(obj := getattr(exceptions_module, name), type)
        and issubclass(obj, BaseException)
    }
    assert exported == set(TREE)


def test_fault_is_attributed() -> None:
    for cls in (FrameTooLarge, LineTooLong, IncompleteFrame):
        assert issubclass(cls, RemoteProtocolError)
        assert not issubclass(cls, LocalProtocolError)
        assert not issubclass(cls, NetworkError)
    for cls in (AddressInUse, AddressError, ConnectionRefused, ConnectionClosed, Timeout):
        assert issubclass(cls, NetworkError)
        assert not issubclass(cls, ProtocolError)
        # NetworkErrors wrap OSErrors, they are not OSErrors themselves.
        assert not issubclass(cls, OSError)


# ------------------------------------------------------------------------------------------- codes


@pytest.mark.parametrize("cls", list(CODES), ids=lambda c: c.__name__)
def test_each_class_defines_its_own_stable_code(cls: type[EnlaceError]) -> None:
    assert "code" in vars(cls), f"{cls.__name__} inherits its code"
    assert cls.code == CODES[cls]
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code)


def test_codes_are_distinct() -> None:
    codes = [cls.code for cls in TREE]
    assert len(codes) == len(set(codes))


def test_instances_carry_their_code_and_details() -> None:
    error = FrameTooLarge("too big", size=10, limit=5)
    assert (error.code, error.size, error.limit, str(error)) == (
        "frame_too_large",
        10,
        5,
        "too big",
    )
    line = LineTooLong("long", size=None, limit=3)
    assert (line.code, line.size, line.limit) == ("line_too_long", None, 3)
    incomplete = IncompleteFrame("cut", pending=7)
    assert (incomplete.code, incomplete.pending) == ("incomplete_frame", 7)
    assert ConnectionRefused("x").code == "connection_refused"


def test_size_limit_and_pending_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        FrameTooLarge("m", 1, 2)  # type: ignore[misc]
    with pytest.raises(TypeError):
        IncompleteFrame("m", 1)  # type: ignore[misc]


# ------------------------------------------------------------------------------- translate_oserror


def _oserror(code: int, strerror: str) -> OSError:
    return OSError(code, strerror)


@pytest.mark.parametrize(
    ("exc", "action", "host", "port", "cls", "message"),
    [
        (
            _oserror(errno.ECONNREFUSED, "Connection refused"),
            "connect to",
            "127.0.0.1",
            8000,
            ConnectionRefused,
            "cannot connect to 127.0.0.1:8000: connection refused",
        ),
        (
            _oserror(errno.EADDRINUSE, "Address already in use"),
            "listen on",
            "0.0.0.0",
            80,
            AddressInUse,
            "cannot listen on 0.0.0.0:80: address already in use",
        ),
        (
            _oserror(errno.ECONNRESET, "Connection reset by peer"),
            "read from",
            "example.org",
            7,
            ConnectionClosed,
            "cannot read from example.org:7: connection reset by peer",
        ),
        (
            _oserror(errno.ECONNREFUSED, "Connection refused"),
            "connect to",
            "::1",
            8000,
            ConnectionRefused,
            "cannot connect to [::1]:8000: connection refused",
        ),
        (
            _oserror(errno.EPIPE, "Broken pipe"),
            "send to",
            "fe80::1%eth0",
            9,
            ConnectionClosed,
            "cannot send to [fe80::1%eth0]:9: broken pipe",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "connect to",
            "nosuch.invalid",
            80,
            AddressError,
            "cannot connect to nosuch.invalid:80: cannot resolve 'nosuch.invalid' "
            "(Name or service not known)",
        ),
        (
            TimeoutError(),
            "connect to",
            "10.0.0.1",
            80,
            Timeout,
            "cannot connect to 10.0.0.1:80: timed out",
        ),
        (
            TimeoutError("timed out"),
            "connect to",
            "2001:db8::1",
            443,
            Timeout,
            "cannot connect to [2001:db8::1]:443: timed out",
        ),
        (
            _oserror(errno.ENOSPC, "No space left on device"),
            "listen on",
            "localhost",
            1,
            NetworkError,
            "cannot listen on localhost:1: no space left on device",
        ),
        (
            OSError("Something Odd"),
            "connect to",
            "localhost",
            2,
            NetworkError,
            "cannot connect to localhost:2: something odd",
        ),
    ],
    ids=[
        "refused",
        "in-use",
        "reset",
        "ipv6",
        "ipv6-scoped",
        "gaierror",
        "timeout",
        "timeout-with-message",
        "unknown-errno",
        "no-errno",
    ],
)
def test_translate_oserror(
    exc: OSError, action: str, host: str, port: int, cls: type[NetworkError], message: str
) -> None:
    error = translate_oserror(exc, action=action, host=host, port=port)
    assert type(error) is cls
    assert str(error) == message
    assert error.code == CODES[cls]


def test_translate_oserror_gaierror_without_strerror() -> None:
    error = translate_oserror(socket.gaierror("no such host"), action="x", host="h", port=1)
    assert type(error) is AddressError
    assert str(error) == "cannot x h:1: cannot resolve 'h' (no such host)"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.EADDRINUSE, AddressInUse),
        (errno.EADDRNOTAVAIL, AddressError),
        (errno.EAFNOSUPPORT, AddressError),
        (errno.EACCES, AddressError),
        (errno.ECONNREFUSED, ConnectionRefused),
        (errno.EHOSTUNREACH, ConnectionRefused),
        (errno.ENETUNREACH, ConnectionRefused),
        (errno.ECONNRESET, ConnectionClosed),
        (errno.ECONNABORTED, ConnectionClosed),
        (errno.EPIPE, ConnectionClosed),
        (errno.ENOTCONN, ConnectionClosed),
        (errno.ETIMEDOUT, Timeout),
    ],
    ids=lambda v: errno.errorcode[v] if isinstance(v, int) else v.__name__,
)
def test_translate_oserror_by_errno(code: int, cls: type[NetworkError]) -> None:
    # OSError(code, ...) builds the matching builtin subclass (ConnectionRefusedError ...).
    exc = OSError(code, "Some Reason")
    error = translate_oserror(exc, action="connect to", host="h", port=1)
    assert type(error) is cls
    reason = "timed out" if cls is Timeout else "some reason"
    assert str(error) == f"cannot connect to h:1: {reason}"


def test_translate_oserror_returns_rather_than_raises() -> None:
    exc = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    error = translate_oserror(exc, action="read from", host="h", port=1)
    assert isinstance(error, ConnectionClosed)
    assert error.__cause__ is None  # chaining is the caller's "raise ... from exc"


# ------------------------------------------------------------------------------------ real sockets


def _closed_port() -> int:
    """A loopback port that was just bound, then closed: nothing listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_real_refused_connection_translates_to_connection_refused() -> None:
    port = _closed_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        with pytest.raises(OSError) as info:
            client.connect(("127.0.0.1", port))
    exc = info.value
    assert exc.errno == errno.ECONNREFUSED
    error = translate_oserror(exc, action="connect to", host="127.0.0.1", port=port)
    assert type(error) is ConnectionRefused
    assert error.code == "connection_refused"
    assert str(error) == f"cannot connect to 127.0.0.1:{port}: connection refused"


def test_connect_tcp_raises_connection_refused_with_the_oserror_as_cause() -> None:
    port = _closed_port()
    with pytest.raises(ConnectionRefused) as info:
        connect_tcp("127.0.0.1", port, timeout=5)
    assert str(info.value).startswith(f"cannot connect to 127.0.0.1:{port}: ")
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ECONNREFUSED


def test_listen_tcp_on_a_taken_port_raises_address_in_use() -> None:
    with listen_tcp("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with pytest.raises(AddressInUse) as info:
            listen_tcp("127.0.0.1", port)
    error = info.value
    assert error.code == "address_in_use"
    assert str(error) == f"cannot listen on 127.0.0.1:{port}: address already in use"
    assert isinstance(error.__cause__, OSError)
    assert error.__cause__.errno == errno.EADDRINUSE


def test_listen_tcp_on_a_port_bound_without_reuse_raises_address_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(AddressInUse):
            listen_tcp("127.0.0.1", port)


def test_listen_udp_on_a_taken_port_raises_address_in_use() -> None:
    with listen_udp("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with pytest.raises(AddressInUse, match=rf"^cannot listen on 127\.0\.0\.1:{port}: "):
            listen_udp("127.0.0.1", port)


def test_listen_tcp_port_zero_gives_a_working_socket() -> None:
    with listen_tcp("127.0.0.1", 0) as server:
        host, port = server.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
        with connect_tcp("127.0.0.1", port, timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_request_error_carries_the_servers_code() -> None:
    error = RequestError("unknown_command", "unknown command /nope (try /help)")
    assert error.code == "unknown_command"
    assert error.message == "unknown command /nope (try /help)"
    assert str(error) == "unknown_command: unknown command /nope (try /help)"


def test_ports_out_of_range_are_refused_not_wrapped() -> None:
    with pytest.raises(AddressError, match="ports go from 0 to 65535"):
        listen_tcp("127.0.0.1", 70000)
    with pytest.raises(AddressError, match="ports go from 0 to 65535"):
        listen_udp("127.0.0.1", -1)
    with pytest.raises(AddressError, match="ports go from 1 to 65535"):
        connect_tcp("127.0.0.1", 70000)
