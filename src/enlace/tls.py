"""TLS for every TCP server and client: contexts, and TLS over a plain socket.

:func:`server_context` and :func:`client_context` build the
:class:`ssl.SSLContext` objects every part of enlace uses (TLS 1.2 at least,
certificates and names verified by clients). The asyncio runtime hands them to
its event loop; the thread runtime cannot use :class:`ssl.SSLSocket`, because
its senders use ``MSG_DONTWAIT`` (which an ``SSLSocket`` rejects) and a
connection is read by one thread while others write to it, which OpenSSL does
not allow on one ``SSL`` object. So :class:`TLSSocket` runs TLS as sans-I/O
(:class:`ssl.SSLObject` between two :class:`ssl.MemoryBIO`) over the raw
socket, under one lock, and offers the few socket methods the runtime uses.

A plain client on a TLS port is told so in clear text: a TLS client's first
byte is always ``0x16`` (a handshake record), anything else gets
:func:`tls_required_answer` and a close.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import cast

from enlace.exceptions import ConnectionClosed, Timeout, TLSError
from enlace.limits import LINGER_BYTES, LINGER_TIMEOUT, READ_SIZE, TLS_HANDSHAKE_TIMEOUT
from enlace.sockets import discard_input

_Bytes = bytes | bytearray | memoryview

__all__ = [
    "TLSSocket",
    "client_context",
    "client_handshake",
    "handshake_failure",
    "handshake_failure_reason",
    "is_tls_hello",
    "resolve_context",
    "server_context",
    "server_handshake",
    "tls_required_answer",
]

_HANDSHAKE_RECORD = 0x16
_DONTWAIT = int(socket.MSG_DONTWAIT)  # a plain int: the flag enum converts on every call
# Plaintext encrypted per send() of the thread runtime (sixteen 16 KiB records):
# as much as the flusher offers at once, so a 64 KiB reply is one send() and one
# system call, and a bound on the ciphertext a send may leave waiting.
_SEND_CHUNK = 256 * 1024
# The first raw receive buffer of a connection: two full TLS records.
_RAW_READ_SIZE = 32 * 1024


def server_context(cert: str | Path, key: str | Path | None = None) -> ssl.SSLContext:
    """A server context for the PEM certificate chain ``cert`` and its private ``key``.

    Raises :class:`TLSError` naming the file when either cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert, key):
        if path is not None and not Path(path).is_file():
            raise TLSError(f"cannot load TLS certificate: {path}: no such file")
    try:
        context.load_cert_chain(str(cert), None if key is None else str(key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TLSError(
            f"cannot load TLS certificate {cert} with key {key}: {reason} "
            "(both must be PEM, and the key must match the certificate)"
        ) from exc
    return context


def client_context(ca: str | Path | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca`` (a PEM file), or the system's trust store.

    The server's certificate and name are always verified.
    """
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise TLSError(f"cannot load CA file {ca}: {reason}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def resolve_context(tls: ssl.SSLContext | bool | None) -> ssl.SSLContext | None:
    """A client's ``ssl=`` argument: a context, True (the system's trust store), or off."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    return client_context() if tls else None


def client_handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    *,
    server_hostname: str,
    timeout: float | None,
    where: str,
) -> TLSSocket:
    """The client side of a handshake on a connected blocking ``sock``, name verified.

    Raises :class:`TLSError` with one clear line (and closes ``sock``).
    """
    tls = TLSSocket(sock, context, server_side=False, server_hostname=server_hostname)
    try:
        tls.handshake(timeout)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise handshake_failure(exc, where) from exc
    return tls


def is_tls_hello(first: bytes) -> bool:
    """Whether a client's first byte starts a TLS handshake."""
    return bool(first) and first[0] == _HANDSHAKE_RECORD


def tls_required_answer(first: bytes) -> bytes:
    """What a plain client on a TLS port is told: a frame for a framed client, else a line."""
    text = b"ERR tls_required: this port speaks TLS (connect with --tls)"
    if first[:1] == b"\x00":
        return len(text).to_bytes(4, "big") + text
    return text + b"\r\n"


def handshake_failure(exc: BaseException, where: str) -> TLSError:
    """The one-line error a client shows when its handshake with ``where`` fails."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(f"TLS to {where}: certificate not trusted: {exc.verify_message}")
    if isinstance(exc, TimeoutError | Timeout):
        return TLSError(f"TLS to {where}: no handshake within the timeout (plain TCP port?)")
    if isinstance(exc, ssl.SSLEOFError | ConnectionError | ConnectionClosed):
        return TLSError(f"{where} closed the connection during the TLS handshake (plain TCP?)")
    reason = str(getattr(exc, "reason", None) or exc)
    if isinstance(exc, ssl.SSLError) and "ALERT" not in reason:
        # The server's bytes were not TLS records (an echo, a greeting, an error line);
        # a TLS server that dislikes us says so with an alert instead.
        return TLSError(f"{where} does not speak TLS (plain TCP?)")
    return TLSError(f"TLS to {where} failed: {reason}")


def handshake_failure_reason(exc: OSError) -> str:
    """A short reason for the log line of a failed handshake (``ssl.SSLError`` included)."""
    reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
    return str(reason) if reason else f"connection lost ({type(exc).__name__})"


def server_handshake(
    sock: socket.socket, context: ssl.SSLContext, *, timeout: float | None
) -> TLSSocket:
    """The server side of a handshake on an accepted blocking ``sock``, within ``timeout``.

    A client whose first byte is not a TLS handshake gets
    :func:`tls_required_answer` in clear text. Raises :class:`TLSError` with a
    short reason for the log line (the caller closes ``sock``).
    """
    try:
        sock.settimeout(timeout)
        first = sock.recv(1, socket.MSG_PEEK)
        if not first:
            raise TLSError("closed before the TLS handshake")
        if not is_tls_hello(first):
            _tell_plain_client(sock, first)
            raise TLSError("a plain (not TLS) client")
        tls = TLSSocket(sock, context, server_side=True)
        tls.handshake(timeout)
    except (TimeoutError, BlockingIOError):
        raise TLSError("timed out") from None
    except OSError as exc:  # ssl.SSLError included
        raise TLSError(handshake_failure_reason(exc)) from None
    return tls


def _tell_plain_client(sock: socket.socket, first: bytes) -> None:
    # Read what the client sent before answering, or closing with unread data
    # would reset the connection and destroy our answer in its receive buffer.
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.recv(READ_SIZE)
        sock.settimeout(LINGER_TIMEOUT)
        sock.sendall(tls_required_answer(first))
        sock.shutdown(socket.SHUT_WR)
        discard_input(sock, timeout=LINGER_TIMEOUT, max_bytes=LINGER_BYTES)


class TLSSocket:
    """TLS over a connected socket, shaped like the socket the thread runtime uses.

    ``recv_into``/``recv`` block on the raw socket (its timeouts apply);
    :meth:`send` never blocks and follows ``send(MSG_DONTWAIT)``'s contract
    (bytes taken, or :class:`BlockingIOError`), so :class:`enlace.sync.outbound.Outbound`
    works unchanged; :meth:`sendall` blocks. Any thread may send while one
    thread reads. Ciphertext leaves in the order it was made, whichever thread
    made it (TLS 1.3 tickets and key updates come from reads).
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.raw = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._lock = threading.Lock()  # the SSLObject and its two BIOs
        # Sending, so records leave in the order they left the outgoing BIO; and _out,
        # which a send passes to the kernel (a bytearray being sent cannot grow).
        self._wire = threading.Lock()
        self._out = bytearray()  # ciphertext taken from the BIO, not yet sent
        # Plaintext at the head of the caller's next send() that is already in _out:
        # send() reported "would block" for it, and the caller will offer it again.
        self._owed = 0
        # Whether the SSLObject may have plaintext to give without another recv():
        # false once a read asked for more and nothing came since. Reader thread only.
        self._readable = True
        # Raw reads go into one buffer (recv(n) would allocate n bytes per call),
        # grown to READ_SIZE when a read fills it, as the thread runtime's own.
        self._raw_view = memoryview(bytearray(_RAW_READ_SIZE))

    # -- handshake ---------------------------------------------------------------

    def handshake(self, timeout: float | None = TLS_HANDSHAKE_TIMEOUT) -> None:
        """Run the handshake, blocking for at most ``timeout`` seconds.

        Raises :class:`ssl.SSLError`, :class:`TimeoutError` or :class:`OSError`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    with self._lock:
                        self._obj.do_handshake()
                        self._out += self._outgoing.read()
                    break
                except ssl.SSLWantReadError:
                    with self._lock:
                        self._out += self._outgoing.read()
                    self._send_out(deadline)
                    self._feed(deadline)
            self._send_out(deadline)
        finally:
            self.raw.settimeout(None)

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("TLS handshake timed out")
        return remaining

    def _feed(self, deadline: float | None) -> None:
        self.raw.settimeout(self._remaining(deadline))
        data = self.raw.recv(READ_SIZE)
        if not data:
            raise ConnectionResetError("closed during the TLS handshake")
        with self._lock:
            self._incoming.write(data)

    def _send_out(self, deadline: float | None) -> None:
        with self._wire:
            with self._lock:
                data, self._out = bytes(self._out), bytearray()
            if data:
                self.raw.settimeout(self._remaining(deadline))
                self.raw.sendall(data)

    @property
    def version(self) -> str | None:
        """The TLS version agreed on, e.g. ``TLSv1.3``."""
        return self._obj.version()

    def getpeercert(self) -> dict[str, object] | None:
        """The peer's certificate, as :meth:`ssl.SSLSocket.getpeercert` gives it."""
        return self._obj.getpeercert()  # type: ignore[return-value]

    # -- reading -----------------------------------------------------------------

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0, flags: int = 0) -> int:
        """Read decrypted bytes into ``buffer``; 0 at the end of the stream.

        Decrypts every whole record already received, up to ``nbytes``, so that
        a bulk sender's 16 KiB records reach the caller as one chunk.
        """
        view = memoryview(buffer)
        size = nbytes or len(view)
        while True:
            if self._readable:
                count = self._decrypt(view, size)
                if count is not None:
                    return count
            raw = self._raw_view
            received = self.raw.recv_into(raw)
            if not received:
                return 0  # our protocols frame their own messages, so a bare FIN is an end
            with self._lock:
                self._incoming.write(raw[:received])
            self._readable = True
            if received == len(raw):
                # A bulk sender: read more at once, and take what is already waiting
                # now, so that its records decrypt as one chunk. An error or the end
                # shows again on the next blocking read.
                if len(raw) < READ_SIZE:
                    self._raw_view = raw = memoryview(bytearray(READ_SIZE))
                with contextlib.suppress(OSError):
                    received = self.raw.recv_into(raw, 0, _DONTWAIT)
                    with self._lock:
                        self._incoming.write(raw[:received])

    def _decrypt(self, view: memoryview, size: int) -> int | None:
        """Plaintext into ``view[:size]``: its length, 0 at the end, None if a record is due."""
        total = 0
        with self._lock:
            obj, incoming = self._obj, self._incoming
            while total < size:
                try:
                    count = cast(int, obj.read(size - total, view[total:]))
                except ssl.SSLWantReadError:
                    self._readable = False
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    count = 0  # close_notify, or a close without it: the end either way
                if not count:
                    if not total:
                        return 0
                    break  # the data first; the end again on the next call
                total += count
                if not incoming.pending and not obj.pending():
                    # Another read would only ask for more: skip that call (and its
                    # release of the GIL), and go straight to the socket next time.
                    self._readable = False
                    break
            made = self._outgoing.pending
        if made:
            self._flush_quietly()
        return total or None

    def recv(self, size: int, flags: int = 0) -> bytes:
        """Read up to ``size`` decrypted bytes; ``b""`` at the end of the stream."""
        buffer = bytearray(size)
        count = self.recv_into(buffer)
        return bytes(buffer[:count])

    # -- writing -----------------------------------------------------------------

    def send(self, data: _Bytes, flags: int = 0) -> int:
        """Encrypt and send without blocking; return the plaintext bytes taken.

        Raises :class:`BlockingIOError` when the socket cannot take more now.
        Like a socket, what was not taken must be offered again, first.
        """
        with self._wire:
            if self._out:
                self._send_nowait()
                if self._out:
                    raise BlockingIOError("TLS output is waiting for the socket")
            if self._owed:
                taken, self._owed = self._owed, 0
                return taken
            chunk = memoryview(data)[:_SEND_CHUNK]
            with self._lock:
                self._obj.write(chunk)
                out = self._outgoing.read()
            # Nothing is waiting (the common case): the records go straight out,
            # and only what the socket does not take is kept.
            try:
                sent = self.raw.send(out, _DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent < len(out):
                self._out += memoryview(out)[sent:]
                self._owed = len(chunk)
                raise BlockingIOError("TLS output is waiting for the socket")
            return len(chunk)

    def sendall(self, data: _Bytes, flags: int = 0) -> None:
        """Encrypt and send everything, blocking as a socket's ``sendall`` does."""
        with self._wire:
            with self._lock:
                self._obj.write(data)
                out, self._out = bytes(self._out) + self._outgoing.read(), bytearray()
            self.raw.sendall(out)

    def _send_nowait(self) -> None:
        # Called with _wire held.
        while self._out:
            try:
                sent = self.raw.send(self._out, _DONTWAIT)
            except BlockingIOError:
                return
            del self._out[:sent]

    def _flush_quietly(self) -> None:
        # Output made by a read (a renegotiation, a key update): sent now if the
        # socket takes it, else by the next send() or at close.
        with self._wire, contextlib.suppress(OSError):
            with self._lock:
                self._out += self._outgoing.read()
            self._send_nowait()

    # -- the rest of the socket interface ----------------------------------------

    def fileno(self) -> int:
        return self.raw.fileno()

    def setsockopt(self, level: int, option: int, value: int | _Bytes) -> None:
        self.raw.setsockopt(level, option, value)

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def getpeername(self) -> object:
        return self.raw.getpeername()

    def shutdown(self, how: int) -> None:
        """Send close_notify (and what is still waiting) before shutting ``how`` down."""
        if how == socket.SHUT_WR:  # a graceful close; SHUT_RDWR means giving up
            self._close_notify()
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()

    def _close_notify(self) -> None:
        # Best effort and never blocking for long: a peer that stopped reading
        # does not get to hold the closing thread.
        if not self._wire.acquire(timeout=1.0):
            return
        try:
            with self._lock:
                with contextlib.suppress(ssl.SSLError, ValueError):
                    self._obj.unwrap()
                self._out += self._outgoing.read()
            self.raw.settimeout(1.0)
            with contextlib.suppress(OSError):
                self.raw.sendall(self._out)
            self._out.clear()
        finally:
            self._wire.release()
