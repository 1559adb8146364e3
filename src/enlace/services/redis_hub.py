"""The chat across several server processes: rooms, presence, nicknames and history in Redis.

``enlace serve chat --hub redis://HOST:PORT/DB`` gives every chat server the
same :class:`RedisHub`, so clients connected to different processes share
rooms, see each other in ``/who`` and ``/rooms``, cannot take each other's
nicks (nor lookalikes) and get the same history. It needs a standalone Redis
6.2 or newer; :mod:`enlace.services.redis_scripts` shows what it keeps there.

**One thread owns Redis**, through a :class:`~enlace.services.redis_link.RedisLink`:
:mod:`redis.asyncio` on an event loop of its own, for both runtimes. The chat
never waits on it: chat lines are queued and sent without an answer; commands
that need one (``/nick``, ``/join``, ``/who`` ...) await a future that this
thread completes. One bounded FIFO queue serves everything this server asks, in
the order it asked, and every call has a timeout.

**Room events travel only through Redis.** A chat line is one Lua script:
``INCR`` the room's sequence number, ``RPUSH`` + ``LTRIM`` the event onto the
room's history list, ``PUBLISH`` it on one channel all servers subscribe to.
Every server, the sender's included, pushes what arrives on that channel to its
own members. Delivering locally at once and ignoring the echo would be faster
for the sender's neighbours, but two lines sent at once on two servers would
then reach the two servers' clients in opposite orders. Through Redis, every
client of every server sees one order per room, the order of the history.

A join is one script too: read the room's sequence number and history, add the
member to the presence, publish the ``join`` event. Events of that room reaching
this server meanwhile are held for the joiner and released after the replay if
their number is above the one read, so it sees each event once, in order. At
most ``max_held`` of them are held; those let go are read back from the history,
and the joiner is told how many of them the history did not have
(:mod:`enlace.services.redis_join`).

What a client notices: its own lines come back once Redis has them (as they do
to everyone); the events about itself (``join``, ``nick``) may come just after
the command's reply instead of just before; on connecting, the welcome, the
replay of ``general`` and the ``join`` come together once the hub has answered,
possibly after the replies to requests sent with the client's first bytes. The
AI assistant's streamed fragments reach the asker's server only; its answer,
posted when complete, reaches everyone.

**Presence** is a hash per server (session -> room and nick) that expires unless
the server's heartbeat keeps it alive, beside a key saying the server lives:
the members of a crashed server leave ``/who`` within :data:`HUB_PRESENCE_TTL`
seconds. ``/who`` and ``/rooms`` are one script that merges the hashes of the
living servers, plus the rooms with history.

**Nicknames**: ``nick:<nick_key>`` holds the owner (server id, session, nick as
written). A claim succeeds if the key is free, owned by this server (whose own
sessions the :class:`~enlace.services.hub.LocalHub` arbitrates) or owned by a
server that no longer lives; so a crashed server's nicks free up with its
heartbeat, and the heartbeat costs the same however many people are connected.
Guest names come from a shared counter, handed out in blocks.
:mod:`enlace.services.redis_nicks` does all this; it also makes sure that a
``/nick`` answered ``hub_timeout`` (the chat stopped waiting) never takes effect.

**Overload**: when Redis is slower than the server, the queue of operations
fills up to :data:`~enlace.limits.MAX_HUB_PENDING`, and past it operations are
refused: a chat line is answered ``hub_busy`` (nobody got it), a notice reaches
this server's members only. What someone leaving owes Redis (its nick released,
its presence removed) is never refused: such cleanups may take
:data:`~enlace.limits.MAX_HUB_CLEANUP` places more, and past even those, this
server registers again before anything else, which leaves in Redis the nicks
and presence of exactly the people still here.

**When Redis goes away** (a call fails or times out, or the subscription
breaks), clients in rooms get one notice, :data:`UNREACHABLE`, and each server
goes on as a :class:`~enlace.services.hub.LocalHub`: rooms, lines and private
messages among its own clients, history from its copy of the recent messages.
Changing nick is refused meanwhile (``hub_unreachable``): no server could check
the name with the others, and two people would leave the outage with one name.
The hub reconnects with a backoff of at most :data:`HUB_MAX_BACKOFF` seconds; then
it registers its members and nicks again, tells the clients (:data:`BACK`), and
lines cross servers again. Should someone elsewhere have taken a name in the
meantime (Redis restarted empty), its holder here becomes a guest and is told
why. Lines sent during the outage stay on their server and out of the shared
history, and lines a server missed while cut off are not replayed to it.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import Future
from typing import Any

import orjson

from enlace.limits import (
    HUB_HEARTBEAT,
    HUB_MAX_BACKOFF,
    HUB_PRESENCE_TTL,
    HUB_TIMEOUT,
    MAX_HISTORY,
    MAX_HUB_CLEANUP,
    MAX_HUB_HELD,
    MAX_HUB_PENDING,
)
from enlace.logs import logger_for
from enlace.services.commands import CommandError
from enlace.services.hub import ChatHooks, Hub, LocalHub, settled
from enlace.services.message import Session
from enlace.services.redis_join import MISSED, Joining
from enlace.services.redis_link import Op, RedisLink, busy
from enlace.services.redis_nicks import RedisNicks
from enlace.services.redis_scripts import PREFIX as _P
from enlace.services.redis_scripts import SCRIPTS
from enlace.services.store import MemoryStore

__all__ = [
    "BACK",
    "UNREACHABLE",
    "RedisHub",
]

#: The notice clients in rooms get when the hub becomes unreachable.
UNREACHABLE = (
    "the chat hub is unreachable: messages reach only people on this server until it returns"
)
#: The notice they get when it is back.
BACK = "the chat hub is back: messages reach people on every server again"


class RedisHub(Hub):
    """The chat's rooms, presence, nicknames and history, shared through Redis at ``url``.

    ``url`` is ``redis://[:PASSWORD@]HOST:PORT/DB`` (``rediss://`` for TLS,
    ``unix://PATH?db=N``). Call :meth:`start` before serving (it raises
    :class:`~enlace.services.hub.HubError` if Redis cannot be reached) and
    :meth:`close` after, or use the hub as a context manager. ``max_history``
    is the messages each room keeps in Redis; ``max_held`` the events held for
    a joiner (:mod:`enlace.services.redis_join`); ``timeout``, ``heartbeat``,
    ``presence_ttl``, ``max_backoff``, ``max_pending`` and ``max_cleanup`` are
    the bounds of the module docstring and of :mod:`enlace.services.redis_link`.
    """

    remote = True

    def __init__(
        self,
        url: str,
        *,
        max_history: int = MAX_HISTORY,
        timeout: float = HUB_TIMEOUT,
        heartbeat: float = HUB_HEARTBEAT,
        presence_ttl: float = HUB_PRESENCE_TTL,
        max_backoff: float = HUB_MAX_BACKOFF,
        max_pending: int = MAX_HUB_PENDING,
        max_cleanup: int = MAX_HUB_CLEANUP,
        max_held: int | None = MAX_HUB_HELD,
    ) -> None:
        if presence_ttl < 2 * heartbeat:
            raise ValueError("presence_ttl must be at least two heartbeats")
        #: This process among the servers of the hub (random: a restart is a new server).
        self.server_id = sid = secrets.token_hex(6)
        #: This server's own rooms and people, which also serve while Redis is away.
        self.local = LocalHub(MemoryStore(max_history=max_history))
        self.store = self.local.store
        self.logger = logger_for("chat")
        self.max_held = max_held
        self._chat: ChatHooks | None = None
        self._ttl = max(1, round(presence_ttl * 1000))  # as Redis takes it: milliseconds
        self._keys = {
            "alive": f"{_P}server:{sid}",
            "members": f"{_P}server:{sid}:members",
            "nicks": f"{_P}server:{sid}:nicks",
            "servers": f"{_P}servers",
            "rooms": f"{_P}rooms",
            "guests": f"{_P}guests",
        }
        self._events = f"{_P}events".encode()
        self._lock = threading.Lock()  # the joiners
        self._joining: dict[int, Joining] = {}
        self._mirrored: dict[str, int] = {}  # room -> the last sequence number copied
        self.link = RedisLink(
            url,
            channels=[self._events, f"{_P}server:{sid}:inbox".encode()],
            scripts=SCRIPTS,
            on_message=self._received,
            on_down=lambda error: self._announce(UNREACHABLE),
            on_up=lambda: self._announce(BACK),
            register=self._register,
            beat=self._beat,
            logger=self.logger,
            timeout=timeout,
            heartbeat=heartbeat,
            max_backoff=max_backoff,
            max_pending=max_pending,
            max_cleanup=max_cleanup,
        )
        #: This server's nicknames in Redis.
        self.nicks = RedisNicks(
            server_id=sid,
            local=self.local,
            link=self.link,
            keys=self._keys,
            ttl=self._ttl,
            notify=lambda session, text: session.push(self._event("notice", text=text)),
            renamed=self._renamed,
        )

    @property
    def reachable(self) -> bool:
        return self.link.up

    def bind(self, chat: ChatHooks) -> None:
        self.local.bind(chat)
        self._chat = chat
        self.logger = self.link.logger = chat.logger

    def start(self) -> RedisHub:
        """Connect, subscribe and register; raise :class:`HubError` if Redis cannot be had."""
        self.link.start()
        self.logger.info("chat hub: %s (this server is %s)", self.link.where, self.server_id)
        return self

    def close(self) -> None:
        """Finish the queued operations (bounded), leave the hub's presence, stop."""
        keys = [self._keys[name] for name in ("alive", "servers", "members", "nicks")]
        self.link.close(lambda: self._script("unregister", keys, [self.server_id]))

    def __enter__(self) -> RedisHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- nicknames -------------------------------------------------------------------

    def arrive(self, session: Session) -> str:
        return self.nicks.arrive(session)

    def depart(self, session: Session) -> None:
        self.nicks.depart(session)
        self._stop_holding(session)

    def rename(self, session: Session, nick: str) -> Future[str]:
        return self.nicks.rename(session, nick)

    def send_private(self, sender: Session, nick: str, event: dict[str, Any]) -> Future[bool]:
        if self.local.holder(nick) is not None:
            return self.local.send_private(sender, nick, event)
        keys, args = [self.nicks.key(nick)], [f"{_P}server:", orjson.dumps(event)]

        async def run() -> bool:
            found = await self._script("private", keys, args)
            if found is None:
                return False
            event["to"] = found.decode()
            sender.push(event)
            return True

        def fallback() -> bool:
            raise CommandError(
                "hub_unreachable",
                f"nobody is called {nick} on this server, and the chat hub is unreachable",
            )

        return self._ask(run, fallback)

    # -- rooms -----------------------------------------------------------------------

    def enter(
        self,
        session: Session,
        room: str,
        joined: dict[str, Any],
        *,
        greeting: dict[str, Any] | None = None,
    ) -> Future[None]:
        # The greeting goes from this hub's thread too: the thread runtime holds back
        # what a connection's own thread writes until its callback ends, so pushed from
        # there it could arrive after the replay.
        joining = Joining(room, max_held=self.max_held)
        with self._lock:  # before the session is a member, so no event slips past it
            replaced = self._joining.get(session.id)
            self._joining[session.id] = joining
        if replaced is not None:
            replaced.left = True
        self.local.add_member(session, room)
        nick = str(session.data["nick"])
        keys = [self._room(room, "seq"), self._room(room, "history"), self._keys["members"]]
        args = [room, self.max_history, session.id, f"{room}\t{nick}", orjson.dumps(joined)]
        args += [self._events, self._ttl]

        async def run() -> None:
            if session.data.get("departed"):  # its presence would outlive it
                return
            before, kept = await self._script("enter", keys, args)
            if greeting is not None:
                session.push(greeting)
            replay = [orjson.loads(event) for event in kept]
            if room not in self._mirrored:  # the first this server sees of the room
                self._mirrored[room] = int(before)
                for event in replay:
                    self.store.append(room, event)
            try:
                await joining.catch_up(session.push, replay, int(before), recover)
            finally:  # at once: no event of the room can arrive in between
                self._caught_up(session, joining)

        async def recover(after: int) -> tuple[int, dict[int, dict[str, Any]]]:
            keys = [self._room(room, what) for what in ("seq", "history", "seqs")]
            now, *flat = await self._script("recover", keys, [after])
            pairs = zip(flat[::2], flat[1::2], strict=True)
            return int(now), {int(seq): orjson.loads(event) for seq, event in pairs}

        def fallback() -> None:
            if joining.started:  # caught up through Redis, which failed after: nothing to redo
                return
            if greeting is not None:
                session.push(greeting)
            if self._joined_alone(session, joining):
                self.local.enter(session, room, joined)

        op = Op(run, fallback)
        if not self.link.submit(op):
            fallback()
            return settled(None)
        return op.future

    def exit(self, session: Session, left: dict[str, Any]) -> None:
        self._stop_holding(session)
        room = self.local.remove_member(session)
        if room is None:
            return
        post = self._post(room, left, keep=False)

        async def run() -> None:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.hdel(self._keys["members"], str(session.id))
            await post(pipe)
            await pipe.execute()

        op = Op(run, lambda: self.local.deliver(room, left))
        if session.data.get("departed"):  # gone for good: it must leave /who
            self.link.clean_up(op)
        elif not self.link.submit(op):  # moving to another room, whose entry rewrites it
            self.local.deliver(room, left)

    def publish(self, room: str, event: dict[str, Any], *, keep: bool) -> None:
        fallback = lambda: self.local.publish(room, event, keep=keep)  # noqa: E731
        if self.link.submit(Op(None, fallback, batch=self._post(room, event, keep=keep))):
            return
        if keep:
            raise busy()
        self.local.deliver(room, event)  # a notice still reaches this server's members

    def members_of(self, room: str) -> list[Session]:
        return self.local.members_of(room)

    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        return self.local.recent(room, count)

    def history(self, room: str, count: int) -> Future[list[dict[str, Any]]]:
        count = min(count, self.max_history)
        if count <= 0:
            return settled([])
        key = self._room(room, "history")

        async def run() -> list[dict[str, Any]]:
            kept = await self.link.client.lrange(key, -count, -1)
            return [orjson.loads(event) for event in kept]

        return self._ask(run, lambda: self.local.recent(room, count))

    def listing(self) -> Future[list[tuple[str, int]]]:
        async def run() -> list[tuple[str, int]]:
            flat = await self._presence("")
            return sorted((flat[i].decode(), int(flat[i + 1])) for i in range(0, len(flat), 2))

        return self._ask(run, lambda: self.local.listing().result())

    def members(self, room: str) -> Future[list[str]]:
        async def run() -> list[str]:
            return sorted(nick.decode() for nick in await self._presence(room))

        return self._ask(run, lambda: self.local.members(room).result())

    # -- on the link's thread ----------------------------------------------------------

    def _received(self, channel: bytes, data: bytes) -> None:
        header, _, body = data.partition(b"\n")
        try:
            event = orjson.loads(body)
            if not isinstance(event, dict):  # pushed as it is, it would fail on this thread
                self.logger.warning("chat hub: ignored a message on %r: not an object", channel)
                return
            if channel == self._events:
                seq, room, keep = header.split(b"\t")
                self._room_event(int(seq), room.decode(), keep == b"1", event)
                return
            session_id, nick = header.split(b"\t", 1)  # a private message for someone here
            target = self.local.holder(nick.decode())
            if target is not None and target.id == int(session_id):
                event["to"] = target.data.get("nick")
                target.push(event)
        except ValueError as exc:  # JSON and Unicode errors included
            self.logger.warning("chat hub: ignored a malformed message on %r: %s", channel, exc)

    def _room_event(self, seq: int, room: str, keep: bool, event: dict[str, Any]) -> None:
        if keep and seq > self._mirrored.get(room, 0):
            self._mirrored[room] = seq
            self.store.append(room, event)  # a MemoryStore: never fails
        members = self.local.members_of(room)
        if not members:
            return
        with self._lock:
            joining = [self._joining.get(member.id) for member in members]
        for member, waiting in zip(members, joining, strict=True):
            if waiting is None or waiting.room != room:
                member.push(event)
            else:
                first = waiting.evicted == 0
                if not waiting.hold(seq, keep, event) and first:
                    self.logger.info(
                        "chat hub: more than %s events of %s came while someone joined it; "
                        "holding the newest",
                        self.max_held,
                        room,
                    )

    def _stop_holding(self, session: Session, joining: Joining | None = None) -> bool:
        """Hold nothing more for the session (or only if ``joining`` is its joining).

        Returns whether it was still joining that room.
        """
        with self._lock:
            current = self._joining.get(session.id)
            if current is None or (joining is not None and current is not joining):
                current = None
            else:
                del self._joining[session.id]
        if current is None:
            return False
        current.left = True
        return session.data.get("room") == current.room

    def _caught_up(self, session: Session, joining: Joining) -> None:
        """The joiner has all it could get: hold nothing more, tell it what it missed."""
        if self._stop_holding(session, joining):
            self._tell_missed(session, joining.room, joining.missed)

    def _joined_alone(self, session: Session, joining: Joining) -> bool:
        """Redis is away, so the local hub replays: give what was held that it has not.

        Kept events are in this server's copy of the history, so only the held
        notices are left to give, and the count of those let go to tell.
        """
        if not self._stop_holding(session, joining):
            return False
        for _seq, keep, event in joining.held:
            if not keep:
                session.push(event)
        joining.held.clear()
        self._tell_missed(session, joining.room, joining.unkept)
        return True

    def _tell_missed(self, session: Session, room: str, count: int) -> None:
        if not count:
            return
        session.push(self._event("notice", text=MISSED.format(room=room, count=count)))
        self.logger.warning(
            "chat hub: %s missed %d events of %s while joining: more than %s came before its "
            "replay, and the history does not have them",
            session.data.get("nick"),
            count,
            room,
            self.max_held,
        )

    async def _register(self) -> None:
        """Tell Redis who is here (again): presence, nicks, a block of guest numbers."""
        args: list[Any] = [self.server_id, self._ttl, f"{_P}server:"]
        sessions = {session.id: session for session in self.local.sessions()}
        for session in sessions.values():
            nick, room = str(session.data.get("nick")), session.data.get("room")
            presence = f"{room}\t{nick}" if room is not None else ""
            args += [session.id, self.nicks.key(nick), self.nicks.owner(session) + nick, presence]
        keys = [self._keys[name] for name in ("alive", "servers", "members", "nicks")]
        lost = await self._script("register", keys, args)
        await self.nicks.refill(replace=True)
        for room in self._mirrored:  # numbers restart if Redis lost its data
            self._mirrored[room] = 0
        for session_id in lost:
            displaced = sessions.get(int(session_id))
            if displaced is not None:
                self.nicks.displace(displaced)

    async def _beat(self) -> None:
        pipe = self.link.client.pipeline(transaction=False)
        pipe.set(self._keys["alive"], b"1", px=self._ttl, get=True)
        pipe.sadd(self._keys["servers"], self.server_id)
        pipe.pexpire(self._keys["members"], self._ttl)
        pipe.pexpire(self._keys["nicks"], self._ttl)
        previous, *_ = await pipe.execute()
        if previous is None:
            # Taken for dead (a stall) or forgotten (Redis restarted): say who is here.
            self.logger.warning("chat hub: this server had expired in Redis; registering again")
            self.link.resync()

    # -- helpers -----------------------------------------------------------------------

    def _renamed(self, session: Session, old: str, new: str) -> None:
        room = session.data.get("room")
        if room is not None:
            text = f"{old} is now known as {new}"
            self.publish(room, self._event("nick", room=room, old=old, new=new, text=text),
                         keep=False)  # fmt: skip

    def _ask(self, run: Any, fallback: Any) -> Future[Any]:
        op = Op(run, fallback)
        if not self.link.submit(op):
            raise busy()
        return op.future

    def _script(self, name: str, keys: list[Any], args: list[Any], pipe: Any = None) -> Any:
        return self.link.scripts[name](keys, args, pipe)

    async def _presence(self, room: str) -> list[Any]:
        keys = [self._keys["servers"], self._keys["rooms"]]
        return list(await self._script("presence", keys, [f"{_P}server:", room]))

    def _post(self, room: str, event: dict[str, Any], *, keep: bool) -> Any:
        keys = [self._room(room, "seq"), self._room(room, "history"), self._keys["rooms"]]
        keys.append(self._room(room, "seqs"))
        args = [room, orjson.dumps(event), int(keep), self.max_history, self._events]
        return lambda pipe: self._script("post", keys, args, pipe)

    def _announce(self, text: str) -> None:
        notice = self._event("notice", text=text)
        for session in self.local.everyone():
            session.push(notice)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        if self._chat is not None:
            return self._chat.event(kind, **fields)
        return {"event": kind, **fields}

    @staticmethod
    def _room(room: str, what: str) -> str:
        return f"{_P}room:{room}:{what}"
