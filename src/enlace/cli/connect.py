"""``enlace connect``: a netcat-like client, standard input to the socket and back.

TCP: a thread copies standard input to the socket; at end of input it shuts
down the writing side (a half-close), and the main thread keeps copying the
socket to standard output until the server closes. So
``echo hola | enlace connect 127.0.0.1 6543`` prints the whole echo and exits.

UDP: each input line (with its newline) is one datagram; replies are printed
as they arrive. At end of input it waits until every datagram was answered,
or ``--wait`` seconds passed since the last one, since UDP may lose replies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl as _ssl
import sys
import threading
import time
from typing import BinaryIO

from enlace.addresses import format_address
from enlace.exceptions import ConnectionRefused, translate_oserror
from enlace.limits import MAX_DATAGRAM
from enlace.sockets import connect_tcp
from enlace.tls import TLSSocket, client_handshake

__all__ = ["connect_tcp_stdio", "connect_udp_stdio"]

_CHUNK = 64 * 1024


def connect_tcp_stdio(
    host: str,
    port: int,
    *,
    stdin: BinaryIO,
    stdout: BinaryIO,
    connect_timeout: float | None = 10.0,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> int:
    """Relay ``stdin`` to ``host:port`` and the replies to ``stdout``; return an exit code.

    With ``ssl``, over TLS (the server's name verified); end of input then sends
    TLS's close_notify before the half-close.
    """
    raw = connect_tcp(host, port, timeout=connect_timeout)
    sock: socket.socket | TLSSocket = raw
    if ssl is not None:
        sock = client_handshake(
            raw,
            ssl,
            server_hostname=server_hostname or host,
            timeout=connect_timeout,
            where=format_address(host, port),
        )
    failure: list[BaseException] = []

    def pump() -> None:
        fd = stdin.fileno()
        try:
            while chunk := os.read(fd, _CHUNK):
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # The server closed first (a greeting server does): the reader reports it.
            failure.append(exc)

    threading.Thread(target=pump, name="enlace-connect-stdin", daemon=True).start()
    try:
        while chunk := sock.recv(_CHUNK):
            stdout.write(chunk)
            stdout.flush()
    except OSError as exc:
        raise translate_oserror(exc, action="read from", host=host, port=port) from exc
    finally:
        sock.close()
    return 0


def connect_udp_stdio(
    host: str,
    port: int,
    *,
    stdin: BinaryIO,
    stdout: BinaryIO,
    wait: float = 1.0,
    max_datagram: int = MAX_DATAGRAM,
) -> int:
    """Send each line of ``stdin`` as a datagram to ``host:port``; print the replies."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        # A connected UDP socket only receives from that peer, and reports
        # "port unreachable" as ECONNREFUSED instead of silence.
        sock.connect(address)
    except OSError as exc:
        raise translate_oserror(exc, action="send to", host=host, port=port) from exc
    state = threading.Condition()
    sent = received = 0
    last_send = time.monotonic()
    errors: list[BaseException] = []

    def listen() -> None:
        nonlocal received
        while True:
            try:
                reply = sock.recv(65536)
            except ConnectionRefusedError as exc:
                errors.append(exc)
            except OSError:
                return  # the socket was closed: we are done
            else:
                stdout.write(reply)
                stdout.flush()
            with state:
                received += 1
                state.notify_all()

    threading.Thread(target=listen, name="enlace-connect-udp", daemon=True).start()
    try:
        for line in iter(lambda: stdin.readline(max_datagram + 1), b""):
            if len(line) > max_datagram:
                print(
                    f"enlace: a line of more than {max_datagram} bytes does not fit in one "
                    f"datagram (limit {max_datagram}); nothing more sent",
                    file=sys.stderr,
                )
                return 1
            sock.send(line)
            with state:
                sent += 1
                last_send = time.monotonic()
        with state:
            while received < sent and not errors:
                remaining = last_send + wait - time.monotonic()
                if remaining <= 0 or not state.wait(remaining):
                    break
        if errors:
            raise ConnectionRefused(
                f"cannot send to {format_address(host, port)}: no UDP service there "
                "(port unreachable)"
            )
        if received < sent:
            print(
                f"enlace: {sent - received} of {sent} datagrams got no reply within {wait:g} s",
                file=sys.stderr,
            )
        return 0
    finally:
        with contextlib.suppress(OSError):
            sock.close()
