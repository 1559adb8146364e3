"""The link under the chat's Redis hub, on a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import threading
from concurrent.futures import Future

import pytest

from enlace.services.hub import HubError
from enlace.services.redis_link import Op, RedisLink
from tests.services.test_redis_hub import RedisServer, running_redis


@pytest.fixture
def redis_server(tmp_path):
    yield from running_redis(tmp_path)


async def _nothing() -> None:
    return None


def test_a_message_its_handler_fails_on_is_logged_and_the_link_stays_up(redis_server, caplog):
    received: queue.Queue[bytes] = queue.Queue()
    downs: list[BaseException] = []

    def on_message(channel: bytes, data: bytes) -> None:
        if data == b"bad":
            raise RuntimeError("a bug in the handler")
        received.put(data)

    link = RedisLink(
        redis_server.url,
        channels=[b"test"],
        scripts={},
        on_message=on_message,
        on_down=downs.append,
        on_up=lambda: None,
        register=_nothing,
        beat=_nothing,
        logger=logging.getLogger("enlace.test"),
    )
    link.start()
    try:
        with redis_server.client() as other:
            other.publish("test", b"bad")
            other.publish("test", b"good")
        assert received.get(timeout=5) == b"good"  # the subscription carried on
        assert link.up and not downs
        assert "a message on b'test' could not be handled" in caplog.text
    finally:
        link.close(_nothing)


def _link(url: str, on_message=lambda channel, data: None) -> RedisLink:
    return RedisLink(
        url,
        channels=[b"test"],
        scripts={},
        on_message=on_message,
        on_down=lambda error: None,
        on_up=lambda: None,
        register=_nothing,
        beat=_nothing,
        logger=logging.getLogger("enlace.test"),
        timeout=1.0,
    )


def test_a_link_that_failed_to_start_can_be_started_again(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    later = RedisServer(tmp_path)  # its port is chosen, nothing listens there yet
    link = _link(later.url)
    with pytest.raises(HubError, match="connection refused"):
        link.start()
    later.start()
    try:
        link.start()
        assert link.up
    finally:
        link.close(_nothing)
        later.stop()


def test_cleanups_go_past_the_cap_and_past_their_share_a_resync_goes_first_once(redis_server):
    ran: list[str] = []
    started, unblock = threading.Event(), Future()

    async def register() -> None:
        ran.append("register")

    async def blocker() -> None:
        ran.append("blocker")
        started.set()
        await asyncio.wrap_future(unblock)  # the link's thread is busy until the test says

    def op(name: str) -> Op:
        async def run() -> str:
            ran.append(name)
            return name

        return Op(run, lambda: f"{name} fell back")

    link = RedisLink(
        redis_server.url,
        channels=[b"test"],
        scripts={},
        on_message=lambda channel, data: None,
        on_down=lambda error: None,
        on_up=lambda: None,
        register=register,
        beat=_nothing,
        logger=logging.getLogger("enlace.test"),
        timeout=5.0,
        max_pending=2,
        max_cleanup=1,
    )
    link.start()
    try:
        assert link.submit(Op(blocker, lambda: None))
        assert started.wait(5)
        ops = {name: op(name) for name in ("a", "b", "c", "clean", "d", "late", "later")}
        assert [link.submit(ops[name]) for name in "abc"] == [True, True, False]  # the cap
        assert link.submit(ops["clean"], cleanup=True)  # past it, on the cleanups' share
        assert not link.submit(ops["d"], cleanup=True)  # the share is taken
        link.clean_up(ops["late"])  # no room at all: it falls back, and a resync is queued
        link.clean_up(ops["later"])  # asked again before it ran: still one resync
        assert ops["late"].future.result(0) == "late fell back"
        assert ops["later"].future.result(0) == "later fell back"
        unblock.set_result(None)
        assert ops["clean"].future.result(5) == "clean"
        assert ran == ["register", "blocker", "register", "a", "b", "clean"]
    finally:
        link.close(_nothing)
