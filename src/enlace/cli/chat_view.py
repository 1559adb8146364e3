"""How ``enlace chat`` shows the conversation: a stable colour per nick, one line per event.

Pure formatting, no I/O: :func:`event_line` turns an event into a :class:`Line`
(its text, its role for styling), and control characters from other people are
made harmless before anything reaches the terminal.
"""

from __future__ import annotations

import unicodedata
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Any

from enlace.protocol.envelope import render_event

__all__ = ["Line", "Outcome", "event_line", "harmless", "hex_colour", "nick_colour"]

# Nick colours: xterm 256-colour indices from the 6x6x6 cube, mid-bright so they read
# on dark and light backgrounds alike, and no two alike. The cube's exact RGB values
# (see _hex) are also what prompt_toolkit maps back to the same index in the status bar.
_PALETTE = (167, 172, 142, 71, 37, 33, 99, 170, 209, 107, 74, 176)
_CUBE_LEVELS = (0, 95, 135, 175, 215, 255)
_NICK_ROLES = ("nick", "me")


def nick_colour(nick: str) -> int:
    """The xterm 256-colour index for ``nick``: derived from the nick alone, so stable.

    CRC-32 rather than :func:`hash`, whose value changes with every process.
    """
    return _PALETTE[zlib.crc32(nick.encode("utf-8", "replace")) % len(_PALETTE)]


def hex_colour(index: int) -> str:
    """``#rrggbb`` of a colour of the xterm 256-colour cube (indices 16-231)."""
    cube = index - 16
    red, green, blue = cube // 36, cube // 6 % 6, cube % 6
    return "#" + "".join(f"{_CUBE_LEVELS[level]:02x}" for level in (red, green, blue))


def harmless(text: str) -> str:
    """``text`` safe to print: no control character reaches the terminal.

    Anyone in the room chooses what others print, and an escape sequence in a
    message could clear the screen or forge lines. Line breaks stay, indented,
    so a multi-line message still reads as one message; tabs stay.
    """
    out = []
    for char in text:
        if char == "\n":
            out.append("\n  ")
        elif char == "\t" or unicodedata.category(char) != "Cc":
            out.append(char)
        else:
            out.append("\ufffd")
    return "".join(out)


@dataclass(frozen=True)
class Line:
    """One line to show: ``(role, text)`` segments, and whether it is the client's own news.

    Roles: ``""`` (plain), ``"nick"`` and ``"me"`` (the text is a nick, coloured
    by :func:`nick_colour`; ``me`` also bold), ``"dim"``, ``"private"``,
    ``"error"`` and ``"status"``. ``status`` lines are about the connection,
    not the conversation (plain mode prints them on standard error).
    """

    segments: tuple[tuple[str, str], ...]
    status: bool = False

    @classmethod
    def of(cls, role: str, text: str, *, status: bool = False) -> Line:
        """A line of one segment."""
        return cls(((role, text),), status=status)

    def plain(self) -> str:
        """The line as text, without colours."""
        return "".join(harmless(text) for _, text in self.segments)

    def ansi(self, *, colour: bool = True) -> str:
        """The line with SGR escape sequences; ``colour=False`` keeps only bold and dim."""
        parts = []
        for role, text in self.segments:
            sgr = _sgr(role, text, colour=colour)
            parts.append(f"\x1b[{sgr}m{harmless(text)}\x1b[0m" if sgr else harmless(text))
        return "".join(parts)


def _sgr(role: str, text: str, *, colour: bool) -> str:
    if role in _NICK_ROLES:
        bold = "1" if role == "me" else ""
        tint = f"38;5;{nick_colour(text)}" if colour else ""
        return ";".join(code for code in (bold, tint) if code)
    if role == "dim":
        return "2"
    if role == "private":
        return "1;35" if colour else "1"
    if role == "error":
        return "31" if colour else "1"
    if role == "status":
        return "36" if colour else "2"
    return ""


def event_line(event: dict[str, Any], me: str) -> Line:
    """How the chat shows ``event`` to the user called ``me``.

    ``[room] nick: text`` for a message (prefixed ``(earlier)`` when replayed),
    ``[private] from -> to: text`` for a private message, ``* text`` for
    joins, leaves, nick changes and notices, ``ERR code: text`` for an error
    the server raised outside any request, and the server's text form for
    anything else.
    """
    kind = event.get("event")

    def who(nick: Any) -> tuple[str, str]:
        name = str(nick)
        return ("me" if name == me else "nick", name)

    if kind == "message" and "room" in event:
        earlier = (("dim", "(earlier) "),) if event.get("replay") else ()
        return Line(
            (
                *earlier,
                ("", f"[{event['room']}] "),
                who(event.get("from", "?")),
                ("", f": {event.get('text', '')}"),
            )
        )
    if kind == "private":
        return Line(
            (
                ("private", "[private] "),
                who(event.get("from", "?")),
                ("", " -> "),
                who(event.get("to", "?")),
                ("", f": {event.get('text', '')}"),
            )
        )
    if kind == "error":
        return Line.of("error", f"ERR {event.get('code', 'error')}: {event.get('text', '')}")
    if kind == "text":
        return Line.of("", str(event.get("text", "")))
    return Line.of("dim", render_event(event))


class Outcome(Enum):
    """What became of a line the user typed (:meth:`ChatClient.submit`)."""

    SENT = "sent"
    IGNORED = "ignored"
    OFFLINE = "offline"
    QUIT = "quit"
