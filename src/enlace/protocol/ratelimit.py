"""Flood control for the chat: a token bucket, and a guard that tells floods from bursts.

A person types in bursts: a few quick lines, then a pause. A flooder sends
without pause. :class:`TokenBucket` lets the bursts through and holds the
long-run rate: it holds up to ``burst`` tokens, refilled at ``rate`` tokens a
second; each message takes one, and a message that finds none is refused. With
the chat's defaults (:data:`FLOOD_BURST`, :data:`FLOOD_RATE`) that is "5
messages at once, then 1 a second".

:class:`FloodGuard` adds the second decision: a client whose messages keep
being refused after it was told to slow down is a *sustained* flooder, and is
disconnected with a reason. Its verdict for each message is one of

- :attr:`Verdict.ALLOW`: deliver the message;
- :attr:`Verdict.REFUSE`: drop it and tell the sender :meth:`FloodGuard.refusal`
  (``slow down: next message in 0.4 s``);
- :attr:`Verdict.DISCONNECT`: more than ``max_refusals`` messages were refused
  within ``window`` seconds; send :meth:`FloodGuard.reason` and close.

So a client is disconnected when it keeps sending faster than ``rate +
max_refusals / window`` messages a second; slower excess is only refused. With
the defaults that is 3 a second: 25 lines pasted at once are 5 delivered and 20
refused, which is not *more* than :data:`FLOOD_MAX_REFUSALS`, and a typist at
2 a second is held to 1 a second; a client sending 4 a second is disconnected
within 10 seconds, and a script in a loop at its 26th message.

Nothing here reads a clock: every method takes ``now``, a reading of a
monotonic clock in seconds (``time.monotonic()`` in the runtimes, plain numbers
in tests). A reading earlier than the previous one (another clock, or a bug)
refills nothing and is otherwise taken as the previous one, so time never runs
backwards inside a bucket.
"""

from __future__ import annotations

import enum
import math
from collections import deque

from enlace.limits import FLOOD_BURST, FLOOD_MAX_REFUSALS, FLOOD_RATE, FLOOD_WINDOW

__all__ = [
    "FLOOD_BURST",
    "FLOOD_MAX_REFUSALS",
    "FLOOD_RATE",
    "FLOOD_WINDOW",
    "FloodGuard",
    "TokenBucket",
    "Verdict",
]

# Tokens are floats: after refills such as 0.1 + 0.2 a bucket may hold
# 0.9999999999999999 of a token where arithmetic says 1; that counts as one.
_EPSILON = 1e-9


