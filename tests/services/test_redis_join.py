"""A joiner on the Redis hub misses nothing silently, however many events come as it joins.

Real ``redis-server`` (as in test_redis_hub.py) and two chat servers in this
process. Server A reaches Redis through :class:`Relay`, a loopback TCP relay
that can hold back one command, or Redis's answer to it, until the test lets it
go: the stalled network or busy Redis a joiner's replay read may meet. Server
B talks to Redis directly; bob, on B, speaks in room ``sala`` meanwhile, and
wally, already in ``sala`` on A, sees every event as it reaches A, which is how
the test knows A has had them all. A holds at most two events for a joiner.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from enlace.limits import MAX_HUB_REREADS
from enlace.services.chat import ChatService
from enlace.services.redis_hub import BACK, UNREACHABLE, RedisHub
from enlace.services.redis_join import MISSED
from enlace.services.redis_scripts import SCRIPTS
from tests.services.people import Person
from tests.services.test_chat import join
from tests.services.test_redis_hub import RedisServer, running_redis, until_all

#: No hold lasts longer than this, whatever the test does.
HOLD_LIMIT = 10.0
#: In what A sends Redis, only the recover script names this key (A never posts in sala).
READS = b"enlace:room:sala:seqs"


class Hold:
    """A command the relay holds back (``answer`` False) or whose answer it holds back.

    With ``cut``, the command never reaches Redis: on release, the relay closes
    its connection instead, as a Redis that went away would.
    """

    def __init__(self, marker: bytes, *, answer: bool, cut: bool = False) -> None:
        self.marker = marker
        self.answer = answer
        self.cut = cut
        #: Set once the command went through the relay (with ``answer``: to Redis).
        self.seen = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


class Relay:
    """A TCP relay on loopback to ``redis-server``; :meth:`hold` stalls one command."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pending: list[Hold] = []
        self.holds: list[Hold] = []
        self.sockets: list[socket.socket] = []
        #: Every byte the hub sent to Redis, to count its commands.
        self.sent = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self, marker: bytes, *, answer: bool = False, cut: bool = False) -> Hold:
        """Hold back the next command whose bytes contain ``marker``, or its answer."""
        hold = Hold(marker, answer=answer, cut=cut)
        with self.lock:
            self.pending.append(hold)
            self.holds.append(hold)
        return hold

    def reads(self) -> int:
        """How many recover reads of sala the hub made (told apart by where they start)."""
        starts = re.findall(READS + rb"\r\n\$\d+\r\n(\d+)\r\n", bytes(self.sent))
        return len(set(starts))  # redis-py sends a read twice if Redis has to load the script

    def close(self) -> None:
        for hold in self.holds:
            hold.release()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            answers: list[Hold] = []  # holds on this connection's answers
            for pump in (self._requests, self._answers):
                thread = threading.Thread(target=pump, args=(client, upstream, answers))
                thread.daemon = True
                thread.start()

    def _requests(self, client: socket.socket, upstream: socket.socket, answers: list) -> None:
        tail = b""
        while data := _recv(client):
            with self.lock:
                self.sent += data
                found: list[Hold] = []
                for hold in self.pending:  # the first hold of each marker found
                    if hold.marker in tail + data and hold.marker not in [h.marker for h in found]:
                        found.append(hold)
                for hold in found:
                    self.pending.remove(hold)
            for hold in found:
                if hold.answer:
                    answers.append(hold)  # before Redis can answer: sent below
                else:
                    hold.seen.set()
                    hold.released.wait(HOLD_LIMIT)
                if hold.cut:
                    client.close()
                    upstream.close()
                    return
            tail = data[-64:]
            if not _send(upstream, data):
                break
            for hold in found:
                hold.seen.set()
        _close(upstream)

    def _answers(self, client: socket.socket, upstream: socket.socket, answers: list) -> None:
        while data := _recv(upstream):
            for hold in list(answers):
                hold.released.wait(HOLD_LIMIT)
            if not _send(client, data):
                break
        _close(client)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the other side went first
        sock.shutdown(socket.SHUT_WR)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path)


@pytest.fixture
def relay(redis_server) -> Iterator[Relay]:
    started = Relay(redis_server.port)
    yield started
    started.close()


