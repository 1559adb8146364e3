"""The chat: rooms, nicknames, room and private messages, history, on the message server.

:class:`ChatService` is a :class:`~enlace.services.message.MessageService`, so
it runs on either runtime and speaks to framed, JSON and ``nc`` clients at once,
each in its own form: a message is pushed as ``{"event": "message", "room":
"general", "from": "ana", "text": "hola", "ts": ...}`` to JSON clients and as
``[general] ana: hola`` to text clients. The server stamps sender and time.

Everyone starts in ``general`` as ``guest-N``; ``/nick``, ``/join``,
``/leave``, ``/rooms``, ``/who``, ``/msg`` and ``/history`` do the rest. A
room keeps its last ``max_history`` messages and replays them to whoever joins.

The service checks what clients send and words the events; rooms, members,
nicknames and history live in a :class:`~enlace.services.hub.Hub`:

- by default a :class:`~enlace.services.hub.LocalHub`, in this process, with the
  messages in a :class:`~enlace.services.store.HistoryStore`: in memory, or in
  SQLite (``store=SqliteStore(DIR)``, ``enlace serve chat --data DIR``), where
  rooms and their history survive a restart. A room with kept messages
  outlives its last member and is listed by ``/rooms``; a room without any is
  forgotten when its last member leaves.
- or a :class:`~enlace.services.redis_hub.RedisHub` (``hub=``, ``enlace serve
  chat --hub redis://HOST:PORT/DB``), shared by several server processes, so
  that their clients talk to each other.

On a local hub every command answers at once, as a plain function. On a
remote hub the commands that need the hub's answer (``/nick``, ``/join``,
``/leave``, ``/rooms``, ``/who``, ``/msg``, ``/history``) are served as
coroutines that await it, so neither runtime's threads nor its event loop
wait on the network; chat lines are sent without waiting for anything.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import unicodedata
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from enlace.limits import MAX_CHAT_MESSAGE, MAX_HISTORY, MAX_ROOMS
from enlace.protocol.nicknames import NickError, validate_nick
from enlace.protocol.ratelimit import FLOOD_BURST, FLOOD_RATE, FloodGuard, Verdict
from enlace.services.commands import CommandError, Context
from enlace.services.hub import DEFAULT_ROOM, Hub, LocalHub
from enlace.services.message import NO_REPLY, MessageService, Session
from enlace.services.store import HistoryStore, MemoryStore

__all__ = ["DEFAULT_ROOM", "ChatService"]

T = TypeVar("T")

_ROOM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}", re.ASCII)

# Seconds a command waits for a remote hub's answer. The hub bounds each of its own
# calls well below this; this only keeps a client from waiting forever on a bug.
_HUB_ANSWER_TIMEOUT = 10.0


def _room_name(text: str) -> str:
    name = unicodedata.normalize("NFKC", text.strip()).lower().removeprefix("#")
    if not _ROOM_NAME.fullmatch(name):
        raise CommandError(
            "bad_room", "a room name is 1-32 letters, digits, '-' or '_' (ASCII), e.g. /join python"
        )
    return name


async def _answer(future: Future[T]) -> T:
    """The hub's answer; does not suspend when it is already there (a local hub's always is)."""
    if not future.done():
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), _HUB_ANSWER_TIMEOUT)
        except TimeoutError:
            # Said, not left to wrap_future (which does cancel what it wraps, undocumented):
            # an Answer undoes, before the asker hears of the timeout, what it was too late for.
            future.cancel()
            raise CommandError(
                "hub_timeout", "the chat hub did not answer in time; try again"
            ) from None
    return future.result()


def _now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to its end at once: on a local hub it never suspends."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("a chat command waited on a hub that answers at once")


def _awaiting(
    command: Callable[..., Any], coroutine: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``coroutine`` as an async command with the name, usage and help of ``command``."""

    @functools.wraps(command)
    async def awaiting(*args: Any) -> Any:
        return await coroutine(*args)

    return awaiting


