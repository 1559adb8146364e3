"""Nicknames on the Redis hub: a /nick its asker gave up on never takes effect.

Real redis-server and chat servers, as in test_redis_hub.py. The chat stops
waiting for the hub after a while and answers ``hub_timeout``; these tests make
that while 0.3 s instead of 10 (the chat's constant), and stall Redis for writes
(CLIENT PAUSE) so that the hub's answer comes after it.
"""

from __future__ import annotations

import re

import pytest

import enlace.services.chat
from tests.services.people import Person
from tests.services.test_chat import join
from tests.services.test_redis_hub import (  # noqa: F401
    chat_on,
    redis_server,
    until_all,
    wait_for,
)

# Slow Redis (paused for writes), not gone: well within the hub's own timeout.
PATIENT = {"timeout": 5.0, "heartbeat": 1.0, "presence_ttl": 10.0}
TIMEOUT = "ERR hub_timeout: the chat hub did not answer in time; try again"


@pytest.fixture
def impatient_chat(monkeypatch):
    monkeypatch.setattr(enlace.services.chat, "_HUB_ANSWER_TIMEOUT", 0.3)


def reply(person: Person) -> str:
    """The next reply (or refusal) ``person`` reads, past any events."""
    return next(line for line in iter(person.line, None) if line.startswith(("you are", "ERR")))


def owner_of(server, nick: str) -> bytes | None:
    """The record of who holds ``nick`` in the Redis of ``server``."""
    with server.client() as client:
        return client.get(f"enlace:nick:{nick}")


def renamed_then_ana_taken_elsewhere(start, redis, **options):
    """ana (carla beside her) was granted /nick anita, not yet given up on; then a
    living server elsewhere took the name ana, which that rename had freed."""
    a = start(**options)
    ana, carla = join(a, "ana"), join(a, "carla")
    (hub,) = start.hubs
    session = hub.local.holder("ana")
    answer = hub.rename(session, "anita")
    assert answer.result(5) == "ana"
    with redis.client() as other:
        other.set("enlace:server:other", "1", px=60_000)
        other.set("enlace:nick:ana", "other\t1\tana")
    return ana, carla, session, answer


@pytest.mark.parametrize("ahead", ["nothing", "a line"])
def test_a_nick_change_answered_hub_timeout_does_not_happen(
    chat_on,  # noqa: F811
    redis_server,  # noqa: F811
    impatient_chat,
    ahead,
):
    # With a line ahead of it, the claim waits in the queue when the chat gives up;
    # alone, it is in Redis already, and Redis grants it after the chat gave up.
    a, b = chat_on(hub=PATIENT), chat_on(hub=PATIENT)
    ana, bob = join(a, "ana"), join(b, "bob")
    admin = redis_server.client()
    admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
    try:
        if ahead == "a line":
            ana.send("hola")
        ana.send("/nick anita")
        assert ana.until("ERR")[-1] == TIMEOUT
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    ana.send("/who")  # answered once the hub has dealt with the /nick, which came first
    lines = ana.until("general:")
    assert lines[-1] == "general: ana, bob"
    assert not any("anita" in line for line in lines)  # nor told otherwise
    assert owner_of(redis_server, "anita") is None
    assert owner_of(redis_server, "ana").endswith(b"\tana")
    ana.send("sigo siendo ana")
    assert bob.until("sigo siendo")[-1] == "[general] ana: sigo siendo ana"
    bob.send("/nick anita")
    assert bob.until("you are now")[-1] == "you are now anita"
    for person in (ana, bob):
        person.close()


def test_a_nick_change_given_up_on_after_its_answer_is_taken_back(
    chat_on,  # noqa: F811
    redis_server,  # noqa: F811
):
    # The answer was on its way when the chat stopped waiting: the chat then cancels
    # the future that already holds it, which is what the hub hears.
    a = chat_on()
    ana = join(a, "ana")
    (hub,) = chat_on.hubs
    session = hub.local.holder("ana")
    answer = hub.rename(session, "anita")
    assert answer.result(5) == "ana"
    assert session.data["nick"] == "anita"
    assert answer.cancel() is False
    assert session.data["nick"] == "ana"  # at once here, then in Redis
    ana.send("/who")
    assert ana.until("general:")[-1] == "general: ana"
    assert owner_of(redis_server, "anita") is None
    assert owner_of(redis_server, "ana").endswith(b"\tana")
    other = Person(a)
    other.send("/nick anita")
    assert other.until("you are now")[-1] == "you are now anita"
    for person in (ana, other):
        person.close()