@pytest.fixture
def servers(serve, redis_server, relay) -> Iterator[Callable[..., tuple]]:
    """``servers(max_history)``: the addresses of A (through the relay) and B."""
    hubs: list[RedisHub] = []

    def start(max_history: int = 5) -> tuple[tuple[str, int], tuple[str, int]]:
        # A's calls may wait on the relay for seconds: that is a stall, not an outage.
        bounds = {"heartbeat": 0.2, "presence_ttl": 2.0, "max_backoff": 0.2}
        a = RedisHub(relay.url, max_history=max_history, timeout=HOLD_LIMIT, max_held=2, **bounds)
        b = RedisHub(redis_server.url, max_history=max_history, **bounds)
        addresses = []
        for hub in (a, b):
            hubs.append(hub.start())
            addresses.append(serve(ChatService(hub=hub, flood_burst=None)).address)
        return addresses[0], addresses[1]

    yield start
    for hold in relay.holds:
        hold.release()
    for hub in hubs:
        hub.close()


def in_sala(address: tuple[str, int], nick: str) -> Person:
    person = join(address, nick)
    person.send("/join sala")
    until_all(person, "you are in sala", f"* {nick} joined sala")
    return person


def setting(a, b, *, json_form: bool = False) -> tuple[Person, Person, Person]:
    """bob (on B) says three things in sala, wally (on A) is there, zoe (on A) is not yet."""
    bob = in_sala(b, "bob")
    for n in range(3):
        bob.send(f"antes {n}")
    bob.until("antes 2")
    wally = in_sala(a, "wally")
    if json_form:
        return bob, wally, Person(a, "zoe", json_form=True)
    zoe = Person(a)
    zoe.send("/nick zoe")
    until_all(zoe, "you are now zoe", "is now known as zoe")  # in either order
    return bob, wally, zoe


def say(bob: Person, wally: Person, lines: list[str]) -> list[str]:
    """bob sends ``lines`` (chat lines and /nick); what wally saw of it, once all reached A."""
    for line in lines:
        bob.send(line)
    return wally.until(lines[-1])


def stalled_join(relay: Relay, zoe: Person, wally: Person, *, json_form: bool = False) -> Hold:
    """zoe's /join sala runs in Redis, and its answer waits in the relay."""
    hold = relay.hold(b"sala\tzoe", answer=True)
    if json_form:
        zoe.request("join", "sala")
    else:
        zoe.send("/join sala")
    assert hold.seen.wait(5)
    wally.until("* zoe joined sala")  # it ran: what bob says from now on comes after it
    return hold


def zoe_joins(zoe: Person) -> list[str]:
    """What zoe sees of her /join sala, up to the notice; the command's reply left out."""
    lines = until_all(zoe, "could not reach you", "you are in sala")
    lines.remove("you are in sala")
    return lines


def notice(count: int) -> str:
    return "* " + MISSED.format(room="sala", count=count)


REPLAY = [f"[sala] bob: antes {n}" for n in range(3)]


def test_what_a_joiner_let_go_is_read_back_and_the_rest_is_told(servers, relay, caplog):
    a, b = servers()
    bob, wally, zoe = setting(a, b)
    hold = stalled_join(relay, zoe, wally)
    lines = ["linea 0", "linea 1", "/nick bob1", "linea 2", "linea 3", "/nick bob2", "linea 4"]
    live = say(bob, wally, lines)
    assert live[2] == "* bob is now known as bob1" and len(live) == 7
    hold.release()
    # Held: the newest two (bob2's notice, linea 4). Read back: the lines. Missed: the
    # join and bob1's notice, which the history does not keep.
    assert zoe_joins(zoe) == [*REPLAY, *live[:2], *live[3:], notice(2)]
    assert relay.reads() == 1
    assert "chat hub: zoe missed 2 events of sala while joining" in caplog.text
    bob.send("despues")  # and live from here, nothing twice
    assert zoe.until("despues") == ["[sala] bob2: despues"]
    for person in (bob, wally, zoe):
        person.close()


def test_kept_events_that_fell_out_of_the_history_are_counted_too(servers, relay):
    a, b = servers(max_history=3)
    bob, wally, zoe = setting(a, b)
    hold = stalled_join(relay, zoe, wally)
    live = say(bob, wally, [f"linea {n}" for n in range(8)])
    hold.release()
    # Held: linea 6 and 7. The history keeps 3: linea 5 to 7; 0 to 4 and the join are gone.
    assert live == [f"[sala] bob: linea {n}" for n in range(8)]
    assert zoe_joins(zoe) == [*REPLAY, *live[5:], notice(6)]
    bob.send("despues")
    assert zoe.until("despues") == ["[sala] bob: despues"]
    for person in (bob, wally, zoe):
        person.close()


def load_recover(redis_server: RedisServer) -> None:
    """Load the recover script, so that A's first read runs at once (no NOSCRIPT first)."""
    with redis_server.client() as admin:
        admin.script_load(SCRIPTS["recover"])


