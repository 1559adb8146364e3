"""The chat across two servers through a real redis-server, on every runtime.

Each test starts its own ``redis-server`` on a free port (no persistence) and
two chat servers in this process, each with its own :class:`RedisHub`; people
connect to one or the other over real sockets. Skipped, with the reason, only
where ``redis-server`` is not installed (``scripts/test`` installs it).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from enlace.limits import MAX_HUB_CLEANUP
from enlace.services.chat import ChatService
from enlace.services.commands import CommandError
from enlace.services.hub import HubError
from enlace.services.redis_hub import BACK, UNREACHABLE, RedisHub
from enlace.services.store import MemoryStore
from tests.cli.support import free_port, read_until
from tests.services.test_chat import Person, join


class RedisServer:
    """Our own ``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, directory) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        read_until(self.process, b"Ready to accept connections", timeout=10)

    def stop(self) -> None:
        """SIGTERM by PID, as an operator would; wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


def running_redis(directory) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` for a fixture to yield; skips where there is none."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path):
    yield from running_redis(tmp_path)


@pytest.fixture
def chat_on(serve, redis_server):
    """``chat_on()`` starts one more chat server on the shared Redis; returns its address."""
    hubs: list[RedisHub] = []

    def start(max_history: int = 5, *, hub: dict | None = None, **options) -> tuple[str, int]:
        # Quick heartbeats and reconnects: a test that goes wrong fails in seconds.
        bounds = {"heartbeat": 0.2, "presence_ttl": 1.0, "max_backoff": 0.2, **(hub or {})}
        started = RedisHub(redis_server.url, max_history=max_history, **bounds).start()
        hubs.append(started)
        return serve(ChatService(hub=started, flood_burst=None, **options)).address

    start.hubs = hubs
    yield start
    for hub in hubs:
        hub.close()


def until_all(person: Person, *wanted: str) -> list[str]:
    """Lines up to the one by which each of ``wanted`` has appeared, in whatever order.

    On a remote hub an event about oneself (joining, a new nick) travels through
    Redis, so it may come just before or just after the command's reply.
    """
    seen: list[str] = []
    while not all(any(text in line for line in seen) for text in wanted):
        seen.append(person.line())
    return seen


def messages(person: Person, count: int) -> list[str]:
    """The next ``count`` chat lines ``person`` reads (other lines are skipped)."""
    seen: list[str] = []
    while len(seen) < count:
        line = person.line()
        if line.startswith("["):
            seen.append(line)
    return seen


def test_lines_cross_servers_in_one_order_for_everyone(chat_on):
    a, b = chat_on(), chat_on()
    ana, carla, bob = join(a, "ana"), join(a, "carla"), join(b, "bob")
    for n in range(10):  # both at once, on two servers
        ana.send(f"ana {n}")
        bob.send(f"bob {n}")
    seen = {person: messages(person, 20) for person in (ana, carla, bob)}
    order = seen[ana]
    assert seen[carla] == order and seen[bob] == order  # the same order on both servers
    for nick in ("ana", "bob"):
        assert [line for line in order if f"] {nick}: " in line] == [
            f"[general] {nick}: {nick} {n}" for n in range(10)
        ]
    for person in (ana, carla, bob):
        person.close()


@pytest.mark.parametrize(
    ("taken", "lookalike"),
    [
        ("Alice", "alice"),
        ("Alice", "\uff21lice"),  # fullwidth A
        ("TOM", "\u0422\u041e\u041c"),  # all Cyrillic, looks the same
    ],
)
def test_nicknames_are_unique_across_servers(chat_on, taken, lookalike):
    a, b = chat_on(), chat_on()
    first = join(a, taken)
    other = Person(b)
    other.send(f"/nick {lookalike}")
    assert other.until("ERR")[-1] == (
        f"ERR nick_taken: {lookalike} is taken (or looks too much like a nick in use)"
    )
    first.close()  # the name is free again once its holder has gone
    assert other.until("left the chat")[-1] == f"* {taken} left the chat"
    other.send(f"/nick {lookalike}")
    assert other.until("you are now")[-1] == f"you are now {lookalike}"
    other.close()


def test_guest_names_are_unique_across_servers(chat_on):
    a, b = chat_on(), chat_on()
    people = [Person(address) for address in (a, b, a, b, a, b)]
    guests = set()
    for person in people:
        person.send("/ping")  # its pong may come before the welcome, which the hub sends
        lines = person.until("joined general")
        (welcome,) = [line for line in lines if line.startswith("* welcome, guest-")]
        guests.add(welcome.split(",")[1].strip())
    assert len(guests) == len(people)
    for person in people:
        person.close()


def test_who_and_rooms_count_both_servers(chat_on):
    a, b = chat_on(), chat_on()
    ana, bob, carla = join(a, "ana"), join(b, "bob"), join(a, "carla")
    for person in (ana, bob):
        person.send("/join python")
        person.until("you are in python")
    carla.send("/who python")
    assert carla.until("python:")[-1] == "python: ana, bob"
    bob.send("/who general")
    assert bob.until("general:")[-1] == "general: carla"
    bob.send("/rooms")
    assert bob.until("python (")[-2:] == ["general (1)", "python (2)"]
    for person in (ana, bob, carla):
        person.close()


def test_the_history_of_one_server_is_replayed_on_the_other(chat_on):
    a, b = chat_on(max_history=5), chat_on(max_history=5)
    ana = join(a, "ana")
    ana.send("/join python")
    ana.until("you are in python")
    for n in range(7):  # the room keeps the last 5
        ana.send(f"mensaje {n}")
    ana.until("mensaje 6")
    bob = join(b, "bob")
    bob.send("/join #Python")
    lines = until_all(bob, "you are in python", "* bob joined python")
    replay = [line for line in lines if line.startswith("[python]")]
    assert replay == [f"[python] ana: mensaje {n}" for n in range(2, 7)]
    assert ana.until("joined python")[-1] == "* bob joined python"
    bob.send("/history 2")
    assert bob.until("messages of python") == [
        "[python] ana: mensaje 5",
        "[python] ana: mensaje 6",
        "2 messages of python",
    ]
    watcher = Person(b, json_form=True)  # JSON clients get the replay as events
    watcher.request("join", "python")
    events = [watcher.event("message") for _ in range(5)]
    assert [event["text"] for event in events] == [f"mensaje {n}" for n in range(2, 7)]
    assert all(event["replay"] is True and event["from"] == "ana" for event in events)
    for person in (ana, bob, watcher):
        person.close()


def test_private_messages_cross_servers_and_reach_only_the_two(chat_on):
    a, b = chat_on(), chat_on()
    ana, bob, eve = join(a, "ana"), join(b, "bob"), join(b, "eve")
    ana.send("/msg BOB secreto")
    assert bob.until("secreto")[-1] == "[private] ana -> bob: secreto"
    assert ana.until("secreto")[-1] == "[private] ana -> bob: secreto"
    eve.send("/ping")
    assert not any("secreto" in line for line in eve.until("pong"))
    ana.send("/msg nadie hola")
    assert ana.until("ERR")[-1] == "ERR no_such_nick: nobody is called nadie"
    for person in (ana, bob, eve):
        person.close()


def test_without_redis_each_server_goes_on_alone_then_joins_up_again(chat_on, redis_server):
    a, b = chat_on(), chat_on()
    ana, carla, bob = join(a, "ana"), join(a, "carla"), join(b, "bob")
    redis_server.stop()
    for person in (ana, carla, bob):
        assert person.until("chat hub")[-1] == f"* {UNREACHABLE}"
    ana.send("solo aqui")
    assert carla.until("solo aqui")[-1] == "[general] ana: solo aqui"  # this server still chats
    ana.send("/nick anita")
    assert ana.until("ERR")[-1].startswith("ERR hub_unreachable: names cannot change while")
    bob.send("/who")
    assert bob.until("general:")[-1] == (
        "general: bob (this server only: the chat hub is unreachable)"
    )
    bob.send("/msg ana hola")
    assert bob.until("ERR")[-1].startswith("ERR hub_unreachable: nobody is called ana on this")

    redis_server.start()  # the same port, empty: both servers register again
    for person in (ana, carla, bob):
        assert person.until("chat hub")[-1] == f"* {BACK}"
    bob.send("de vuelta")
    assert ana.until("de vuelta")[-1] == "[general] bob: de vuelta"
    lines = bob.until("de vuelta")
    assert not any("solo aqui" in line for line in lines)
    carla.send("/nick ana")  # still held by ana, registered again
    assert carla.until("ERR")[-1].startswith("ERR nick_taken: ")
    bob.send("/who")
    assert bob.until("general:")[-1] == "general: ana, bob, carla"
    for person in (ana, carla, bob):
        person.close()


def test_a_name_taken_elsewhere_while_forgotten_makes_its_holder_a_guest(chat_on, redis_server):
    a = chat_on()
    ana = join(a, "ana")
    (hub,) = chat_on.hubs
    # Another server (alive) took "ana" while Redis had forgotten this one, say after a
    # restart: the heartbeat finds this server expired and registers it again.
    with redis_server.client() as other:
        other.set("enlace:server:other", "1", px=60_000)
        other.set("enlace:nick:ana", "other\t1\tana")
        other.delete(f"enlace:server:{hub.server_id}")
    notice = ana.until("is in use on another server")[-1]
    assert notice.startswith("* ana is in use on another server (the chat hub lost track")
    guest = notice.split("you are ")[1].split(" now")[0]
    assert guest.startswith("guest-")
    assert ana.until("known as")[-1] == f"* ana is now known as {guest}"
    ana.send("/nick ana")
    assert ana.until("ERR")[-1].startswith("ERR nick_taken: ")
    ana.close()


def test_a_hub_that_cannot_start_says_why_in_one_line():
    port = free_port()  # nothing listens there
    with pytest.raises(HubError) as failure:
        RedisHub(f"redis://:secreto@127.0.0.1:{port}/0", timeout=1).start()
    assert str(failure.value) == (
        f"cannot reach the chat hub at redis://127.0.0.1:{port}/0: connection refused"
    )  # and never the password
    with pytest.raises(HubError, match=r"^http://example\.org/ is not a Redis URL: "):
        RedisHub("http://example.org/").start()


def test_a_hub_keeps_the_history_so_it_excludes_a_store():
    hub = RedisHub("redis://127.0.0.1:1/0")  # never started
    with pytest.raises(ValueError, match="the hub keeps the history"):
        ChatService(hub=hub, store=MemoryStore())
    with pytest.raises(ValueError, match="the hub keeps the history"):
        ChatService(hub=hub, max_history=5)


def test_a_stalled_hub_refuses_with_hub_busy_instead_of_queueing_without_bound(serve, redis_server):
    # A client's requests are served one at a time, so it takes many clients at once
    # to fill the hub's queue: 20 people speak while Redis takes no writes.
    hub = RedisHub(redis_server.url, heartbeat=0.2, presence_ttl=1.0, max_pending=8).start()
    try:
        address = serve(ChatService(hub=hub, flood_burst=None)).address
        people = [Person(address, f"p{n}") for n in range(20)]
        admin = redis_server.client()
        admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        for person in people:
            person.send("linea")
        outcomes = []
        for n, person in enumerate(people):
            while True:
                line = person.line()
                if line.startswith("ERR hub_busy: ") or line == f"[general] p{n}: linea":
                    outcomes.append(line.startswith("ERR"))
                    break
        assert any(outcomes), "a stalled hub must refuse, not queue without bound"
        assert not all(outcomes)  # what the queue held was delivered once Redis woke up
        admin.execute_command("CLIENT", "UNPAUSE")
        people[0].send("de nuevo")
        assert people[1].until("de nuevo")[-1] == "[general] p0: de nuevo"  # and it recovers
        for person in people:
            person.close()
    finally:
        hub.close()


def test_a_malformed_message_on_the_hub_is_ignored_and_costs_no_outage(
    chat_on, redis_server, caplog
):
    a = chat_on()
    ana, carla = join(a, "ana"), join(a, "carla")
    (hub,) = chat_on.hubs
    with redis_server.client() as other:
        # JSON, but not an event object: a room event, then a private message for ana.
        other.publish("enlace:events", b"999\tgeneral\t0\n[1, 2]")
        other.publish(f"enlace:server:{hub.server_id}:inbox", b'1\tana\n"texto"')
    ana.send("sigue")
    lines = carla.until("sigue")
    assert lines[-1] == "[general] ana: sigue"
    assert not any("chat hub" in line for line in lines)  # neither unreachable nor back
    assert hub.reachable
    assert caplog.text.count("chat hub: ignored a message on") == 2  # a warning, no traceback
    assert "could not be handled" not in caplog.text
    ana.close()
    carla.close()


def wait_for(condition, timeout: float = 5.0) -> None:
    """Until ``condition()`` holds (it watches the server in this process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def fill_the_queue(chat: ChatService, hub: RedisHub) -> int:
    """Chat lines into a hub whose Redis takes no writes, until it refuses one.

    The first goes alone, so that the hub's thread is stuck sending it before the
    others fill the queue. Returns how many it took: ``relleno 0`` to ``relleno N-1``.
    """
    for n in range(1000):
        line = chat.event("message", room="general", text=f"relleno {n}", **{"from": "carla"})
        try:
            chat.post("general", line)
        except CommandError as exc:
            assert exc.code == "hub_busy"
            return n
        if n == 0:
            wait_for(lambda: hub.link.pending == 0)
    raise AssertionError("the hub's queue never filled")


@pytest.mark.parametrize("max_cleanup", [MAX_HUB_CLEANUP, 0])
def test_a_departure_under_overload_still_frees_its_nick_and_presence(
    serve, redis_server, max_cleanup
):
    # Redis is slow (paused for writes), not gone: well within the hub's timeout. The
    # departure's cleanups go past the full queue; with no room for them at all
    # (max_cleanup=0), the server registers again before anything else instead.
    hubs = [
        RedisHub(redis_server.url, timeout=5, heartbeat=1, presence_ttl=10, **bounds).start()
        for bounds in ({"max_pending": 8, "max_cleanup": max_cleanup}, {})
    ]
    try:
        busy_chat, other_chat = (ChatService(hub=hub, flood_burst=None) for hub in hubs)
        a, b = serve(busy_chat).address, serve(other_chat).address
        ana, bob = join(a, "ana"), join(b, "bob")
        ana_session = hubs[0].local.holder("ana")
        admin = redis_server.client()
        admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
        try:
            taken = fill_the_queue(busy_chat, hubs[0])
            ana.close()
            wait_for(lambda: ana_session.data.get("departed") and "room" not in ana_session.data)
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        # Once server a has done all it queued: its lines, and ana's departure after them
        # (or, registering again, before them).
        last = f"[general] carla: relleno {taken - 1}"
        until_all(bob, last, *(["* ana left the chat"] if max_cleanup else []))
        bob.send("/who")
        assert bob.until("general:")[-1] == "general: bob"
        bob.send("/nick ana")
        assert bob.until("you are now")[-1] == "you are now ana"
        bob.close()
    finally:
        for hub in hubs:
            hub.close()
