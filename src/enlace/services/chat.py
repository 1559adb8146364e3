"""The chat: rooms, nicknames, room and private messages, history, on the message server.

:class:`ChatService` is a :class:`~enlace.services.message.MessageService`, so
it runs on either runtime and speaks to framed, JSON and ``nc`` clients at once,
each in its own form: a message is pushed as ``{"event": "message", "room":
"general", "from": "ana", "text": "hola", "ts": ...}`` to JSON clients and as
``[general] ana: hola`` to text clients. The server stamps sender and time.

Everyone starts in ``general`` as ``guest-N``; ``/nick``, ``/join``,
``/leave``, ``/rooms``, ``/who``, ``/msg`` and ``/history`` do the rest. A
room keeps its last ``max_history`` messages and replays them to whoever joins.

Messages are kept by a :class:`~enlace.services.store.HistoryStore`: in memory
by default, or in SQLite (``store=SqliteStore(DIR)``, ``enlace serve chat
--data DIR``), where rooms and their history survive a restart. A room with
kept messages outlives its last member and is listed by ``/rooms``; a room
without any is forgotten when its last member leaves.

Members and nicknames live in this process (one lock, since the thread runtime
calls commands from many threads); spreading them over several processes is
the job of a hub.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from enlace.limits import MAX_CHAT_MESSAGE, MAX_HISTORY, MAX_ROOMS
from enlace.protocol.nicknames import NickError, guest_nick, nick_key, validate_nick
from enlace.protocol.ratelimit import FLOOD_BURST, FLOOD_RATE, FloodGuard, Verdict
from enlace.services.commands import CommandError, Context
from enlace.services.message import NO_REPLY, MessageService, Session
from enlace.services.store import HistoryStore, MemoryStore, StoreError

__all__ = ["DEFAULT_ROOM", "ChatService"]

DEFAULT_ROOM = "general"
_ROOM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}", re.ASCII)


@dataclass
class _Room:
    name: str
    members: dict[int, Session] = field(default_factory=dict)
    #: The store keeps messages of this room, so it outlives its last member.
    kept: bool = False


def _room_name(text: str) -> str:
    name = unicodedata.normalize("NFKC", text.strip()).lower().removeprefix("#")
    if not _ROOM_NAME.fullmatch(name):
        raise CommandError(
            "bad_room", "a room name is 1-32 letters, digits, '-' or '_' (ASCII), e.g. /join python"
        )
    return name


class ChatService(MessageService):
    """A chat server: rooms, nicknames, private messages and history.

    ``store`` keeps the rooms' messages (default: a :class:`MemoryStore` of
    ``max_history`` messages a room, :data:`~enlace.limits.MAX_HISTORY` if not
    given). A given store has its own ``max_history``, so passing both is a
    :class:`ValueError`. Rooms the store already keeps (from an earlier run)
    exist from the start, with nobody in them.
    """

    def __init__(
        self,
        *,
        name: str = "chat",
        max_message: int | None = MAX_CHAT_MESSAGE,
        max_history: int | None = None,
        max_rooms: int | None = MAX_ROOMS,
        flood_burst: int | None = FLOOD_BURST,
        flood_rate: float = FLOOD_RATE,
        store: HistoryStore | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name=name, **options)
        if store is None:
            store = MemoryStore(max_history=MAX_HISTORY if max_history is None else max_history)
        elif max_history is not None:
            raise ValueError("with store=, give max_history to the store instead")
        self.store = store
        self.max_message = max_message
        self.max_rooms = max_rooms
        self.flood_burst = flood_burst  # None: no flood control
        self.flood_rate = flood_rate
        self._state = threading.RLock()
        self._rooms: dict[str, _Room] = {name: _Room(name, kept=True) for name in store.rooms()}
        self._nicks: dict[str, Session] = {}  # nick_key -> session
        #: Names nobody may take (nor a lookalike of): the AI assistant's, for one.
        self.reserved_nicks: set[str] = set()
        self._guests = itertools.count(1)
        for command in (self.nick, self.join, self.leave, self.rooms, self.who, self.msg):
            self.command(command)
        self.command(name="history")(self.history_command)

    @property
    def max_history(self) -> int:
        """Messages a room keeps and replays (the store's bound)."""
        return self.store.max_history

    # -- the message service's hooks ------------------------------------------------

    def on_start(self, session: Session) -> None:
        if self.flood_burst is not None:
            session.data["flood"] = FloodGuard(burst=self.flood_burst, rate=self.flood_rate)
        with self._state:
            # Nobody can choose a guest name, so the next number is always free.
            guest = guest_nick(next(self._guests))
            session.data["nick"] = guest
            self._nicks[nick_key(guest)] = session
        session.push(self._notice(f"welcome, {guest}: /nick NAME to choose a name, /help for more"))
        self._enter(session, DEFAULT_ROOM)

    def on_end(self, session: Session) -> None:
        with self._state:
            nick = session.data.get("nick")
            if nick is not None and self._nicks.get(nick_key(nick)) is session:
                del self._nicks[nick_key(nick)]
        self._exit(session, "left the chat")

    def on_text(self, ctx: Context, text: str) -> Any:
        """Send a message to your room."""
        session = ctx.session
        self._check_size(text)
        self._check_flood(session)
        room = session.data.get("room")
        if room is None:
            raise CommandError("no_room", "you are in no room: /join ROOM first")
        self.post(
            room, self._event("message", room=room, text=text, **{"from": session.data["nick"]})
        )
        return NO_REPLY

    # -- for extensions (the AI assistant, hubs) ---------------------------------------

    def post(self, room: str, event: dict[str, Any]) -> None:
        """Keep ``event`` in the room's history and push it to every member.

        Raises :class:`CommandError` ``no_room`` if the room is gone, and
        ``store_error`` if the store cannot keep the event (then nobody gets it).
        """
        with self._state:
            target = self._rooms.get(room)
            if target is None:
                raise CommandError("no_room", f"room {room} is gone: /join ROOM")
            # Under the lock, so that whoever joins meanwhile gets the event either in
            # the replay or pushed below, never both and never neither.
            try:
                self.store.append(room, event)
            except StoreError as exc:
                raise self._store_failed(
                    exc, "the message could not be kept, so nobody got it"
                ) from None
            if self.max_history > 0:
                target.kept = True
            members = list(target.members.values())
        for member in members:
            member.push(event)

    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        """The last ``count`` events kept for ``room``, oldest first.

        Raises :class:`CommandError` ``store_error`` if the store cannot be read.
        """
        try:
            return self.store.recent(room, count)
        except StoreError as exc:
            raise self._store_failed(exc, f"the history of {room} cannot be read now") from None

    def push_to_room(self, room: str, event: dict[str, Any]) -> None:
        """Push ``event`` to the room's members without keeping it (progress, notices)."""
        self._to_room(room, event)

    @staticmethod
    def nick_of(session: Session) -> str:
        """The session's nickname."""
        return str(session.data.get("nick", "?"))

    @staticmethod
    def room_of(session: Session) -> str | None:
        """The session's room, if it is in one."""
        room = session.data.get("room")
        return None if room is None else str(room)

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A new event stamped with the server's time."""
        return self._event(kind, **fields)

    # -- commands --------------------------------------------------------------------

    def nick(self, ctx: Context, name: str) -> str:
        """Choose your nickname."""
        try:
            new = validate_nick(name, reserved=self.reserved_nicks)
        except NickError as exc:
            raise CommandError(exc.code, str(exc)) from None
        session = ctx.session
        with self._state:
            old = session.data["nick"]
            holder = self._nicks.get(nick_key(new))
            if holder is not None and holder is not session:
                raise CommandError(
                    "nick_taken", f"{new} is taken (or looks too much like a nick in use)"
                )
            del self._nicks[nick_key(old)]
            self._nicks[nick_key(new)] = session
            session.data["nick"] = new
            room = session.data.get("room")
        if room is not None and old != new:
            self._to_room(room, self._event("nick", room=room, old=old, new=new,
                                            text=f"{old} is now known as {new}"))  # fmt: skip
        return f"you are now {new}"

    def join(self, ctx: Context, room: str) -> str:
        """Move to a room (it is created if needed); its recent messages are replayed."""
        name = _room_name(room)
        if ctx.session.data.get("room") == name:
            return f"you are already in {name}"
        with self._state:
            full = self.max_rooms is not None and len(self._rooms) >= self.max_rooms
            if full and name not in self._rooms:
                raise CommandError("too_many_rooms", f"this server keeps {self.max_rooms} rooms")
        self._exit(ctx.session, f"went to {name}")
        self._enter(ctx.session, name)
        return f"you are in {name}"

    def leave(self, ctx: Context) -> str:
        """Leave your room and go back to general."""
        if ctx.session.data.get("room") == DEFAULT_ROOM:
            raise CommandError("bad_arguments", f"you are in {DEFAULT_ROOM} already")
        return self.join(ctx, DEFAULT_ROOM)

    def rooms(self) -> Any:
        """List the rooms and how many people are in each."""
        with self._state:
            listing = sorted((room.name, len(room.members)) for room in self._rooms.values())
        return "\n".join(f"{name} ({count})" for name, count in listing)

    def who(self, ctx: Context, room: str = "") -> str:
        """List who is in a room (default: yours)."""
        name = _room_name(room) if room else ctx.session.data.get("room") or DEFAULT_ROOM
        with self._state:
            target = self._rooms.get(name)
            nicks = sorted(m.data["nick"] for m in target.members.values()) if target else []
        if not nicks:
            raise CommandError("no_room", f"nobody is in {name}")
        return f"{name}: " + ", ".join(nicks)

    def msg(self, ctx: Context, nick: str, text: str) -> Any:
        """Send a private message."""
        self._check_size(text)
        self._check_flood(ctx.session)
        with self._state:
            target = self._nicks.get(nick_key(nick))
        if target is None:
            raise CommandError("no_such_nick", f"nobody is called {nick}")
        sender = ctx.session
        event = self._event(
            "private", to=target.data["nick"], text=text, **{"from": sender.data["nick"]}
        )
        target.push(event)
        if target is not sender:
            sender.push(event)
        return NO_REPLY

    def history_command(self, ctx: Context, count: int = 20) -> str:
        """Show the last COUNT messages of your room (at most the room's history)."""
        room = ctx.session.data.get("room") or DEFAULT_ROOM
        events = self.recent(room, count)
        for event in events:
            ctx.session.push({**event, "replay": True})
        return f"{len(events)} messages of {room}"

    # -- internals -------------------------------------------------------------------

    def _check_size(self, text: str) -> None:
        limit = self.max_message
        size = len(text.encode())
        if limit is not None and size > limit:
            raise CommandError(
                "message_too_long", f"a message of {size} bytes exceeds the {limit}-byte limit"
            )

    @staticmethod
    def _check_flood(session: Session) -> None:
        guard: FloodGuard | None = session.data.get("flood")
        if guard is None:
            return
        now = time.monotonic()
        verdict = guard.check(now)
        if verdict is Verdict.REFUSE:
            raise CommandError("flood", guard.refusal(now))
        if verdict is Verdict.DISCONNECT:
            session.close()  # after this error reply
            raise CommandError("flooding", guard.reason())

    @staticmethod
    def _event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"event": kind, **fields, "ts": round(time.time(), 3)}

    def _store_failed(self, exc: StoreError, what: str) -> CommandError:
        # The log says where and why; the client only needs to know what did not happen.
        self.logger.error("%s", exc)
        return CommandError("store_error", f"{what} (the server's log says why)")

    def _notice(self, text: str) -> dict[str, Any]:
        return self._event("notice", text=text)

    def _to_room(self, room: str, event: dict[str, Any], *, exclude: Session | None = None) -> None:
        with self._state:
            target = self._rooms.get(room)
            members = list(target.members.values()) if target else []
        for member in members:
            if member is not exclude:
                member.push(event)

    def _enter(self, session: Session, room: str) -> None:
        nick = session.data["nick"]
        with self._state:
            target = self._rooms.setdefault(room, _Room(room))
            target.members[session.id] = session
            session.data["room"] = room
            try:
                replay = [{**kept, "replay": True} for kept in self.recent(room, self.max_history)]
            except CommandError as exc:  # the room works without its past; say so
                replay = [self._notice(exc.message)]
        for event in replay:
            session.push(event)
        self._to_room(room, self._event("join", room=room, nick=nick, text=f"{nick} joined {room}"))

    def _exit(self, session: Session, why: str) -> None:
        with self._state:
            room = session.data.pop("room", None)
            target = self._rooms.get(room) if room else None
            if target is None:
                return
            target.members.pop(session.id, None)
            if not target.members and room != DEFAULT_ROOM and not target.kept:
                del self._rooms[room]
        nick = session.data.get("nick", "?")
        self._to_room(room, self._event("leave", room=room, nick=nick, text=f"{nick} {why}"))