def test_events_let_go_while_reading_back_are_read_back_too(servers, relay, redis_server):
    a, b = servers(max_history=10)  # nothing falls out of the history here
    bob, wally, zoe = setting(a, b)
    load_recover(redis_server)
    reading = relay.hold(READS, answer=True)
    joining = stalled_join(relay, zoe, wally)
    first = say(bob, wally, ["linea 0", "linea 1", "/nick bob1", "linea 2"])
    joining.release()
    assert reading.seen.wait(5)  # zoe has her replay; linea 0 onwards is being read
    second = say(bob, wally, ["linea 3", "linea 4", "/nick bob2", "linea 5"])
    reading.release()
    # Read back: linea 0 to 2, then (a second read) 3 to 5; held: bob2's notice and
    # linea 5. Missed: the join and bob1's notice.
    assert second[2] == "* bob1 is now known as bob2"
    assert zoe_joins(zoe) == [*REPLAY, *first[:2], first[3], *second, notice(2)]
    assert relay.reads() == 2
    bob.send("despues")
    assert zoe.until("despues") == ["[sala] bob2: despues"]
    for person in (bob, wally, zoe):
        person.close()


def test_a_json_joiner_gets_what_was_read_back_as_live_events(servers, relay):
    a, b = servers()
    bob, wally, zoe = setting(a, b, json_form=True)
    hold = stalled_join(relay, zoe, wally, json_form=True)
    say(bob, wally, ["linea 0", "/nick bob1", "linea 1", "linea 2"])
    hold.release()
    events: list[dict] = []
    while not any(event.get("event") == "notice" for event in events):
        payload = zoe.json()
        if payload.get("room") == "sala" or payload.get("event") == "notice":
            events.append(payload)
    seen = [(event["event"], event.get("text"), event.get("replay")) for event in events]
    assert seen == [
        *(("message", f"antes {n}", True) for n in range(3)),
        ("message", "linea 0", None),  # read back
        ("message", "linea 1", None),  # held
        ("message", "linea 2", None),
        ("notice", MISSED.format(room="sala", count=2), None),
    ]
    for person in (bob, wally, zoe):
        person.close()


def test_events_let_go_before_the_join_ran_cost_nothing_and_alarm_nobody(servers, relay, caplog):
    a, b = servers()
    bob, wally, zoe = setting(a, b)
    caplog.set_level(logging.INFO)
    hold = relay.hold(b"sala\tzoe", answer=False)  # the join waits to reach Redis
    zoe.send("/join sala")
    assert hold.seen.wait(5)
    say(bob, wally, ["linea 0", "/nick bob1", "linea 1", "linea 2", "linea 3"])
    hold.release()
    # All of it came before the join: the replay (the last 5 kept) has the lines, and
    # what is held (the newest) holds the join.
    lines = until_all(zoe, "* zoe joined sala", "you are in sala")
    lines.remove("you are in sala")
    assert lines == [
        "[sala] bob: antes 2", "[sala] bob: linea 0", "[sala] bob1: linea 1",
        "[sala] bob1: linea 2", "[sala] bob1: linea 3", "* zoe joined sala",
    ]  # fmt: skip
    bob.send("despues")
    assert zoe.until("despues") == ["[sala] bob1: despues"]
    assert "came while someone joined it; holding the newest" in caplog.text
    assert relay.reads() == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "hub" in r.message]
    assert warnings == []  # nobody missed anything
    for person in (bob, wally, zoe):
        person.close()


def test_a_joiner_whose_read_back_fails_gets_what_it_can_and_is_told(servers, relay):
    a, b = servers()
    bob, wally, zoe = setting(a, b)
    reading = relay.hold(READS, cut=True)
    hold = stalled_join(relay, zoe, wally)
    live = say(bob, wally, ["linea 0", "/nick bob1", "linea 1", "linea 2"])
    hold.release()
    assert reading.seen.wait(5)
    reading.release()  # A loses Redis as it reads back what zoe let go
    # Held: linea 1 and 2. Nothing read back: the join, linea 0 and bob1's notice missed.
    lines = until_all(zoe, "you are in sala", "chat hub is unreachable")
    lines.remove("you are in sala")
    assert lines == [*REPLAY, *live[2:], notice(3), f"* {UNREACHABLE}"]
    assert zoe.until("chat hub is back")[-1] == f"* {BACK}"
    bob.send("despues")
    assert zoe.until("despues") == ["[sala] bob1: despues"]
    for person in (bob, wally, zoe):
        person.close()


