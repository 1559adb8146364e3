"""Where the chat's shared state lives: rooms, members, nicknames and history.

A :class:`~enlace.services.chat.ChatService` checks what clients send and
words the events; its *hub* keeps who is where under which name, keeps the
rooms' history, and carries events to the members of a room. Two hubs exist:

- :class:`LocalHub` (the default) keeps everything in this process, under one
  lock, with the history in a :class:`~enlace.services.store.HistoryStore`.
  This is the chat as it always was; it imports nothing beyond the standard
  library and enlace.
- :class:`~enlace.services.redis_hub.RedisHub` (``enlace serve chat --hub
  redis://HOST:PORT/DB``) shares rooms, presence, nicknames and history among
  several server processes through Redis, so that clients connected to
  different processes talk to each other.

**Answers that may wait.** Some operations need an answer the hub may have to
fetch (is this nick free on every server? who is in this room?). They return a
:class:`concurrent.futures.Future`, which a local hub has always completed
before returning, and a remote hub (:attr:`Hub.remote`) completes from its own
thread. The chat serves its commands synchronously on a local hub, exactly as
before, and as coroutines awaiting these futures on a remote one, so that no
runtime's thread or event loop ever waits on the network for a hub.

**Events.** Every method that takes an event receives the dictionary the
clients will get (stamped by the chat); a hub never rewords one. Pushing goes
through :meth:`Session.push <enlace.services.message.Session.push>`, which
any thread may call.
"""

from __future__ import annotations

import itertools
import logging
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from enlace.exceptions import EnlaceError
from enlace.logs import logger_for
from enlace.protocol.nicknames import guest_nick, nick_key
from enlace.services.commands import CommandError
from enlace.services.message import Session
from enlace.services.store import HistoryStore, StoreError

__all__ = ["DEFAULT_ROOM", "ChatHooks", "Hub", "HubError", "LocalHub", "failed", "settled"]

#: The room everyone starts in; it never goes away.
DEFAULT_ROOM = "general"

T = TypeVar("T")


class HubError(EnlaceError):
    """A hub cannot start: its URL is wrong, or its server cannot be reached."""

    code = "hub_error"


class ChatHooks(Protocol):
    """What a hub needs from the chat it serves."""

    logger: logging.Logger

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A new event stamped with the server's time."""
        ...


def settled(value: T) -> Future[T]:
    """A future that already holds ``value``: a local hub's answers."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


def failed(error: BaseException) -> Future[Any]:
    """A future that already holds ``error``."""
    future: Future[Any] = Future()
    future.set_exception(error)
    return future


class Hub(ABC):
    """The chat's rooms, members, nicknames and history, as one chat service uses them.

    Every method may be called from any thread. Methods returning a
    :class:`~concurrent.futures.Future` may complete it later from another
    thread when :attr:`remote` is true; otherwise it is done on return. Their
    failures are :class:`~enlace.services.commands.CommandError` s, which the
    chat sends to the client as they are.
    """

    #: Whether answers may arrive later (then the chat awaits them in coroutines).
    remote: bool = False

    #: What this process answers :meth:`recent` from.
    store: HistoryStore

    @property
    def max_history(self) -> int:
        """Messages a room keeps and replays."""
        return self.store.max_history

    @property
    def reachable(self) -> bool:
        """False while the hub cannot reach the other servers (answers cover this one only)."""
        return True

    @abstractmethod
    def bind(self, chat: ChatHooks) -> None:
        """Serve ``chat``; a hub serves one chat service."""

    def close(self) -> None:  # noqa: B027 - optional: most hubs hold nothing open
        """Let go of what the hub holds open; idempotent. The default holds nothing."""

    # -- nicknames -------------------------------------------------------------------

    @abstractmethod
    def arrive(self, session: Session) -> str:
        """Give a newcomer a guest nick nobody else has (``session.data["nick"]``); return it."""

    @abstractmethod
    def depart(self, session: Session) -> None:
        """The session has gone: its nick is free again."""

    @abstractmethod
    def rename(self, session: Session, nick: str) -> Future[str]:
        """Make ``nick`` (already valid) the session's; the future gives the old nick.

        Fails with ``nick_taken`` if anyone else holds a nick of the same
        :func:`~enlace.protocol.nicknames.nick_key`.
        """

    @abstractmethod
    def send_private(self, sender: Session, nick: str, event: dict[str, Any]) -> Future[bool]:
        """Push ``event`` to whoever holds ``nick``, with its ``to`` set to their nick.

        The sender gets the same event too. The future gives False if nobody
        holds the nick.
        """

    # -- rooms -----------------------------------------------------------------------

    @abstractmethod
    def enter(
        self,
        session: Session,
        room: str,
        joined: dict[str, Any],
        *,
        greeting: dict[str, Any] | None = None,
    ) -> Future[None]:
        """Put the session in ``room`` (it was in none), replay the room's history to it,
        then send ``joined`` to the room (the session included).

        ``greeting``, if given, goes to the session before the replay. The
        session's room (``session.data["room"]``) is set before this returns;
        the rest may follow later on a remote hub.
        """

    @abstractmethod
    def exit(self, session: Session, left: dict[str, Any]) -> None:
        """Take the session out of its room, if it is in one, and send ``left`` to the room."""

    @abstractmethod
    def publish(self, room: str, event: dict[str, Any], *, keep: bool) -> None:
        """Push ``event`` to every member of ``room``; with ``keep``, into its history first.

        With ``keep``, raises ``no_room`` if the room is gone and ``store_error``
        or ``hub_busy`` if the event cannot be kept or sent (then nobody gets it).
        """

    @abstractmethod
    def members_of(self, room: str) -> list[Session]:
        """The room's members connected to this process."""

    @abstractmethod
    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        """The last ``count`` events of ``room`` this process has, oldest first, at once."""

    @abstractmethod
    def history(self, room: str, count: int) -> Future[list[dict[str, Any]]]:
        """The last ``count`` events kept for ``room``, oldest first."""

    @abstractmethod
    def listing(self) -> Future[list[tuple[str, int]]]:
        """Every room, with how many people are in it, sorted by name."""

    @abstractmethod
    def members(self, room: str) -> Future[list[str]]:
        """The nicks of the people in ``room``, sorted."""