class TokenBucket:
    """Up to ``burst`` events at once, then ``rate`` events a second.

    The bucket starts full. :meth:`take` spends one token if there is one;
    :meth:`retry_after` says how long until there is. ``burst`` must be a
    positive integer and ``rate`` a positive, finite number of tokens a second.
    """

    __slots__ = ("_burst", "_capacity", "_last", "_rate", "_tokens")

    def __init__(self, *, burst: int = FLOOD_BURST, rate: float = FLOOD_RATE) -> None:
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be a positive integer, not {burst!r}")
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive, finite number, not {rate!r}")
        self._burst = burst
        self._capacity = float(burst)
        self._rate = float(rate)
        self._tokens = self._capacity
        # Minus infinity: the first reading, whatever it is, starts the clock with a
        # full bucket. A NaN reading compares false and so is ignored.
        self._last = -math.inf

    @property
    def burst(self) -> int:
        """Tokens the bucket holds when full: events allowed at once."""
        return self._burst

    @property
    def rate(self) -> float:
        """Tokens added per second: the long-run rate of events."""
        return self._rate

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (a fraction while the next one fills)."""
        if now > self._last:
            return min(self._capacity, self._tokens + (now - self._last) * self._rate)
        return self._tokens

    def take(self, now: float) -> bool:
        """Spend a token at ``now`` and return ``True``, or return ``False`` if there is none.

        A refusal spends nothing, so a refused sender gets its next token on time.
        """
        tokens = self.tokens(now)
        self._last = max(self._last, now)  # keeps the old reading if ``now`` is NaN
        if tokens >= 1.0 - _EPSILON:
            self._tokens = max(tokens - 1.0, 0.0)
            return True
        self._tokens = tokens
        return False

    def retry_after(self, now: float) -> float:
        """Seconds from ``now`` until :meth:`take` would succeed: ``0.0`` if it would now."""
        missing = 1.0 - self.tokens(now)
        if missing <= _EPSILON:
            return 0.0
        return missing / self._rate


class Verdict(enum.Enum):
    """What to do with one message: see :meth:`FloodGuard.check`."""

    ALLOW = "allow"
    REFUSE = "refuse"
    DISCONNECT = "disconnect"


class FloodGuard:
    """A :class:`TokenBucket` per client, and the rule that ends a sustained flood.

    :meth:`check` gives each message its :class:`Verdict`. More than
    ``max_refusals`` refusals within ``window`` seconds make it
    :attr:`Verdict.DISCONNECT`, and every later verdict too: the client is to be
    closed, and messages it had already sent must not slip through.
    ``max_refusals=None`` never disconnects (refusing is then the only defence).
    """

    __slots__ = ("_bucket", "_flooded", "_max_refusals", "_refusals", "_window")

    def __init__(
        self,
        *,
        burst: int = FLOOD_BURST,
        rate: float = FLOOD_RATE,
        max_refusals: int | None = FLOOD_MAX_REFUSALS,
        window: float = FLOOD_WINDOW,
    ) -> None:
        if max_refusals is not None and (
            isinstance(max_refusals, bool) or not isinstance(max_refusals, int) or max_refusals < 0
        ):
            raise ValueError(f"max_refusals must be an integer >= 0 or None, not {max_refusals!r}")
        if not (isinstance(window, int | float) and math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a positive, finite number of seconds, not {window!r}")
        self._bucket = TokenBucket(burst=burst, rate=rate)
        self._max_refusals = max_refusals
        self._window = float(window)
        # The times of the latest max_refusals + 1 refusals: when the oldest of them is
        # younger than the window, there were more than max_refusals within it.
        self._refusals: deque[float] = deque(
            maxlen=None if max_refusals is None else max_refusals + 1
        )
        self._flooded = False

    @property
    def bucket(self) -> TokenBucket:
        """The token bucket that paces this client."""
        return self._bucket

    @property
    def max_refusals(self) -> int | None:
        return self._max_refusals

    @property
    def window(self) -> float:
        return self._window

    @property
    def flooded(self) -> bool:
        """Whether a verdict was :attr:`Verdict.DISCONNECT` (all later ones are)."""
        return self._flooded

    def check(self, now: float) -> Verdict:
        """The verdict on a message that arrives at ``now``; counts it either way."""
        if self._flooded:
            return Verdict.DISCONNECT
        if self._bucket.take(now):
            return Verdict.ALLOW
        limit = self._max_refusals
        if limit is None:
            return Verdict.REFUSE
        refusals = self._refusals
        refusals.append(now)
        if len(refusals) > limit and now - refusals[0] < self._window:
            self._flooded = True
            return Verdict.DISCONNECT
        return Verdict.REFUSE

    def retry_after(self, now: float) -> float:
        """Seconds from ``now`` until the next message would be allowed."""
        return self._bucket.retry_after(now)

    def refusal(self, now: float) -> str:
        """What to tell a refused sender: ``slow down: next message in 0.4 s``.

        The wait is rounded up to a tenth of a second, so a sender that waits
        as told is never refused for being a few microseconds early.
        """
        wait = math.ceil(self.retry_after(now) * 10 - _EPSILON) / 10
        return f"slow down: next message in {max(wait, 0.1):.1f} s"

    def reason(self) -> str:
        """Why a flooder is disconnected, for the last message it gets."""
        return (
            f"flooding: more than {self._max_refusals} messages refused within "
            f"{self._window:g} s; you are disconnected"
        )
