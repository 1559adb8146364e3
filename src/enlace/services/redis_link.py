"""Redis on a thread of its own, for a server that must go on when Redis does not.

:class:`RedisLink` is the machinery under :class:`~enlace.services.redis_hub.RedisHub`:

- **its own event loop**, in a daemon thread, running :mod:`redis.asyncio`, so
  neither runtime's threads nor its event loop ever wait on Redis: they hand
  an :class:`Op` to :meth:`RedisLink.submit` and go on;
- **one bounded FIFO queue**, served one operation after another, so what a
  server asks happens in the order it asked; runs of operations marked
  ``batch`` (chat lines) share one pipeline, one round trip. Past
  ``max_pending`` operations :meth:`~RedisLink.submit` says no rather than let
  the queue grow, except to *cleanups* (what a departed client leaves to undo),
  which may use ``max_cleanup`` places more: refusing those would leave a name
  taken. Should even those run out, :meth:`~RedisLink.resync` (re-registering
  everything this server holds, which undoes whatever a departure left) is
  queued first, once however often it is asked for;
- **a timeout on every call**, and no retries inside redis-py: the link decides;
- **a subscription** to some channels, whose messages go to ``on_message`` in
  the order Redis sent them;
- **outages**: a failed or timed-out call, or a broken subscription, makes the
  link *down*: ``on_down`` is called once, every operation then runs its
  ``fallback`` (this server on its own), and the link reconnects with a backoff
  doubling from 50 ms to ``max_backoff``. Back, it subscribes again, runs
  ``register`` before any other operation, and calls ``on_up``;
- **a heartbeat**: ``beat`` runs every ``heartbeat`` seconds while the link is up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from enlace.limits import (
    HUB_HEARTBEAT,
    HUB_MAX_BACKOFF,
    HUB_TIMEOUT,
    MAX_HUB_BATCH,
    MAX_HUB_CLEANUP,
    MAX_HUB_PENDING,
)
from enlace.services.commands import CommandError
from enlace.services.hub import HubError

__all__ = ["Answer", "Op", "RedisLink", "busy", "reason"]

_UNREACHABLE_ERRORS = (
    redis.exceptions.ConnectionError,  # BusyLoadingError (a Redis loading its data) too
    redis.exceptions.TimeoutError,
    TimeoutError,
    OSError,
)


class Answer(Future[Any]):
    """A future that tells ``on_abandon`` when whoever waits on it gives up.

    The chat cancels the future it waited for when it gives up (its
    ``hub_timeout``), even one that already holds its result: then
    :meth:`cancel` returns False, as always, but ``on_abandon`` runs all the same
    (on the canceller's thread, at each call, so it must be idempotent:
    :func:`asyncio.wrap_future` cancels it too), so an operation can undo what
    its asker was told did not happen.
    """

    def __init__(self, on_abandon: Callable[[], None]) -> None:
        super().__init__()
        self._on_abandon = on_abandon

    def cancel(self) -> bool:
        cancelled = super().cancel()
        self._on_abandon()
        return cancelled


class Op:
    """One operation for the link's thread, and what to do instead while Redis is away.

    ``run`` does the work with Redis (its result completes :attr:`future`);
    ``fallback`` does without (it also runs on the caller's thread if the link
    is not running). ``batch``, instead of ``run``, adds the operation's
    commands to a pipeline shared with the batched operations queued next to it.
    ``needs_redis`` operations run even while the link is down (that is how it
    comes back), and fail instead of falling back. ``future``, if given, is the
    :attr:`future` to complete (an :class:`Answer`, say).
    """

    __slots__ = ("batch", "fallback", "future", "needs_redis", "run")

    def __init__(
        self,
        run: Callable[[], Awaitable[Any]] | None,
        fallback: Callable[[], Any],
        *,
        batch: Callable[[Any], Awaitable[Any]] | None = None,
        needs_redis: bool = False,
        future: Future[Any] | None = None,
    ) -> None:
        self.run = run
        self.fallback = fallback
        self.batch = batch
        self.needs_redis = needs_redis
        self.future: Future[Any] = Future() if future is None else future


def reason(error: BaseException, timeout: float = HUB_TIMEOUT) -> str:
    """What went wrong, in a few words: the operating system's, when it said something."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            # asyncio words ECONNREFUSED as "Connect call failed (...)": say it plainly.
            return (os.strerror(cause.errno) if cause.errno else str(cause.strerror)).lower()
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, TimeoutError | redis.exceptions.TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(error) or type(error).__name__


