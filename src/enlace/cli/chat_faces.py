"""The two faces of ``enlace chat``: the terminal one (prompt_toolkit) and the plain one.

The terminal face keeps a status bar with the room and its members just above
the line being typed, and prints the conversation above both, so an incoming
message never garbles what the user is typing. The plain face, for a pipe or a
script, sends each input line and prints the conversation as text lines.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from enlace.cli.chat_view import Line, Outcome, hex_colour, nick_colour

if TYPE_CHECKING:
    from prompt_toolkit.formatted_text import StyleAndTextTuples

    from enlace.cli.chat_client import ChatClient

__all__ = ["run_plain", "run_terminal"]

# -- the terminal face ---------------------------------------------------------------------


def _fit_members(
    members: list[str], me: str, width: int, measure: Callable[[str], int]
) -> StyleAndTextTuples:
    """The member list as status bar fragments, cut to ``width`` columns with ``+N more``."""
    fragments: StyleAndTextTuples = []
    used = 0
    for index, name in enumerate(members):
        separator = ", " if index else ""
        rest = len(members) - index - 1
        tail = f" +{rest} more" if rest else ""
        if used + measure(separator + name) + measure(tail) > width and index:
            fragments.append(("", f" +{len(members) - index} more"))
            break
        style = f"fg:{hex_colour(nick_colour(name))}" + (" bold" if name == me else "")
        fragments += [("", separator), (style, name)]
        used += measure(separator + name)
    return fragments


def _bar(
    fragments: StyleAndTextTuples, width: int, measure: Callable[[str], int]
) -> StyleAndTextTuples:
    """One line of the status bar: ``fragments`` on the bar's background, ``width`` wide.

    Longer text is cut with ``…``: a wrapped bar line would push the prompt down.
    """
    line: StyleAndTextTuples = []
    used = 0
    for style, text, *_ in fragments:
        if used + measure(text) > width:
            kept = ""
            for char in text:
                if used + measure(kept + char) > width - 1:
                    break
                kept += char
            line += [(f"class:bar {style}", kept), ("class:bar", "…")]
            used += measure(kept) + 1
            break
        line.append((f"class:bar {style}", text))
        used += measure(text)
    line.append(("class:bar", " " * max(width - used, 0)))
    return line


def run_terminal(chat: ChatClient) -> int:
    # Imported here: prompt_toolkit takes a while to import, and plain mode needs none of it.
    from prompt_toolkit import PromptSession  # noqa: PLC0415
    from prompt_toolkit.application import get_app  # noqa: PLC0415
    from prompt_toolkit.history import InMemoryHistory  # noqa: PLC0415
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent  # noqa: PLC0415
    from prompt_toolkit.patch_stdout import patch_stdout  # noqa: PLC0415
    from prompt_toolkit.styles import Style  # noqa: PLC0415
    from prompt_toolkit.utils import get_cwidth  # noqa: PLC0415

    colour = not os.environ.get("NO_COLOR")  # https://no-color.org

    def prompt() -> StyleAndTextTuples:
        # The status bar is part of the prompt, just above the line being typed, rather
        # than a bottom toolbar: prompt_toolkit shows a bottom toolbar only in terminals
        # that answer its cursor-position request, and the room must always be in view.
        nick, room, members, status = chat.snapshot()
        width = max(get_app().output.get_size().columns, 20)
        me = f"fg:{hex_colour(nick_colour(nick))} bold"
        state = "class:ok" if status == "connected" else "class:trouble"
        head = f" {len(members)} in #{room}: "
        first: StyleAndTextTuples = [
            ("", f" {chat.address}  "),
            (me, nick),
            ("", f" in #{room}  "),
            (state, status),
        ]
        second: StyleAndTextTuples = [
            ("", head),
            *_fit_members(members, nick, width - get_cwidth(head) - 1, get_cwidth),
        ]
        return [
            *_bar(first, width, get_cwidth),
            ("", "\n"),
            *_bar(second, width, get_cwidth),
            ("", "\n"),
            (me, nick),
            ("", "> "),
        ]

    keys = KeyBindings()

    @keys.add("c-c")
    def _clear_or_leave(event: KeyPressEvent) -> None:
        buffer = event.app.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=EOFError)

    # Chat lines are private conversation: recalled with the arrow keys during the
    # session, never written to disk (unlike `enlace shell`'s command history).
    session: PromptSession[str] = PromptSession(
        history=InMemoryHistory(),
        key_bindings=keys,
        # The accepted line is erased: chat text comes back as its own message, and
        # commands are echoed below, so the transcript shows each thing once.
        erase_when_done=True,
        style=Style.from_dict(
            {
                "bar": "bg:#303030 #d0d0d0",
                "ok": "fg:ansigreen",
                "trouble": "fg:ansiyellow bold",
            }
        ),
    )

    def changed() -> None:
        session.app.invalidate()  # thread-safe; a no-op while no prompt runs

    with patch_stdout(raw=True):
        chat.attach(lambda line: print(line.ansi(colour=colour)), changed)
        chat.note("Ctrl-D leaves; /help lists the commands")
        pending = ""
        try:
            while True:
                try:
                    text = session.prompt(prompt, default=pending)
                except EOFError:
                    break
                pending = ""
                if text.startswith("/") and not text.startswith("//"):
                    chat.show(Line.of("dim", f"> {text}"))
                outcome = chat.submit(text)
                if outcome is Outcome.QUIT:
                    break
                if outcome is Outcome.OFFLINE:
                    chat.note("not connected: your line is back in the prompt; Enter sends it")
                    pending = text
        finally:
            chat.close()
    return 0


# -- the plain face --------------------------------------------------------------------------


def run_plain(chat: ChatClient, lines: Iterable[str]) -> int:
    """Each input line sent as typed; the conversation on stdout, the client's news on stderr."""
    lock = threading.Lock()

    def show(line: Line) -> None:
        with lock:
            print(line.plain(), file=sys.stderr if line.status else sys.stdout, flush=True)

    chat.attach(show)
    try:
        for raw in lines:
            text = raw.rstrip("\r\n")
            outcome = chat.submit(text)
            while outcome is Outcome.OFFLINE:
                # A script's lines wait for the reconnection rather than being dropped.
                while not chat.wait_connected(0.5):
                    pass
                outcome = chat.submit(text)
            if outcome is Outcome.QUIT:
                break
    finally:
        chat.close()
    return 0
