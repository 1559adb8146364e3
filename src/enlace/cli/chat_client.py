"""``enlace chat``: a terminal chat client for ``enlace serve chat``.

``enlace chat HOST:PORT --nick NAME [--room ROOM] [--retry]`` connects with
:class:`enlace.sync.Client` (framed JSON requests with ids, so replies never
mix with pushed events), sets the nick, joins the room, and then:

- **in a terminal**, runs a prompt_toolkit prompt with ``patch_stdout``:
  messages print above the line being typed and never garble it; a
  two-line status bar just above that line shows the server, your nick, the
  room, the connection's state and the room's members (refreshed with
  ``/who`` after every join, leave and nick event in the room). Each nick
  has a colour derived from the nick itself (:func:`nick_colour`), so it is
  the same in every session and on every screen; private messages are
  marked, notices dimmed, replayed history marked ``(earlier)``. Ctrl-D on
  an empty line, Ctrl-C on an empty line, or ``/quit`` leaves; Ctrl-C on a
  non-empty line clears it.
- **without a terminal** (standard input is a pipe), reads lines and prints
  events as text lines, for scripts and tests: the conversation on standard
  output, the client's own news (connected, lost, reconnected) on standard
  error, each prefixed ``--``.

Lines without a leading ``/`` are chat messages (``say``); ``//text`` sends
the text ``/text``; ``/command ...`` lines are sent with
:meth:`~enlace.sync.Client.command`, and their result, or ``ERR code:
message``, is shown.

**Reconnecting.** When the connection ends without the user asking, the
client says so and tries again at once, then after 0.2 s, doubling up to 5 s
between attempts, for ever (until the user leaves); each attempt is bounded by
a 5 s connect timeout and 10 s request timeout. On success it sets the nick
and joins the room again (the ones in use when the connection was lost, so a
``/nick`` or ``/join`` typed meanwhile is kept); replayed messages already
shown are not shown again. If the server still holds the
nick (an old connection it has not noticed is gone), the client takes
``NICK_`` and says so. The prompt keeps running throughout, so a half-typed
line survives; a line sent while disconnected is put back in the prompt.

**Start-up** is stricter: a server that is not there is one clear line and
exit 1, since a wrong address is likelier than a restart in progress;
``--retry`` waits for the server with the same back-off instead (for starting
client and server together). A nick or room the server refuses is one clear
line and exit 1, with or without ``--retry``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from typing import Any

from enlace.addresses import format_address
from enlace.cli.chat_faces import run_plain, run_terminal
from enlace.cli.chat_view import Line, Outcome, event_line, nick_colour
from enlace.exceptions import (
    AddressError,
    ConnectionClosed,
    EnlaceError,
    NetworkError,
    RequestError,
    Timeout,
)
from enlace.limits import MAX_HISTORY
from enlace.protocol.envelope import render_result
from enlace.services.chat import DEFAULT_ROOM
from enlace.sync import Client

__all__ = [
    "CONNECT_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "RECONNECT_FIRST_DELAY",
    "RECONNECT_MAX_DELAY",
    "REQUEST_TIMEOUT",
    "ChatClient",
    "ChatRefused",
    "Line",
    "Outcome",
    "event_line",
    "nick_colour",
    "run_chat",
]

#: Seconds before the second reconnection attempt (the first is immediate); doubles each time.
RECONNECT_FIRST_DELAY = 0.2
#: The longest wait between two reconnection attempts, in seconds.
RECONNECT_MAX_DELAY = 5.0
#: Bound on each connection attempt, in seconds.
CONNECT_TIMEOUT = 5.0
#: Bound on each request (the user's lines, and the set-up after connecting), in seconds.
REQUEST_TIMEOUT = 10.0
#: Seconds between keep-alives, well under the server's 300 s idle timeout: a user
#: who only reads would otherwise be disconnected (and reconnected) every 5 minutes.
KEEPALIVE_INTERVAL = 60.0


# How many messages are remembered to skip their replay after a reconnection: a
# room's history (MAX_HISTORY) with room to spare. A linear search of a deque this
# short costs nothing next to printing a line.
_SEEN = 4 * MAX_HISTORY


class ChatRefused(EnlaceError):
    """The server refused the nick or the room, or is no chat server.

    With the server's error: ``nick 'ana' refused (nick_taken): ana is taken ...``;
    :attr:`reason` is the part after the subject.
    """

    code = "chat_refused"

    def __init__(self, subject: str, error: RequestError | None = None) -> None:
        self.reason = "" if error is None else f"{error.code}: {error.message}"
        super().__init__(f"{subject} ({error.code}): {error.message}" if error else subject)


def _shown_nick(nick: str) -> str:
    # The form the server shows (enlace.protocol.nicknames.validate_nick), so that
    # events naming us can be recognised by plain comparison.
    return unicodedata.normalize("NFC", nick).strip()


def _room_name(room: str) -> str:
    # The server's normalisation of room names (enlace.services.chat._room_name), so
    # that events of the room we asked for are recognised before the server says it.
    return unicodedata.normalize("NFKC", room.strip()).lower().removeprefix("#")


def _is_quit(line: str) -> bool:
    if not line.startswith("/") or line.startswith("//"):
        return False
    return line[1:].partition(" ")[0].lower() == "quit"


class _Link:
    """One connection: its client, whether set-up is over, events held until then."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.ready = False
        self.lost = False
        self.backlog: list[dict[str, Any]] = []