@dataclass
class _Room:
    name: str
    members: dict[int, Session] = field(default_factory=dict)
    #: The store keeps messages of this room, so it outlives its last member.
    kept: bool = False


class LocalHub(Hub):
    """Rooms, members, nicknames and history in this process: the chat on one server.

    Rooms the store already keeps (from an earlier run) exist from the start,
    with nobody in them. A room with kept messages outlives its last member;
    a room without any is forgotten when its last member leaves.

    Besides the :class:`Hub` methods it offers the pieces a hub spanning
    servers builds on (:meth:`register`, :meth:`reserve`, :meth:`commit`,
    :meth:`add_member`, :meth:`deliver` ...), each safe from any thread. It
    marks sessions in ``session.data``: ``reserved`` (a nick held for a rename
    still being checked) and ``departed`` (gone: nothing may hold a nick for it).
    """

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.logger = logger_for("chat")
        self._chat: ChatHooks | None = None
        # Reentrant: enter() reads the history under it, which may report a failure.
        self._lock = threading.RLock()
        self._rooms: dict[str, _Room] = {name: _Room(name, kept=True) for name in store.rooms()}
        self._nicks: dict[str, Session] = {}  # nick_key -> session
        self._guests = itertools.count(1)

    def bind(self, chat: ChatHooks) -> None:
        if self._chat is not None and self._chat is not chat:
            raise ValueError("this hub already serves another chat service")
        self._chat = chat
        self.logger = chat.logger

    # -- nicknames -------------------------------------------------------------------

    def arrive(self, session: Session) -> str:
        with self._lock:
            # Nobody can choose a guest name, so the next number is always free.
            guest = guest_nick(next(self._guests))
            self.register(session, guest)
        return guest

    def register(self, session: Session, nick: str) -> None:
        """Make ``nick`` the session's, whoever held it in this process."""
        with self._lock:
            session.data["nick"] = nick
            self._nicks[nick_key(nick)] = session

    def depart(self, session: Session) -> None:
        with self._lock:
            session.data["departed"] = True  # a rename still on its way must not revive it
            for nick in (session.data.get("nick"), session.data.pop("reserved", None)):
                if nick is not None and self._nicks.get(nick_key(nick)) is session:
                    del self._nicks[nick_key(nick)]

    def rename(self, session: Session, nick: str) -> Future[str]:
        with self._lock:
            self.reserve(session, nick)
            return settled(self.commit(session, nick))

    def reserve(self, session: Session, nick: str) -> None:
        """Hold ``nick``'s key for the session, so no one here takes it meanwhile.

        Raises ``nick_taken`` if someone else in this process holds it. The
        session keeps its nick until :meth:`commit` (or :meth:`cancel`). Does
        nothing for a session that has departed (no one could ever free the key).
        """
        with self._lock:
            if session.data.get("departed"):
                return
            holder = self._nicks.get(nick_key(nick))
            if holder is not None and holder is not session:
                raise CommandError(
                    "nick_taken", f"{nick} is taken (or looks too much like a nick in use)"
                )
            self._nicks[nick_key(nick)] = session
            session.data["reserved"] = nick

    def commit(self, session: Session, nick: str) -> str:
        """Finish a :meth:`reserve`: ``nick`` becomes the session's; return the old one.

        Does nothing for a session that has departed meanwhile.
        """
        with self._lock:
            old = str(session.data["nick"])
            session.data.pop("reserved", None)
            if session.data.get("departed"):
                return old
            if nick_key(old) != nick_key(nick) and self._nicks.get(nick_key(old)) is session:
                del self._nicks[nick_key(old)]
            self._nicks[nick_key(nick)] = session
            session.data["nick"] = nick
        return old

    def cancel(self, session: Session, nick: str) -> None:
        """Undo a :meth:`reserve` that will not be committed."""
        with self._lock:
            key = nick_key(nick)
            reserved = session.data.get("reserved")
            if reserved is not None and nick_key(reserved) == key:  # not a later one's
                del session.data["reserved"]
            current = session.data.get("nick")
            if self._nicks.get(key) is session and (current is None or nick_key(current) != key):
                del self._nicks[key]

    def holder(self, nick: str) -> Session | None:
        """Who holds ``nick`` (or a lookalike) in this process."""
        with self._lock:
            return self._nicks.get(nick_key(nick))

    def sessions(self) -> list[Session]:
        """Everyone with a nick in this process."""
        with self._lock:
            return list(self._nicks.values())

    def send_private(self, sender: Session, nick: str, event: dict[str, Any]) -> Future[bool]:
        target = self.holder(nick)
        if target is None:
            return settled(False)
        event["to"] = target.data["nick"]
        target.push(event)
        if target is not sender:
            sender.push(event)
        return settled(True)

    # -- rooms -----------------------------------------------------------------------

    def enter(
        self,
        session: Session,
        room: str,
        joined: dict[str, Any],
        *,
        greeting: dict[str, Any] | None = None,
    ) -> Future[None]:
        if greeting is not None:
            session.push(greeting)
        with self._lock:
            self.add_member(session, room)
            try:
                replay = [{**kept, "replay": True} for kept in self.recent(room, self.max_history)]
            except CommandError as exc:  # the room works without its past; say so
                replay = [self._notice(exc.message)]
        for event in replay:
            session.push(event)
        self.deliver(room, joined)
        return settled(None)

    def add_member(self, session: Session, room: str) -> None:
        """Make the session a member of ``room`` here (creating it), without any event."""
        with self._lock:
            self._rooms.setdefault(room, _Room(room)).members[session.id] = session
            session.data["room"] = room

    def remove_member(self, session: Session) -> str | None:
        """Take the session out of its room here, without any event; return the room."""
        with self._lock:
            room = session.data.pop("room", None)
            target = self._rooms.get(room) if room else None
            if target is None:
                return None
            target.members.pop(session.id, None)
            if not target.members and room != DEFAULT_ROOM and not target.kept:
                del self._rooms[room]
        return str(room)

    def exit(self, session: Session, left: dict[str, Any]) -> None:
        room = self.remove_member(session)
        if room is not None:
            self.deliver(room, left)

    def publish(self, room: str, event: dict[str, Any], *, keep: bool) -> None:
        if not keep:
            self.deliver(room, event)
            return
        with self._lock:
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

    def deliver(self, room: str, event: dict[str, Any]) -> None:
        """Push ``event`` to the room's members in this process, keeping nothing."""
        for member in self.members_of(room):
            member.push(event)

    def members_of(self, room: str) -> list[Session]:
        """The room's members in this process."""
        with self._lock:
            target = self._rooms.get(room)
            return list(target.members.values()) if target else []

    def everyone(self) -> list[Session]:
        """Every member of every room in this process."""
        with self._lock:
            return [member for room in self._rooms.values() for member in room.members.values()]

    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        try:
            return self.store.recent(room, count)
        except StoreError as exc:
            raise self._store_failed(exc, f"the history of {room} cannot be read now") from None

    def history(self, room: str, count: int) -> Future[list[dict[str, Any]]]:
        return settled(self.recent(room, count))

    def listing(self) -> Future[list[tuple[str, int]]]:
        with self._lock:
            rooms = [(room.name, len(room.members)) for room in self._rooms.values()]
        return settled(sorted(rooms))

    def members(self, room: str) -> Future[list[str]]:
        return settled(sorted(str(member.data["nick"]) for member in self.members_of(room)))

    # -- internals -------------------------------------------------------------------

    def _store_failed(self, exc: StoreError, what: str) -> CommandError:
        # The log says where and why; the client only needs to know what did not happen.
        self.logger.error("%s", exc)
        return CommandError("store_error", f"{what} (the server's log says why)")

    def _notice(self, text: str) -> dict[str, Any]:
        if self._chat is not None:
            return self._chat.event("notice", text=text)
        return {"event": "notice", "text": text}