def test_a_joiner_cut_off_from_redis_joins_on_this_server_and_is_told_too(servers, relay):
    a, b = servers()
    bob, wally, zoe = setting(a, b)
    hold = relay.hold(b"sala\tzoe", cut=True)  # the join never reaches Redis
    zoe.send("/join sala")
    assert hold.seen.wait(5)
    live = say(bob, wally, ["linea 0", "/nick bob1", "linea 1", "linea 2"])
    hold.release()  # A loses Redis: zoe joins with this server alone
    # Held: linea 1 and 2, which this server's copy of the history replays; let go:
    # linea 0 (in that copy too) and bob1's notice, which nothing has.
    lines = until_all(zoe, "you are in sala", "* zoe joined sala")
    lines.remove("you are in sala")
    assert live[1] == "* bob is now known as bob1"
    assert lines == [
        f"* {UNREACHABLE}",
        notice(1),
        *REPLAY[1:],
        live[0],
        *live[2:],
        "* zoe joined sala",
    ]
    assert zoe.until("chat hub is back")[-1] == f"* {BACK}"
    for person in (bob, wally, zoe):
        person.close()


def test_a_joiner_whose_read_back_finds_redis_emptied_gets_what_it_holds_and_is_told(
    servers, relay, redis_server
):
    a, b = servers()
    bob, wally, zoe = setting(a, b)
    load_recover(redis_server)
    reading = relay.hold(READS)
    hold = stalled_join(relay, zoe, wally)
    live = say(bob, wally, [f"linea {n}" for n in range(4)])
    hold.release()
    assert reading.seen.wait(5)
    with redis_server.client() as admin:
        admin.flushall()  # Redis lost its data: the room's numbers restart, its history is gone
    reading.release()
    # Held: linea 2 and 3, given as they came. Let go: the join, linea 0 and 1, which the
    # emptied history cannot give back.
    assert zoe_joins(zoe) == [*REPLAY, *live[2:], notice(3)]
    assert bytes(relay.sent).count(READS) == 1  # seen as emptied: not read again in vain
    for person in (bob, wally, zoe):
        person.close()


def test_a_joiner_reads_back_at_most_max_hub_rereads_times(servers, relay, redis_server):
    assert MAX_HUB_REREADS == 3
    a, b = servers(max_history=20)
    bob, wally, zoe = setting(a, b)
    load_recover(redis_server)
    reads = [relay.hold(READS, answer=True) for _ in range(3)]
    joining = stalled_join(relay, zoe, wally)
    said = say(bob, wally, ["linea 0", "linea 1", "linea 2"])
    joining.release()
    for n, read in enumerate(reads):  # each read lets three more events come
        assert read.seen.wait(5)
        lines = [f"linea {3 * n + 3}", f"linea {3 * n + 4}", f"linea {3 * n + 5}"]
        said += say(bob, wally, lines if n < 2 else ["linea 9", "/nick bob1", "linea 10"])
        read.release()
    # The third read brought linea 8; linea 9, let go during it, would take a fourth.
    assert said[-2:] == ["* bob is now known as bob1", "[sala] bob1: linea 10"]
    assert zoe_joins(zoe) == [*REPLAY, *said[:9], *said[-2:], notice(2)]
    assert relay.reads() == 3
    for person in (bob, wally, zoe):
        person.close()


def test_the_read_back_pairs_each_kept_event_with_its_number(redis_server):
    with redis_server.client() as client:
        post = client.register_script(SCRIPTS["post"])
        recover = client.register_script(SCRIPTS["recover"])
        seq, history, rooms, seqs = (
            f"enlace:room:r:{what}" for what in ("seq", "history", "rooms", "seqs")
        )
        client.rpush(history, b"old 1", b"old 2")  # kept by an earlier enlace: no numbers

        def say(n: int, keep: int) -> None:
            post([seq, history, rooms, seqs], ["r", f"event {n}", keep, 4, "enlace:events"])

        say(1, 1)
        say(2, 0)
        assert recover([seq, history, seqs], [0]) == [2, b"1", b"event 1"]
        for n, keep in [(3, 1), (4, 1), (5, 0), (6, 1)]:
            say(n, keep)
        # The history keeps 4 (event 1, 3, 4, 6), their numbers too; the old ones are gone.
        assert client.lrange(history, 0, -1) == [b"event 1", b"event 3", b"event 4", b"event 6"]
        assert recover([seq, history, seqs], [0]) == [
            6, b"1", b"event 1", b"3", b"event 3", b"4", b"event 4", b"6", b"event 6"
        ]  # fmt: skip
        assert recover([seq, history, seqs], [3]) == [6, b"4", b"event 4", b"6", b"event 6"]
        assert recover([seq, history, seqs], [6]) == [6]