class ChatClient:
    """The chat session behind both faces (terminal and plain): connection, state, reconnection.

    Lines to show go to the sink given to :meth:`attach` (held until then);
    ``changed`` is called whenever the state shown in a status bar changes
    (``nick``, ``room``, ``members``, ``status``). Callbacks come from the
    client's listener thread and from this class's worker thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        nick: str,
        room: str = DEFAULT_ROOM,
        track_members: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.host, self.port = host, port
        #: More arguments of every Client it makes (``ssl``, ``server_hostname``, ``token``).
        self.options = options or {}
        self.address = format_address(host, port)
        self.nick = _shown_nick(nick)
        self.room = _room_name(room)
        #: The room's members, from the latest ``/who``.
        self.members: list[str] = []
        #: ``connected``, or what the reconnection is doing.
        self.status = "connecting"
        self.track_members = track_members
        self._lock = threading.Lock()  # the state above, and _link
        self._wake = threading.Condition(self._lock)  # the worker's to-do flags
        self._link: _Link | None = None
        self._leaving = False
        self._want_reconnect = False
        self._want_members = False
        self._out = threading.RLock()  # keeps lines in order across threads
        self._sink: Callable[[Line], None] | None = None
        self._held: list[Line] = []
        self._changed: Callable[[], None] = lambda: None
        # Messages shown lately, so a reconnection's replay does not show them twice.
        self._seen: deque[tuple[Any, ...]] = deque(maxlen=_SEEN)
        self._worker = threading.Thread(target=self._work, name="enlace-chat", daemon=True)

    # -- the face's side -----------------------------------------------------------

    def start(self, *, retry: bool = False, waiting: Callable[[str], None] | None = None) -> None:
        """Connect, set the nick, join the room; then keep the connection up.

        Raises :class:`ChatRefused` if the server refuses the nick or the room,
        and the :class:`~enlace.exceptions.NetworkError` of the first attempt
        unless ``retry``, in which case it tries again with back-off (telling
        ``waiting`` why, once) until it connects or is interrupted.
        """
        delay = RECONNECT_FIRST_DELAY
        told = False
        while True:
            try:
                self._open(fallback=False)
                break
            except AddressError:
                raise  # a name that does not resolve will not start resolving
            except NetworkError as exc:
                if not retry:
                    raise
                if waiting is not None and not told:
                    waiting(f"{exc}; retrying until it answers (Ctrl-C gives up)")
                    told = True
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
        self._worker.start()

    def attach(
        self, sink: Callable[[Line], None], changed: Callable[[], None] | None = None
    ) -> None:
        """Show lines through ``sink`` from now on, starting with those held so far."""
        with self._out:
            for line in self._held:
                sink(line)
            self._held.clear()
            self._sink = sink
        if changed is not None:
            self._changed = changed

    def note(self, text: str) -> None:
        """Show one of the client's own lines (``-- text``)."""
        self.show(Line.of("status", f"-- {text}", status=True))

    def submit(self, line: str) -> Outcome:
        """Send what the user typed: chat text, or a ``/command``; show its result.

        Returns :attr:`Outcome.OFFLINE` when there is no connection to send it on
        (the caller keeps the line), :attr:`Outcome.QUIT` after ``/quit`` (sent
        if connected, so the server says ``bye``).
        """
        if not line.strip():
            return Outcome.IGNORED
        quitting = _is_quit(line)
        with self._lock:
            link = self._link
            if link is None or link.client is None:
                return Outcome.QUIT if quitting else Outcome.OFFLINE
            client = link.client
            if quitting:
                self._leaving = True  # the server closes after "bye": not a loss
        try:
            result = client.command(line)
        except RequestError as exc:
            self.show(Line.of("error", f"ERR {exc.code}: {exc.message}"))
        except Timeout as exc:
            self.show(Line.of("error", f"ERR {exc.code}: {exc}"))
        except NetworkError:
            # The connection went while sending: on_close has said so, and whether the
            # server got the line is unknown, so the user gets it back to send again.
            return Outcome.QUIT if quitting else Outcome.OFFLINE
        else:
            if result is not None:
                self.show(Line.of("", render_result(result)))
        return Outcome.QUIT if quitting else Outcome.SENT

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected (True) or leaving, or ``timeout`` runs out (False)."""
        with self._wake:
            self._wake.wait_for(lambda: self._leaving or self._link is not None, timeout)
            return self._link is not None and not self._leaving

    def snapshot(self) -> tuple[str, str, list[str], str]:
        """``(nick, room, members, status)`` read together, for a status bar."""
        with self._lock:
            return self.nick, self.room, list(self.members), self.status

    def close(self) -> None:
        """Leave: close the connection and stop reconnecting."""
        with self._wake:
            self._leaving = True
            link, self._link = self._link, None
            self._wake.notify_all()
        if link is not None and link.client is not None:
            link.client.close()
        if self._worker.is_alive():
            # A connection attempt in progress may take up to CONNECT_TIMEOUT; the
            # thread is a daemon, so leaving need not wait that long for it.
            self._worker.join(1.0)

    # -- connecting ------------------------------------------------------------------

    def _open(self, *, fallback: bool) -> None:
        """Connect and set the session up; on success it is the current link.

        ``fallback``: when reconnecting, a nick the server still holds is
        replaced by ``NICK_`` rather than failing.
        """
        link = _Link()
        client = Client(
            self.host,
            self.port,
            connect_timeout=CONNECT_TIMEOUT,
            request_timeout=REQUEST_TIMEOUT,
            on_event=lambda event: self._on_event(link, event),
            on_close=lambda reason: self._on_close(link, reason),
            **self.options,
        )
        link.client = client
        try:
            with self._lock:
                wanted, room = self.nick, self.room
            nick = self._take_nick(client, wanted, fallback=fallback)
            refused = ""
            try:
                self._join(client, room)
            except ChatRefused as exc:
                if not fallback:
                    raise
                # The room cannot be had again (the restarted server has other limits):
                # chatting in the default room beats retrying for ever.
                refused, room = f"cannot rejoin #{room}: {exc.reason}", DEFAULT_ROOM
            if room == DEFAULT_ROOM:
                # Already there since the greeting, so joining replayed nothing; and the
                # greeting's replay came as text (no request had set the JSON form yet).
                with contextlib.suppress(RequestError):
                    client.request("history", MAX_HISTORY)
            # Holding the output lock from the moment the link is current keeps the
            # order: events arriving meanwhile print after the ones held during set-up.
            with self._out:
                backlog = self._make_current(link, nick, room)
                verb = "reconnected" if fallback else "connected"
                self.note(f"{verb} to {self.address} as {nick} in #{room}")
                if nick != wanted:
                    self.note(
                        f"{wanted} is still in use on the server (your old connection?): "
                        f"you are {nick} for now; /nick {wanted} later"
                    )
                if refused:
                    self.note(refused)
                for event in backlog:
                    if self._after_setup(event, nick, room) and not self._repeated(event):
                        self.show(event_line(event, nick))
        except BaseException:
            client.close()
            raise
        self._ask_members()
        self._changed()

    @staticmethod
    def _join(client: Client, room: str) -> None:
        try:
            client.request("join", room)
        except RequestError as exc:
            raise ChatRefused(f"room {room!r} refused", exc) from None

    def _make_current(self, link: _Link, nick: str, room: str) -> list[dict[str, Any]]:
        """Make ``link`` the connection in use; return the events it held during set-up."""
        with self._lock:
            if link.lost or self._leaving:
                raise ConnectionClosed("the connection ended while joining the room")
            self.nick, self.room = nick, room
            self._link, link.ready = link, True
            self.status = "connected"
            backlog, link.backlog = link.backlog, []
        return backlog

    def _take_nick(self, client: Client, nick: str, *, fallback: bool) -> str:
        try:
            client.request("nick", nick)
        except RequestError as exc:
            if exc.code == "unknown_command":
                raise ChatRefused(
                    f"{self.address} has no chat (no /nick command); is it enlace serve chat?"
                ) from None
            if not (fallback and exc.code == "nick_taken"):
                raise ChatRefused(f"nick {nick!r} refused", exc) from None
        else:
            return nick
        spare = f"{nick}_"
        client.request("nick", spare)  # a refusal here fails this attempt; the next may work
        return spare

    @staticmethod
    def _after_setup(event: dict[str, Any], nick: str, room: str) -> bool:
        """Whether an event that came during set-up is worth showing afterwards.

        The server greets every connection as ``guest-N`` in the default room;
        the welcome, that guest's join and rename, and the default room's
        traffic are about a state the user never saw, so they are left out.
        The greeting comes in text form (``text`` events), before any request
        set the JSON form; the default room's history is asked for again.
        """
        kind = event.get("event")
        if kind in ("private", "error"):
            return True
        if event.get("room") != room or kind == "notice":
            return False
        return not (kind == "join" and event.get("nick") == nick) and event.get("new") != nick

    def _repeated(self, event: dict[str, Any]) -> bool:
        """Whether ``event`` is a replay of a message shown lately; remember it if not."""
        if event.get("event") != "message":
            return False
        key = (event.get("room"), event.get("from"), event.get("ts"), event.get("text"))
        with self._lock:
            if event.get("replay") and key in self._seen:
                return True
            self._seen.append(key)
        return False

    def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        attempt = 0
        while True:
            attempt += 1
            with self._lock:
                if self._leaving:
                    return
                self.status = f"reconnecting (attempt {attempt})"
            self._changed()
            try:
                self._open(fallback=True)
            except EnlaceError as exc:
                why = exc.code.replace("_", " ")
            else:
                return
            with self._wake:
                self.status = f"reconnecting: {why} (attempt {attempt})"
            self._changed()
            with self._wake:
                if self._wake.wait_for(lambda: self._leaving, delay):
                    return
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    # -- what the connection reports -------------------------------------------------

    def _on_event(self, link: _Link, event: dict[str, Any]) -> None:
        kind = event.get("event")
        with self._lock:
            if not link.ready:
                link.backlog.append(event)
                return
            if kind == "join" and event.get("nick") == self.nick:
                self.room = str(event.get("room", self.room))  # our /join
            elif kind == "nick" and event.get("old") == self.nick:
                self.nick = str(event.get("new", self.nick))  # our /nick
            me, room = self.nick, self.room
        self._repeated(event)  # remembered, so that a replay after a reconnection skips it
        self.show(event_line(event, me))
        if kind in ("join", "leave", "nick") and event.get("room") == room:
            self._ask_members()
        self._changed()

    def _on_close(self, link: _Link, reason: str) -> None:
        with self._wake:
            link.lost = True
            if link is not self._link or self._leaving:
                return  # a failed set-up (its caller reports it), or the user left
            self._link = None
            self.status = "connection lost"
            self._want_reconnect = True
            self._wake.notify_all()
        # The client adds the server's last text payload to the reason, to explain a
        # refusal; here that is always the greeting of long ago, which explains nothing.
        reason = reason.split(" (it said: ", 1)[0]
        self.note(f"{reason}; reconnecting (Ctrl-D leaves)")
        self._changed()

    # -- the worker: reconnection, member lists, keep-alives -----------------------------

    def _ask_members(self) -> None:
        if not self.track_members:
            return
        with self._wake:
            self._want_members = True
            self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                busy = self._wake.wait_for(
                    lambda: self._leaving or self._want_reconnect or self._want_members,
                    KEEPALIVE_INTERVAL,
                )
                if self._leaving:
                    return
                reconnect, self._want_reconnect = self._want_reconnect, False
                members, self._want_members = self._want_members, False
                link = self._link
            if reconnect:
                self._reconnect()
            elif members:
                self._refresh_members()
            elif not busy and link is not None and link.client is not None:
                # The listener sees a dead connection end, and reports it: ignore errors here.
                with contextlib.suppress(EnlaceError):
                    link.client.send("")  # an empty payload: a keep-alive, never answered

    def _refresh_members(self) -> None:
        with self._lock:
            link, room = self._link, self.room
        if link is None or link.client is None:
            return
        try:
            listing = link.client.request("who", room)
        except RequestError:
            listing = ""  # nobody there (the room went away): no members to show
        except EnlaceError:
            return  # the connection is going; its end is reported elsewhere
        # "/who" answers "room: ana, bob".
        named, _, names = str(listing).partition(": ")
        with self._lock:
            if self._link is not link or self.room != room:
                return  # stale: another refresh follows the change
            self.members = [name for name in names.split(", ") if name] if named == room else []
        self._changed()

    def show(self, line: Line) -> None:
        """Show ``line`` (or hold it until :meth:`attach`), in order with every other line."""
        with self._out:
            if self._sink is None:
                self._held.append(line)
            else:
                self._sink(line)


def run_chat(
    host: str,
    port: int,
    *,
    nick: str,
    room: str,
    retry: bool = False,
    options: dict[str, Any] | None = None,
) -> int:
    """Run ``enlace chat``: the terminal client, or plain mode without a terminal."""
    terminal = sys.stdin.isatty()
    chat = ChatClient(host, port, nick=nick, room=room, track_members=terminal, options=options)

    def waiting(text: str) -> None:
        print(f"enlace: {text}", file=sys.stderr, flush=True)

    try:
        chat.start(retry=retry, waiting=waiting)
    except EnlaceError as exc:
        print(f"enlace: {exc}", file=sys.stderr)
        return 1
    if terminal:
        return run_terminal(chat)
    return run_plain(chat, sys.stdin)
