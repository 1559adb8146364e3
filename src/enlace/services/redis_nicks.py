"""Nicknames on the chat's Redis hub: claims, releases, guest numbers, /nick given up on.

The nickname half of :class:`~enlace.services.redis_hub.RedisHub`, whose
docstring tells the design: ``nick:<nick_key>`` names the owner (server id,
session, nick as written); a claim succeeds if the key is free, this server's,
or a dead server's; guest numbers come from a shared counter in blocks.

**A /nick its asker gave up on does not happen.** The chat waits a bounded time
for the hub's answer and then tells the person ``hub_timeout: ... try again``;
they believe they kept their name, so it stays theirs. Giving up, the chat
cancels the operation's :class:`~enlace.services.redis_link.Answer`, which
tells us before the person hears anything: a claim not yet sent to Redis is
then never sent, and one that Redis granted is taken back (the old nick claimed
again and the new one freed, in one script), at once if it was still
unanswered, or as a cleanup that no overload drops if the answer was already on
its way. Only should the old name have been taken in between (by a server
elsewhere, or someone here) does the person keep the new one, with a notice
saying so and the nick change announced to the room, as IRC servers announce a
nick change nobody typed.

**A departure's releases are never dropped**: they are cleanups
(:meth:`~enlace.services.redis_link.RedisLink.clean_up`). Claims check first
that their session is still here, because a cleanup that ran out of room turns
into a re-registration queued ahead of them.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from enlace.protocol.nicknames import guest_nick, nick_key
from enlace.services.commands import CommandError
from enlace.services.hub import LocalHub, settled
from enlace.services.message import Session
from enlace.services.redis_link import Answer, Op, RedisLink, busy
from enlace.services.redis_scripts import PREFIX as _P

__all__ = ["RedisNicks"]

# Guest numbers taken from the shared counter at a time.
_GUEST_BLOCK = 64


class _Rename:
    """A /nick on its way through Redis: whether Redis granted it, whether its asker gave up."""

    __slots__ = ("abandoned", "granted", "new", "old", "session", "unreserved")

    def __init__(self, session: Session, new: str, old: str) -> None:
        self.session, self.new, self.old = session, new, old
        self.granted = self.abandoned = self.unreserved = False


def _timed_out() -> CommandError:
    # What the asker heard already, if anyone is left to hear it.
    return CommandError("hub_timeout", "the chat hub did not answer in time; try again")


class RedisNicks:
    """The nicknames of one server on the hub.

    ``keys`` holds the hub's ``members``, ``nicks`` and ``guests`` keys; ``ttl``
    is the presence's, in milliseconds. ``notify(session, text)`` sends a
    person a notice, ``renamed(session, old, new)`` tells the person's room.
    """

    def __init__(
        self,
        *,
        server_id: str,
        local: LocalHub,
        link: RedisLink,
        keys: dict[str, str],
        ttl: int,
        notify: Callable[[Session, str], None],
        renamed: Callable[[Session, str, str], None],
    ) -> None:
        self.server_id = server_id
        self.local = local
        self.link = link
        self._keys = keys
        self._ttl = ttl
        self._notify, self._renamed = notify, renamed
        self._lock = threading.Lock()  # the guest numbers and the renames' state
        self._guests: deque[int] = deque()
        self._highest_guest = 0
        # Names for newcomers while no block can be had: far above any block, so clashes
        # with the shared counter's numbers are as good as impossible (and resolved if not).
        self._spare_guests = itertools.count(10**8 + secrets.randbelow(9 * 10**8))
        self._refilling = False

    # -- what the hub asks -------------------------------------------------------------

    def arrive(self, session: Session) -> str:
        nick = guest_nick(self._next_guest())
        self.local.register(session, nick)
        self.link.submit(self._claim(session, nick))
        return nick

    def depart(self, session: Session) -> None:
        # Its nick, and the one a /nick still on its way may have claimed: queued after
        # that claim, the release finds whichever this session holds. Read under the
        # lock a granted claim commits under, so a rename cannot land between the reads.
        with self._lock:
            nicks = {session.data.get("nick"), session.data.get("reserved")} - {None}
            self.local.depart(session)

        async def run() -> None:
            pipe = self.link.client.pipeline(transaction=False)
            for nick in nicks:
                await self.release(session, str(nick), pipe)
            await pipe.execute()

        if nicks:
            self.link.clean_up(Op(run, lambda: None))

    def rename(self, session: Session, nick: str) -> Future[str]:
        old = str(session.data["nick"])
        if nick_key(old) == nick_key(nick):  # another spelling of one's own name: no one to ask
            self.local.rename(session, nick)
            self.link.submit(self._claim(session, nick))  # the record shows the new one
            return settled(old)
        self.local.reserve(session, nick)
        op = self._renaming(_Rename(session, nick, old))
        if not self.link.submit(op):
            self.local.cancel(session, nick)
            raise busy()
        return op.future

    def displace(
        self,
        session: Session,
        why: str = "the chat hub lost track of names while it was unreachable",
    ) -> None:
        """Someone on another server holds this session's nick: make it a guest, and say why."""
        if session.data.get("departed"):
            return
        old = str(session.data.get("nick"))
        new = guest_nick(self._next_guest())
        self.local.commit(session, new)
        self.link.submit(self._claim(session, new))
        self._notify(session, f"{old} is in use on another server ({why}): you are {new} now; "
                              "/nick NAME to choose another")  # fmt: skip
        self._renamed(session, old, new)

    def release(self, session: Session, nick: str, pipe: Any = None) -> Any:
        """Free ``nick`` in Redis if this session holds it there (a coroutine, or ``pipe``)."""
        keys, args = [self.key(nick), self._keys["nicks"]], [self.owner(session)]
        return self.link.scripts["release"](keys, args, pipe)

    def owner(self, session: Session) -> str:
        """The start of the records of the session's nicks."""
        return f"{self.server_id}\t{session.id}\t"

    @staticmethod
    def key(nick: str) -> str:
        """The key of ``nick`` (and of its lookalikes) in Redis."""
        return f"{_P}nick:{nick_key(nick)}"

    # -- claims ------------------------------------------------------------------------

    def _claim(self, session: Session, nick: str) -> Op:
        """Claim ``nick`` for the session, which holds it here already; nobody waits."""

        async def run() -> None:
            if session.data.get("departed"):  # its release may have gone first (a resync)
                return
            claimed = await self._claim_script(session, nick, None) == 1
            if not claimed and self.local.holder(nick) is session:
                self.displace(session)  # a guest name or a respelling someone elsewhere has

        return Op(run, lambda: None)  # while Redis is away: claimed when it is back

    def _renaming(self, asked: _Rename) -> Op:
        """Claim a /nick's new name, freeing the old one; its asker awaits the answer."""
        session, nick = asked.session, asked.new

        async def run() -> str:
            if asked.abandoned or session.data.get("departed"):
                self._unreserve(asked)  # not even tried: no one waits for it
                raise _timed_out()
            if await self._claim_script(session, nick, asked.old) != 1:
                self._unreserve(asked)
                raise CommandError(
                    "nick_taken", f"{nick} is taken (or looks too much like a nick in use)"
                )
            with self._lock:
                asked.granted = not asked.abandoned
                if asked.granted:
                    return self.local.commit(session, nick)
            await self._take_back(asked)  # given up on while Redis said yes
            raise _timed_out()

        def fallback() -> None:
            self._unreserve(asked)
            raise CommandError(
                "hub_unreachable",
                "names cannot change while the chat hub is unreachable (no server could check "
                "yours with the others); try again when it is back",
            )

        return Op(run, fallback, future=Answer(lambda: self._given_up(asked)))

    def _claim_script(self, session: Session, nick: str, old: str | None) -> Any:
        """The claim of ``nick`` for the session, freeing ``old`` in the same step."""
        room = session.data.get("room")
        keys = [self.key(nick), self._keys["members"], self._keys["nicks"]]
        keys.append(self.key(old if old is not None else nick))
        args = [self.server_id, self.owner(session) + nick, f"{_P}server:", session.id]
        args += [f"{room}\t{nick}" if room is not None else "", self._ttl, self.owner(session)]
        return self.link.scripts["claim"](keys, args)

    def _unreserve(self, asked: _Rename) -> None:
        """Let go of the name a /nick held here; once, since its asker may try it again."""
        with self._lock:
            done, asked.unreserved = asked.unreserved, True
        if not done:
            self.local.cancel(asked.session, asked.new)

    def _given_up(self, asked: _Rename) -> None:
        """The asker of a /nick stopped waiting: it keeps its old nick (any thread).

        Runs before the asker hears ``hub_timeout``, so before it can try again.
        """
        session = asked.session
        with self._lock:
            if asked.abandoned:
                return
            asked.abandoned = True
            granted = asked.granted
        if not granted:  # the claim, sent or not, sees that no one waits
            self._unreserve(asked)
            return
        if session.data.get("departed"):  # its departure frees both names
            return
        try:
            self.local.rename(session, asked.old)
        except CommandError:  # someone here took the old one meanwhile: keep the new
            self._kept(asked)
            return
        self.link.clean_up(Op(lambda: self._take_back(asked), lambda: None))

    async def _take_back(self, asked: _Rename) -> None:
        """In Redis, give a /nick's asker its old nick back and free the new one."""
        session = asked.session
        if session.data.get("departed"):  # the departure frees the old nick
            await self.release(session, asked.new)
            return
        if await self._claim_script(session, asked.old, asked.new) == 1:
            return
        # A server elsewhere took the old nick in between: the new one stays after all.
        try:
            self.local.rename(session, asked.new)
        except CommandError:  # and someone here took the new one: a guest, then
            await self.release(session, asked.new)
            self.displace(session, f"taken while your /nick {asked.new} timed out")
            return
        if session.data.get("departed"):  # left meanwhile: its departure missed the new one
            await self.release(session, asked.new)
            return
        self._kept(asked)

    def _kept(self, asked: _Rename) -> None:
        old, new = asked.old, asked.new
        self._notify(asked.session, f"your /nick {new} went through after all ({old} was "
                                    f"taken meanwhile): you are {new} now")  # fmt: skip
        self._renamed(asked.session, old, new)

    # -- guest numbers -----------------------------------------------------------------

    def _next_guest(self) -> int:
        with self._lock:
            if self._guests:
                number = self._guests.popleft()
                self._highest_guest = max(self._highest_guest, number)
            else:
                number = next(self._spare_guests)
            low = len(self._guests) < _GUEST_BLOCK // 2
            refill = low and self.link.up and not self._refilling
            self._refilling = self._refilling or refill
        if refill:
            self.link.submit(Op(self.refill, self._refilled))
        return number

    async def refill(self, *, replace: bool = False) -> None:
        """Take a block of guest numbers from the shared counter (``replace``: drop ours)."""
        with self._lock:
            floor = max(self._highest_guest, *self._guests, 0)
        script = self.link.scripts["guests"]
        highest = await script([self._keys["guests"]], [floor, _GUEST_BLOCK])
        with self._lock:
            if replace:
                self._guests.clear()
            self._guests.extend(range(highest - _GUEST_BLOCK + 1, highest + 1))
        self._refilled()

    def _refilled(self) -> None:
        with self._lock:
            self._refilling = False