def test_if_the_old_nick_went_meanwhile_the_new_one_stays_and_the_room_is_told(
    chat_on,  # noqa: F811
    redis_server,  # noqa: F811
):
    ana, carla, session, answer = renamed_then_ana_taken_elsewhere(chat_on, redis_server)
    answer.cancel()
    assert ana.until("went through")[-1] == (
        "* your /nick anita went through after all (ana was taken meanwhile): you are anita now"
    )
    assert carla.until("ana is now known as")[-1] == "* ana is now known as anita"
    assert session.data["nick"] == "anita"
    ana.send("/who")
    assert ana.until("general:")[-1] == "general: anita, carla"
    assert owner_of(redis_server, "anita").endswith(b"\tanita")
    for person in (ana, carla):
        person.close()


def test_trying_again_after_hub_timeout_gets_the_nick(
    chat_on,  # noqa: F811
    redis_server,  # noqa: F811
    impatient_chat,
    monkeypatch,
):
    a = chat_on(hub=PATIENT)
    ana, carla = join(a, "ana"), join(a, "carla")
    (hub,) = chat_on.hubs
    session = hub.local.holder("ana")
    admin = redis_server.client()
    admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
    try:
        ana.send("hola")  # ahead of the claim, which then waits in the queue
        ana.send("/nick anita")
        assert ana.until("ERR")[-1] == TIMEOUT
        monkeypatch.setattr(enlace.services.chat, "_HUB_ANSWER_TIMEOUT", 10.0)
        ana.send("/nick anita")  # as told: try again
        wait_for(lambda: hub.local.holder("anita") is session)  # the server has read it
        carla.send("/nick anita")  # held here for ana's second try meanwhile
        assert carla.until("ERR")[-1].startswith("ERR nick_taken: ")
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert ana.until("you are now")[-1] == "you are now anita"
    assert carla.until("ana is now known as")[-1] == "* ana is now known as anita"
    assert owner_of(redis_server, "anita").endswith(b"\tanita")
    assert owner_of(redis_server, "ana") is None
    for person in (ana, carla):
        person.close()


def test_if_both_names_went_meanwhile_the_asker_becomes_a_guest_and_is_told_why(
    chat_on,  # noqa: F811
    redis_server,  # noqa: F811
):
    # Given up on after Redis granted it: ana is ana again here at once, and anita free
    # here, so carla may ask for it before the take-back reaches Redis (paused for
    # writes); meanwhile a server elsewhere took ana. Neither name is left for her.
    ana, carla, session, answer = renamed_then_ana_taken_elsewhere(
        chat_on, redis_server, hub=PATIENT
    )
    admin = redis_server.client()
    admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
    try:
        answer.cancel()
        assert session.data["nick"] == "ana"
        carla.send("/nick anita")
        (hub,) = chat_on.hubs
        wait_for(lambda: hub.local.holder("anita") is not None)  # held here for carla
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    told = re.fullmatch(
        r"\* ana is in use on another server \(taken while your /nick anita timed out\): "
        r"you are (guest-\d+) now; /nick NAME to choose another",
        ana.until("is in use")[-1],
    )
    assert told is not None
    guest = told[1]
    # Her claim was queued before the room's news of ana, so its answer may come first.
    lines = until_all(carla, "you are now", f"ana is now known as {guest}")
    assert "you are now anita" in lines
    carla.send("/who")
    assert carla.until("general:")[-1] == f"general: anita, {guest}"
    assert owner_of(redis_server, "anita").endswith(b"\tanita")
    assert owner_of(redis_server, "ana") == b"other\t1\tana"
    assert session.data["nick"] == guest
    for person in (ana, carla):
        person.close()


def test_an_asker_who_leaves_while_the_take_back_runs_holds_neither_name(
    chat_on,  # noqa: F811
    redis_server,  # noqa: F811
):
    # The take-back is in Redis (paused for writes) when ana leaves; a server elsewhere
    # took ana meanwhile, so the take-back fails and would keep anita for her: it must
    # not, here or in Redis, since her departure no longer knows of that name.
    ana, carla, session, answer = renamed_then_ana_taken_elsewhere(
        chat_on, redis_server, hub=PATIENT
    )
    admin = redis_server.client()
    admin.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
    try:
        answer.cancel()
        wait_for(lambda: any(  # the take-back waits in Redis
            "b" in client["flags"] and client["cmd"] == "evalsha" for client in admin.client_list()
        ))  # fmt: skip
        ana.close()
        wait_for(lambda: session.data.get("departed"))
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    carla.until("ana left the chat")  # queued after the take-back
    assert owner_of(redis_server, "anita") is None
    carla.send("/nick anita")
    assert reply(carla) == "you are now anita"
    carla.close()