class ChatService(MessageService):
    """A chat server: rooms, nicknames, private messages and history.

    ``store`` keeps the rooms' messages (default: a :class:`MemoryStore` of
    ``max_history`` messages a room, :data:`~enlace.limits.MAX_HISTORY` if not
    given). A given store has its own ``max_history``, so passing both is a
    :class:`ValueError`. Rooms the store already keeps (from an earlier run)
    exist from the start, with nobody in them.

    ``hub`` shares rooms, members, nicknames and history with other servers
    (a started :class:`~enlace.services.redis_hub.RedisHub`); it keeps the
    history itself, so it excludes ``store`` and ``max_history``.
    ``max_rooms`` bounds the rooms of the whole hub.
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
        hub: Hub | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name=name, **options)
        if hub is None:
            if store is None:
                store = MemoryStore(max_history=MAX_HISTORY if max_history is None else max_history)
            elif max_history is not None:
                raise ValueError("with store=, give max_history to the store instead")
            hub = LocalHub(store)
        elif store is not None or max_history is not None:
            raise ValueError("with hub=, the hub keeps the history: give max_history to it")
        hub.bind(self)
        self.hub = hub
        #: What this process answers :meth:`recent` from (with a remote hub, its copy).
        self.store = hub.store
        self.max_message = max_message
        self.max_rooms = max_rooms
        self.flood_burst = flood_burst  # None: no flood control
        self.flood_rate = flood_rate
        #: Names nobody may take (nor a lookalike of): the AI assistant's, for one.
        self.reserved_nicks: set[str] = set()
        commands: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "nick": (self.nick, self._nick),
            "join": (self.join, self._join),
            "leave": (self.leave, self._leave),
            "rooms": (self.rooms, self._rooms),
            "who": (self.who, self._who),
            "msg": (self.msg, self._msg),
            "history": (self.history_command, self._history),
        }
        for command_name, (now, later) in commands.items():
            function = _awaiting(now, later) if hub.remote else now
            self.command(name=command_name)(function)

    @property
    def max_history(self) -> int:
        """Messages a room keeps and replays (the store's bound)."""
        return self.hub.max_history

    # -- the message service's hooks ------------------------------------------------

    def on_start(self, session: Session) -> None:
        if self.flood_burst is not None:
            session.data["flood"] = FloodGuard(burst=self.flood_burst, rate=self.flood_rate)
        guest = self.hub.arrive(session)
        welcome = self._notice(f"welcome, {guest}: /nick NAME to choose a name, /help for more")
        self._enter(session, DEFAULT_ROOM, greeting=welcome)  # remote: the replay comes later

    def on_end(self, session: Session) -> None:
        self.hub.depart(session)
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
        ``store_error`` (or ``hub_busy``) if the event cannot be kept (then
        nobody gets it). On a remote hub the members get it once the hub has
        kept it, in the same order on every server.
        """
        self.hub.publish(room, event, keep=True)

    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        """The last ``count`` events kept for ``room``, oldest first.

        Raises :class:`CommandError` ``store_error`` if the store cannot be read.
        On a remote hub: this process's copy, which holds what the room said
        since this server first had a member in it.
        """
        return self.hub.recent(room, count)

    def push_to_room(self, room: str, event: dict[str, Any]) -> None:
        """Push ``event`` to the room's members without keeping it (progress, notices)."""
        self.hub.publish(room, event, keep=False)

    def local_members(self, room: str) -> list[Session]:
        """The room's members connected to this server (not those of other servers)."""
        return self.hub.members_of(room)

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

    # -- commands (each runs its coroutine at once on a local hub) ----------------------

    def nick(self, ctx: Context, name: str) -> str:
        """Choose your nickname."""
        return _now(self._nick(ctx, name))

    def join(self, ctx: Context, room: str) -> str:
        """Move to a room (it is created if needed); its recent messages are replayed."""
        return _now(self._join(ctx, room))

    def leave(self, ctx: Context) -> str:
        """Leave your room and go back to general."""
        return _now(self._leave(ctx))

    def rooms(self) -> Any:
        """List the rooms and how many people are in each."""
        return _now(self._rooms())

    def who(self, ctx: Context, room: str = "") -> str:
        """List who is in a room (default: yours)."""
        return _now(self._who(ctx, room))

    def msg(self, ctx: Context, nick: str, text: str) -> Any:
        """Send a private message."""
        return _now(self._msg(ctx, nick, text))

    def history_command(self, ctx: Context, count: int = 20) -> str:
        """Show the last COUNT messages of your room (at most the room's history)."""
        return _now(self._history(ctx, count))

    async def _nick(self, ctx: Context, name: str) -> str:
        try:
            new = validate_nick(name, reserved=self.reserved_nicks)
        except NickError as exc:
            raise CommandError(exc.code, str(exc)) from None
        session = ctx.session
        old = await _answer(self.hub.rename(session, new))
        room = session.data.get("room")
        if room is not None and old != new:
            self.hub.publish(room, self._event("nick", room=room, old=old, new=new,
                                               text=f"{old} is now known as {new}"),
                             keep=False)  # fmt: skip
        return f"you are now {new}"

    async def _join(self, ctx: Context, room: str) -> str:
        name = _room_name(room)
        if ctx.session.data.get("room") == name:
            return f"you are already in {name}"
        if self.max_rooms is not None:
            rooms = [known for known, _ in await _answer(self.hub.listing())]
            if len(rooms) >= self.max_rooms and name not in rooms:
                raise CommandError("too_many_rooms", f"this server keeps {self.max_rooms} rooms")
        self._exit(ctx.session, f"went to {name}")
        await _answer(self._enter(ctx.session, name))
        return f"you are in {name}"

    async def _leave(self, ctx: Context) -> str:
        if ctx.session.data.get("room") == DEFAULT_ROOM:
            raise CommandError("bad_arguments", f"you are in {DEFAULT_ROOM} already")
        return await self._join(ctx, DEFAULT_ROOM)

    async def _rooms(self) -> Any:
        listing = await _answer(self.hub.listing())
        return "\n".join(f"{name} ({count})" for name, count in listing) + self._partial("\n")

    async def _who(self, ctx: Context, room: str = "") -> str:
        name = _room_name(room) if room else ctx.session.data.get("room") or DEFAULT_ROOM
        nicks = await _answer(self.hub.members(name))
        if not nicks:
            raise CommandError("no_room", f"nobody is in {name}")
        return f"{name}: " + ", ".join(nicks) + self._partial(" ")

    async def _msg(self, ctx: Context, nick: str, text: str) -> Any:
        self._check_size(text)
        self._check_flood(ctx.session)
        sender = ctx.session
        # `to` is filled in by the hub with the nick as its holder spells it.
        event = self._event("private", to=None, text=text, **{"from": sender.data["nick"]})
        if not await _answer(self.hub.send_private(sender, nick, event)):
            raise CommandError("no_such_nick", f"nobody is called {nick}")
        return NO_REPLY

    async def _history(self, ctx: Context, count: int = 20) -> str:
        room = ctx.session.data.get("room") or DEFAULT_ROOM
        events = await _answer(self.hub.history(room, count))
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

    def _notice(self, text: str) -> dict[str, Any]:
        return self._event("notice", text=text)

    def _partial(self, separator: str) -> str:
        # Said after the answer, so that what a client parses still comes first.
        if self.hub.reachable:
            return ""
        return f"{separator}(this server only: the chat hub is unreachable)"

    def _enter(
        self, session: Session, room: str, *, greeting: dict[str, Any] | None = None
    ) -> Future[None]:
        nick = session.data["nick"]
        joined = self._event("join", room=room, nick=nick, text=f"{nick} joined {room}")
        return self.hub.enter(session, room, joined, greeting=greeting)

    def _exit(self, session: Session, why: str) -> None:
        room = session.data.get("room")
        if room is None:
            return
        nick = session.data.get("nick", "?")
        self.hub.exit(session, self._event("leave", room=room, nick=nick, text=f"{nick} {why}"))
