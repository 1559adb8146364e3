"""Text commands over frames, as enlace's message server answers them; shared by the peers.

The peers started with ``--commands`` frame their replies themselves (each in its library's
way) and call :func:`respond` for what to answer.  The wire protocol is the message server's for
framed text clients: a frame is a 4-byte big-endian length, then the payload (at most 1 MiB; a
larger frame gets :func:`frame_too_large` and a close); an empty payload is a keep-alive with no
reply; any other payload is decoded as UTF-8, strictly, and gets exactly one reply frame.
``/name rest`` runs the command ``name`` (case-insensitive) with ``rest`` stripped of surrounding
spaces; anything else is chat, which this server does not have.  Replies and errors are the
message server's texts (``ERR code: message``): for these commands a client gets the same bytes
from the peers as from enlace (only ``/help`` lists fewer commands).  JSON requests, line
clients and the rest of the message server are left out.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["COMMANDS", "MAX_FRAME", "frame_too_large", "respond"]

MAX_FRAME = 1 << 20  # 1 MiB, the message server's default limit (the peers check it)

NO_CHAT = b"ERR no_chat: this server has no chat rooms; commands start with / (try /help)"
NO_NAME = b"ERR bad_request: a command needs a name right after '/' (try /help)"


def _echo(rest: str) -> str:
    """Send the text back."""
    return rest


def _upper(rest: str) -> str:
    """Send the text back in capitals."""
    return rest.upper()


def _ping(rest: str) -> str:
    """Answer pong (to check the connection)."""
    return "ERR bad_arguments: /ping takes no arguments" if rest else "pong"


def _help(rest: str) -> str:
    """List the commands."""
    return "\n".join(f"/{name:<6} {function.__doc__}" for name, function in COMMANDS.items())


#: Command name -> function of the rest of the line, returning the reply text.
COMMANDS: dict[str, Callable[[str], str]] = {
    "help": _help,
    "echo": _echo,
    "upper": _upper,
    "ping": _ping,
}


def respond(payload: bytes) -> bytes | None:
    """The reply payload to one request payload, or None for a keep-alive (empty payload)."""
    if not payload:
        return None
    try:
        text = payload.decode("utf-8")  # strict: invalid UTF-8 is answered with an error
    except UnicodeDecodeError as exc:
        return f"ERR invalid_utf8: payload is not valid UTF-8 (byte {exc.start})".encode()
    if text[:1] != "/":
        return NO_CHAT
    name, _, rest = text[1:].partition(" ")
    name = name.lower()
    command = COMMANDS.get(name)
    if command is None:
        if not name:
            return NO_NAME
        shown = name if len(name) <= 40 else name[:40] + "…"
        return f"ERR unknown_command: unknown command /{shown} (try /help)".encode()
    return command(rest.strip()).encode()


def frame_too_large(length: int) -> bytes:
    """The reply payload to a frame header announcing more than MAX_FRAME bytes (then: close)."""
    message = f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit"
    return f"ERR frame_too_large: {message}".encode()
