"""The exceptions enlace raises, all rooted at :class:`EnlaceError`.

The tree::

    EnlaceError                      anything enlace raises on purpose
    ├── ProtocolError                bytes on the wire broke the protocol's rules
    │   ├── RemoteProtocolError      ... the peer's bytes (we were decoding)
    │   │   ├── FrameTooLarge        a length header announced more than the limit
    │   │   │   └── LineTooLong      a delimited line grew past the limit
    │   │   └── IncompleteFrame      the stream ended in the middle of a frame
    │   └── LocalProtocolError       ... what we were asked to send (we were encoding)
    ├── RequestError                 the server answered a request with an error reply
    └── NetworkError                 the operating system said no (an OSError, translated)
        ├── AddressInUse             cannot listen: the port is taken
        ├── AddressError             cannot resolve or assign the address
        ├── ConnectionRefused        nothing listens there
        ├── ConnectionClosed         the peer went away while we needed it
        ├── Timeout                  a ``*_timeout`` ran out
        └── TLSError                 a certificate could not be loaded or a handshake failed

Following h11, the two protocol error kinds say whose fault it is: a
:class:`RemoteProtocolError` is answered with an error reply and usually a
close, a :class:`LocalProtocolError` is a bug or bad input on our side.

Errors a service raises live beside it and join the tree at ``EnlaceError``:
:class:`~enlace.services.commands.CommandError` (a command's coded error reply),
:class:`~enlace.protocol.nicknames.NickError` (a nickname the chat refuses),
:class:`~enlace.services.store.StoreError` (the chat's history could not be kept or read) and
:class:`~enlace.services.hub.HubError` (the chat's hub cannot start).

Every class carries a stable machine-readable ``code`` (``frame_too_large``,
``connection_refused`` ...): the message server sends it on the wire, the
command line prints it, and tests match on it instead of on English text.

:func:`translate_oserror` is the one place where an :class:`OSError` becomes an
:class:`EnlaceError`; callers write ``raise translate_oserror(exc, ...) from exc``.
"""

from __future__ import annotations

import errno
import socket

from enlace.addresses import format_address

__all__ = [
    "AddressError",
    "AddressInUse",
    "ConnectionClosed",
    "ConnectionRefused",
    "EnlaceError",
    "FrameTooLarge",
    "IncompleteFrame",
    "LineTooLong",
    "LocalProtocolError",
    "NetworkError",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestError",
    "TLSError",
    "Timeout",
    "translate_oserror",
]


class EnlaceError(Exception):
    """Root of every error enlace raises on purpose."""

    code: str = "error"


class ProtocolError(EnlaceError):
    """Bytes on the wire broke the rules of the protocol in use."""

    code = "protocol_error"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""

    code = "remote_protocol_error"


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot carry."""

    code = "local_protocol_error"


class FrameTooLarge(RemoteProtocolError):
    """A frame announced (or grew to) more bytes than the limit allows.

    Raised as soon as the size is known to be too large, before the payload is
    buffered, so a hostile header cannot make the receiver allocate memory.
    """

    code = "frame_too_large"

    def __init__(self, message: str, *, size: int | None, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class LineTooLong(FrameTooLarge):
    """A delimited line grew past the limit without its delimiter."""

    code = "line_too_long"


class IncompleteFrame(RemoteProtocolError):
    """The stream ended in the middle of a frame."""

    code = "incomplete_frame"

    def __init__(self, message: str, *, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


class RequestError(EnlaceError):
    """The server answered a request with an error; ``code`` is the server's code.

    ``code`` is an instance attribute here: ``unknown_command``, ``bad_arguments``
    and the others of docs/protocol.md, or a code of the server's own commands.
    """

    code = "request_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NetworkError(EnlaceError):
    """The operating system refused an operation; ``__cause__`` holds the OSError."""

    code = "network_error"


class AddressInUse(NetworkError):
    """Cannot listen: another process holds the address and port."""

    code = "address_in_use"


class AddressError(NetworkError):
    """The host cannot be resolved, or the address cannot be used here."""

    code = "bad_address"


class ConnectionRefused(NetworkError):
    """Nothing listens at the address (or a firewall said so)."""

    code = "connection_refused"


class ConnectionClosed(NetworkError):
    """The peer closed or reset the connection while we still needed it."""

    code = "connection_closed"


class Timeout(NetworkError):
    """A timeout ran out before the operation finished."""

    code = "timeout"


class TLSError(NetworkError):
    """TLS could not start: a certificate or key would not load, or a handshake failed.

    The message says which, in one line: an untrusted or expired certificate, a
    name that does not match, or a peer that does not speak TLS at all.
    """

    code = "tls_error"


_BY_ERRNO: dict[int, type[NetworkError]] = {
    errno.EADDRINUSE: AddressInUse,
    errno.EADDRNOTAVAIL: AddressError,
    errno.EAFNOSUPPORT: AddressError,
    errno.EACCES: AddressError,
    errno.ECONNREFUSED: ConnectionRefused,
    errno.ECONNRESET: ConnectionClosed,
    errno.ECONNABORTED: ConnectionClosed,
    errno.EPIPE: ConnectionClosed,
    errno.ENOTCONN: ConnectionClosed,
    errno.ETIMEDOUT: Timeout,
    errno.EHOSTUNREACH: ConnectionRefused,
    errno.ENETUNREACH: ConnectionRefused,
}


def translate_oserror(exc: OSError, *, action: str, host: str, port: int) -> NetworkError:
    """Turn an :class:`OSError` into the matching :class:`NetworkError`.

    ``action`` completes the sentence "cannot ...", for example ``"listen on"``
    or ``"connect to"``, so the message reads
    ``cannot connect to 127.0.0.1:8000: connection refused``.
    """
    where = format_address(host, port)
    if isinstance(exc, socket.gaierror):
        reason = exc.strerror or str(exc)
        return AddressError(f"cannot {action} {where}: cannot resolve {host!r} ({reason})")
    if isinstance(exc, TimeoutError):
        return Timeout(f"cannot {action} {where}: timed out")
    kind = _BY_ERRNO.get(exc.errno or 0, NetworkError)
    reason = (exc.strerror or str(exc)).lower()
    return kind(f"cannot {action} {where}: {reason}")