def busy() -> CommandError:
    """The refusal of an operation the queue had no room for."""
    return CommandError(
        "hub_busy", "the chat hub is not keeping up; nothing was sent: try again in a moment"
    )


def _resolve(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except InvalidStateError:  # the asker stopped waiting; the work is done anyway
        pass


def _where(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _raise_if_cancelled() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _check_version(where: str, version: str) -> None:
    # SET ... GET (the heartbeat) came with Redis 6.2.
    numbers = tuple(int(n) for n in version.split(".")[:2] if n.isdigit())
    if numbers < (6, 2):
        raise HubError(f"the chat hub at {where} runs Redis {version}; 6.2 or newer is needed")


async def _nothing() -> None:
    return None


class RedisLink:
    """A connection to Redis at ``url`` that a server can lean on and live without.

    ``scripts`` (name -> Lua source) become :attr:`scripts` (name -> callable
    ``script(keys, args[, pipeline])``). The callbacks run on the link's thread
    and must not block: ``on_message(channel, data)``, ``on_down(error)`` when
    Redis is lost, ``on_up()`` when it is back; ``register()`` and ``beat()``
    are coroutines.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: list[bytes],
        scripts: dict[str, str],
        on_message: Callable[[bytes, bytes], None],
        on_down: Callable[[BaseException], None],
        on_up: Callable[[], None],
        register: Callable[[], Awaitable[Any]],
        beat: Callable[[], Awaitable[Any]],
        logger: logging.Logger,
        timeout: float = HUB_TIMEOUT,
        heartbeat: float = HUB_HEARTBEAT,
        max_backoff: float = HUB_MAX_BACKOFF,
        max_pending: int = MAX_HUB_PENDING,
        max_cleanup: int = MAX_HUB_CLEANUP,
    ) -> None:
        self.url = url
        #: ``url`` without its password.
        self.where = _where(url)
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.max_backoff = max_backoff
        self.max_pending = max_pending
        self.max_cleanup = max_cleanup
        self.logger = logger
        self.scripts: dict[str, Any] = {}
        #: Whether Redis answers (then operations run, else they fall back).
        self.up = False
        self._channels = channels
        self._sources = scripts
        self._on_message, self._on_down, self._on_up = on_message, on_down, on_up
        self._register, self._beat = register, beat
        self._lock = threading.Lock()  # the queue
        self._ops: deque[Op] = deque()
        self._idle = True
        self._overflowing = False
        self._resync_queued = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake: asyncio.Event | None = None
        self._redis: redis.asyncio.Redis | None = None
        self._pubsub: Any = None
        self._tasks: dict[str, asyncio.Task[Any] | None] = {}

    @property
    def client(self) -> redis.asyncio.Redis:
        """The Redis client, for the link's thread (inside ``run``, ``register``, ``beat``)."""
        assert self._redis is not None, "the link is not started"
        return self._redis

    @property
    def pending(self) -> int:
        """Operations waiting for the link's thread (besides those it is running)."""
        with self._lock:
            return len(self._ops)

    # -- starting and stopping ---------------------------------------------------------

    def start(self) -> None:
        """Connect, subscribe, ``register``; raise :class:`HubError` if Redis cannot be had."""
        if self._thread is not None:
            return
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="enlace-hub", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result(3 * self.timeout)
        except Exception as exc:  # whatever it was, the link cannot start
            self._stop_loop()
            self._thread = None  # not started, so start() may be tried again
            if isinstance(exc, HubError):
                raise
            raise HubError(
                f"cannot reach the chat hub at {self.where}: {reason(exc, self.timeout)}"
            ) from None

    def close(self, goodbye: Callable[[], Awaitable[Any]]) -> None:
        """Run what is queued (bounded), then ``goodbye`` if Redis is up; stop the thread."""
        loop = self._loop
        if loop is None or self._closing:
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._close(goodbye), loop)
            future.result(3 * self.timeout)
        except Exception as exc:  # noqa: BLE001 - closing goes on whatever happened
            self.logger.warning("chat hub: closing: %s", reason(exc, self.timeout))
        self._closing = True
        self._stop_loop()

    async def _open(self) -> None:
        try:
            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),  # the link decides when to try again
            )
        except ValueError as exc:
            raise HubError(f"{self.where} is not a Redis URL: {exc}") from None
        self._redis = client
        self.scripts = {name: client.register_script(text) for name, text in self._sources.items()}
        self._wake = asyncio.Event()
        try:
            async with asyncio.timeout(self.timeout):
                info = await client.info("server")
            _check_version(self.where, str(info.get("redis_version", "0")))
            async with asyncio.timeout(self.timeout):
                await self._subscribe()
            async with asyncio.timeout(self.timeout):
                await self._register()
        except BaseException:
            await self._unsubscribe()
            await client.aclose()
            raise
        self.up = True
        self._tasks["worker"] = asyncio.create_task(self._work())
        self._tasks["heartbeat"] = asyncio.create_task(self._beat_forever())

    async def _close(self, goodbye: Callable[[], Awaitable[Any]]) -> None:
        last = Op(_nothing, lambda: None)
        if self.submit(last):  # everything queued before it has run once it has
            try:
                await asyncio.wait_for(asyncio.wrap_future(last.future), self.timeout)
            except TimeoutError:
                self.logger.warning("chat hub: closing before the queue was done")
        self._closing = True
        if self.up:
            try:
                async with asyncio.timeout(self.timeout):
                    await goodbye()
            except Exception as exc:  # noqa: BLE001 - the others will see us expire instead
                self.logger.warning("chat hub: leaving: %s", reason(exc, self.timeout))
        self.up = False
        tasks = [task for task in self._tasks.values() if task is not None]
        for task in tasks:
            task.cancel()
        # Waited for, so that no exception of theirs goes unretrieved; bounded, because
        # redis-py may turn a cancellation into an error of its own and carry on.
        await asyncio.wait(tasks, timeout=self.timeout)
        await self._unsubscribe()
        await self.client.aclose()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = None  # from now on every operation falls back at once
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout)
        if not thread.is_alive():
            loop.close()

    # -- the queue ---------------------------------------------------------------------

    def submit(self, op: Op, *, first: bool = False, cleanup: bool = False) -> bool:
        """Queue ``op`` (``first``: ahead of the others); False if the queue is full.

        ``cleanup`` operations may use ``max_cleanup`` places past ``max_pending``.
        Any thread. If the link is not running, ``op`` falls back at once.
        """
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._closing:
            self._fall_back(op)
            return True
        room = self.max_pending + (self.max_cleanup if cleanup else 0)
        with self._lock:
            if len(self._ops) >= room and not first:
                if not self._overflowing:
                    self._overflowing = True
                    self.logger.warning(
                        "chat hub: %d operations waiting for Redis; refusing more until it "
                        "catches up",
                        len(self._ops),
                    )
                return False
            if first:
                self._ops.appendleft(op)
            else:
                self._ops.append(op)
            idle, self._idle = self._idle, False
        if idle:
            loop.call_soon_threadsafe(wake.set)
        return True

    def clean_up(self, op: Op) -> None:
        """Queue ``op``, which undoes what someone left behind, so that it is never lost.

        Past even the cleanups' share of the queue, ``op`` falls back here and now
        and :meth:`resync` is queued: re-registering undoes whatever anyone left.
        """
        if not self.submit(op, cleanup=True):
            if self.resync():
                self.logger.warning("chat hub: no room left for cleanups; registering again")
            self._fall_back(op)

    def resync(self) -> bool:
        """Run ``register`` again before anything else queued; any thread.

        Asked again before that ``register`` has started, it is still queued once:
        then this returns False.
        """
        with self._lock:
            if self._resync_queued:
                return False
            self._resync_queued = True
        self.submit(Op(self._resyncing, self._resynced), first=True)
        return True

    async def _resyncing(self) -> None:
        self._resynced()  # from here on, a new request needs a register of its own
        await self._register()

    def _resynced(self) -> None:
        # Falling back (Redis away) needs nothing more: coming back registers anyway.
        with self._lock:
            self._resync_queued = False

    async def _work(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._closing:
            await wake.wait()
            wake.clear()
            while batch := self._take():
                await self._execute(batch)

    def _take(self) -> list[Op]:
        with self._lock:
            if not self._ops:
                self._idle = True
                self._overflowing = False
                return []
            batch = [self._ops.popleft()]
            if batch[0].batch is not None:
                while self._ops and self._ops[0].batch is not None and len(batch) < MAX_HUB_BATCH:
                    batch.append(self._ops.popleft())
            return batch

    async def _execute(self, batch: list[Op]) -> None:
        first = batch[0]
        if not (self.up or first.needs_redis):
            for op in batch:
                self._fall_back(op)
            return
        try:
            if first.batch is not None:
                pipe = self.client.pipeline(transaction=False)
                for op in batch:
                    assert op.batch is not None
                    await op.batch(pipe)
                async with asyncio.timeout(self.timeout):
                    await pipe.execute()
                for op in batch:
                    _resolve(op.future)
            else:
                assert first.run is not None
                # A timeout scope, not wait_for: no inner task to outlive a cancellation.
                async with asyncio.timeout(self.timeout):
                    value = await first.run()
                _resolve(first.future, value)
        except _UNREACHABLE_ERRORS as exc:
            _raise_if_cancelled()  # redis-py reports a cancellation as a lost connection
            self.lost(exc)
            for op in batch:
                if op.needs_redis:
                    _resolve(op.future, error=exc)
                else:
                    self._fall_back(op)
        except Exception as exc:  # a refusal, or a bug: the asker gets it either way
            if not isinstance(exc, CommandError):
                self.logger.exception("chat hub: operation failed")
            for op in batch:
                _resolve(op.future, error=exc)

    def _fall_back(self, op: Op) -> None:
        try:
            _resolve(op.future, op.fallback())
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits on the future
            _resolve(op.future, error=exc)

    # -- subscription, outages, heartbeat --------------------------------------------

    async def _subscribe(self) -> None:
        await self._unsubscribe()
        pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)  # untyped in redis
        try:
            await pubsub.subscribe(*self._channels)
        except BaseException:
            await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self._tasks["reader"] = asyncio.create_task(self._read(pubsub))

    async def _unsubscribe(self) -> None:
        reader, self._tasks["reader"] = self._tasks.get("reader"), None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pubsub.aclose()
            except Exception as exc:  # noqa: BLE001 - the connection is being dropped anyway
                self.logger.debug("chat hub: dropping the subscription: %s", reason(exc))

    async def _read(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self._handle(message["channel"], message["data"])
        except Exception as exc:  # whatever broke it, subscribe again
            if not isinstance(exc, _UNREACHABLE_ERRORS):
                self.logger.exception("chat hub: the subscription failed")
            self._tasks["reader"] = None
            self.lost(exc)

    def _handle(self, channel: bytes, data: bytes) -> None:
        try:
            self._on_message(channel, data)
        except Exception:  # a bug handling one message: Redis is fine, so no outage
            self.logger.exception("chat hub: a message on %r could not be handled", channel)

    def lost(self, error: BaseException) -> None:
        """Redis failed us: go down (once) and reconnect. The link's thread."""
        if self._closing:
            return
        if self.up:
            self.up = False
            self.logger.warning(
                "chat hub at %s unreachable (%s): this server goes on alone until it returns",
                self.where,
                reason(error, self.timeout),
            )
            self._on_down(error)
        reconnecting = self._tasks.get("reconnect")
        if reconnecting is None or reconnecting.done():
            self._tasks["reconnect"] = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self._closing:
            await asyncio.sleep(delay)  # a backoff, not a synchronization
            delay = min(2 * delay, self.max_backoff)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._subscribe()
                op = Op(self._come_back, lambda: None, needs_redis=True)
                self.submit(op, first=True)
                await asyncio.wrap_future(op.future)
            except Exception as exc:  # noqa: BLE001 - not back yet: try again later
                self.logger.debug("chat hub: still unreachable: %s", reason(exc, self.timeout))
                await self._unsubscribe()
                continue
            return

    async def _come_back(self) -> None:
        await self._register()
        # Still on the queue's turn: every operation after this one finds Redis up.
        self.up = True
        self.logger.warning("chat hub at %s reachable again", self.where)
        self._on_up()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if not self.up:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    await self._beat()
            except _UNREACHABLE_ERRORS as exc:
                self.lost(exc)
            except Exception:  # a bug: say so, and beat again
                self.logger.exception("chat hub: heartbeat failed")
