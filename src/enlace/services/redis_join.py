"""Joining a room on the Redis hub: the replay, then every event since, each once, in order.

A join is one Lua script (``enter``): it reads the room's sequence number
(``before``) and history, and publishes the ``join`` event. Events of the room
that reach this server while the script's answer is on its way are held for
the joiner in a :class:`Joining`; once the answer is here, the joiner gets the
replay (every kept event up to ``before``), then the held events numbered above
``before``: nothing twice, nothing missing between the replay and what comes live.

**Bounded.** A joiner holds at most ``max_held`` events
(:data:`~enlace.limits.MAX_HUB_HELD`): the newest. Past that, each new event
lets the oldest held one go, and the joiner remembers the number of the newest
it let go. Sequence numbers have no gaps (every ``INCR`` of a room's counter
publishes one event) and the subscription delivers them in order, so the held
events are the run of numbers after that one. Letting the oldest go, not the
newest, matters: a join that waits its turn in a busy hub sees many events
numbered up to ``before``, which the replay already has, and then the few
after it, which it needs; those are the ones held.

**Read back.** If the joiner let go of an event numbered above what it has,
:meth:`Joining.catch_up` reads what the history still has: the ``recover``
script returns the room's current number and each kept event numbered above
what the joiner has, with its number (``enlace:room:ROOM:seqs`` holds the
number of each history entry, in step with the history). What was read and
what is held are merged by number (a kept event may come both ways; it is given
once) and given in order. Should the joiner let go of more events during that
read than it can hold (more than ``max_held`` in one round trip), it reads
again from where it is, at most :data:`~enlace.limits.MAX_HUB_REREADS` times.

**Told.** What nothing brings back is counted exactly, from the numbers: events
not kept in the history (``join``/``leave``/``nick`` notices, the assistant's
streamed fragments), kept events that fell out of the history meanwhile (more
than ``max_history`` of them since), and all that was let go once the reads are
used up or Redis failed. The joiner then gets one notice, :data:`MISSED`, after
the events it did get, and the server logs a warning. If Redis was emptied
meanwhile (its numbers restart), the joiner gets what it holds, in the order it
came, and the count of what it let go.

Reading the whole join again instead would be simpler, but it would give as a
replay what the joiner should have seen live, lose every notice of the time
between, and could not say what was lost; reading only what is missing keeps
live events live and the count exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from enlace.limits import MAX_HUB_HELD, MAX_HUB_REREADS

__all__ = ["MISSED", "Held", "Joining", "Reader"]

#: The notice a joiner gets when some events of the room could not reach it.
MISSED = (
    "while you joined {room}, {count} of its events could not reach you: they came faster "
    "than the chat hub could hold them, and its history does not have them"
)

#: An event held for a joiner: its number in the room, whether it is kept, the event.
Held = tuple[int, bool, dict[str, Any]]
#: Reads the room's current number and its kept events numbered above the argument.
Reader = Callable[[int], Awaitable[tuple[int, dict[int, dict[str, Any]]]]]


class Joining:
    """A session between entering ``room`` and being caught up: the room's events wait here.

    The hub's thread calls :meth:`hold` for each event of the room and
    :meth:`catch_up` once the join's answer is here; :attr:`left` is set
    (any thread) when the session stops being this room's joiner.
    """

    __slots__ = (
        "evicted", "held", "left", "let_go", "max_held", "missed", "room", "started", "unkept",
    )  # fmt: skip

    def __init__(self, room: str, *, max_held: int | None = MAX_HUB_HELD) -> None:
        self.room = room
        self.max_held = max_held
        #: The newest events of the room, oldest first: a run of numbers.
        self.held: deque[Held] = deque()
        #: The number of the newest event let go (0: none; numbers start at 1).
        self.evicted = 0
        #: Events let go since the last read began.
        self.let_go = 0
        #: Events not kept in the history that were let go: only Redis's absence needs it.
        self.unkept = 0
        #: The session left the room, or was caught up: give nothing more.
        self.left = False
        #: The replay was given (Redis answered the join).
        self.started = False
        #: Events of the room that could not reach the joiner.
        self.missed = 0

    def hold(self, seq: int, keep: bool, event: dict[str, Any]) -> bool:
        """Hold the event numbered ``seq``; False if that let the oldest held one go."""
        self.held.append((seq, keep, event))
        if self.max_held is None or len(self.held) <= self.max_held:
            return True
        old, old_keep, _ = self.held.popleft()
        self.evicted = old
        self.let_go += 1
        self.unkept += not old_keep
        return False

    async def catch_up(
        self,
        push: Callable[[dict[str, Any]], None],
        replay: list[dict[str, Any]],
        before: int,
        read: Reader,
        *,
        max_rereads: int = MAX_HUB_REREADS,
    ) -> None:
        """Give the joiner ``replay``, then the room's events numbered above ``before``.

        ``read`` fetches what was let go (see the module docstring); what
        nothing brings back is counted in :attr:`missed`. On the hub's thread,
        from the join's operation: the caller must stop holding (and tell the
        joiner about :attr:`missed`) as soon as this returns or raises, before
        another event can arrive. A failing ``read`` (Redis lost) is raised
        once the joiner has all it can get.
        """
        if self.left:
            return
        self.started = True
        for event in replay:
            push({**event, "replay": True})
        have = read_to = before  # given (or missed) up to ``have``; kept ones read to ``read_to``
        recovered: dict[int, dict[str, Any]] = {}
        rereads, failure = 0, None
        while not self.left:
            if self.evicted <= read_to or failure is not None or rereads >= max_rereads:
                newest = self.held[-1][0] if self.held else read_to
                self._give(push, have, max(read_to, newest), recovered)
                break
            have = self._give(push, have, read_to, recovered)
            gap, self.let_go, rereads = self.evicted - have, 0, rereads + 1
            try:
                read_to, recovered = await read(have)
            except BaseException as exc:  # noqa: BLE001 - given what it has first, then raised
                failure, read_to, recovered = exc, have, {}
                continue
            if read_to < have:  # Redis was emptied: numbers restarted, the history is gone
                self.missed += gap + self.let_go
                for _seq, _keep, event in self.held:
                    push(event)  # what came since, in the order it came
                self.held.clear()
                break
        if failure is not None:
            raise failure

    def _give(
        self,
        push: Callable[[dict[str, Any]], None],
        have: int,
        upto: int,
        recovered: dict[int, dict[str, Any]],
    ) -> int:
        """Push the events numbered in (``have``, ``upto``], in order; count the missing.

        Held events up to ``upto`` are let go of: given, or older than the join.
        """
        events = {seq: event for seq, event in recovered.items() if have < seq <= upto}
        while self.held and self.held[0][0] <= upto:
            seq, _keep, event = self.held.popleft()
            if seq > have:
                events.setdefault(seq, event)  # a kept event read back is the same event
        for seq in sorted(events):
            push(events[seq])
        if upto <= have:
            return have
        self.missed += upto - have - len(events)
        return upto
