"""The chat over real sockets, on every runtime: text (nc) and JSON clients together."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket

import pytest

import enlace.services.chat
from enlace.services.assistant import install_assistant
from enlace.services.chat import ChatService
from enlace.services.commands import CommandError
from tests.services.people import Person


@pytest.fixture
def chat(serve):
    return serve(ChatService(max_history=5, max_rooms=3, flood_burst=None))


def join(address, nick: str) -> Person:
    person = Person(address)
    person.send(f"/nick {nick}")
    person.until(f"you are now {nick}")
    return person


def test_newcomers_are_guests_in_general_and_see_each_other(chat):
    first = Person(chat.address)
    first.send("/ping")
    lines = first.until("pong")
    assert lines[0].startswith("* welcome, guest-")
    assert any(line.endswith("joined general") for line in lines)
    second = Person(chat.address)
    second.send("hola a todos")
    mine = second.until("hola a todos")[-1]
    assert mine.startswith("[general] guest-") and mine.endswith(": hola a todos")
    assert first.until("hola a todos")[-1] == mine  # the same line, stamped by the server
    first.close()
    second.close()


def test_text_and_json_clients_see_the_same_conversation(chat):
    ana = join(chat.address, "ana")
    bot = Person(chat.address)
    bot.request("nick", "bot")
    reply = json.loads(bot.until('"id":1')[-1])  # greeted in text first, then JSON throughout
    assert reply == {"id": 1, "ok": True, "result": "you are now bot"}
    bot.request("say", "hola desde json")
    event = bot.event("message")
    assert (event["room"], event["from"], event["text"]) == ("general", "bot", "hola desde json")
    assert isinstance(event["ts"], float)
    assert ana.until("hola desde json")[-1] == "[general] bot: hola desde json"
    ana.send("hola desde nc")
    event = bot.event("message")
    assert (event["from"], event["text"]) == ("ana", "hola desde nc")
    ana.close()
    bot.close()


@pytest.mark.parametrize(
    ("taken", "lookalike", "code"),
    [
        ("Alice", "alice", "nick_taken"),
        ("Alice", "ALICE", "nick_taken"),
        ("Alice", "\uff21lice", "nick_taken"),  # fullwidth A: NFKC
        ("TOM", "\u0422\u041e\u041c", "nick_taken"),  # all Cyrillic, looks the same
        ("Alice", "\u0410lice", "bad_nick"),  # Cyrillic A among Latin letters: refused outright
        ("Alice", "Alic\u0435", "bad_nick"),
    ],
)
def test_nicknames_are_unique_across_case_and_lookalikes(chat, taken, lookalike, code):
    first = join(chat.address, taken)
    other = Person(chat.address)
    other.send(f"/nick {lookalike}")
    assert other.until("ERR")[-1].startswith(f"ERR {code}: ")
    first.close()
    other.close()


def test_invisible_characters_are_refused_in_nicknames(chat):
    person = Person(chat.address)
    person.send("/nick Alice\u200b")
    assert person.until("ERR")[-1].startswith("ERR bad_nick: ")
    person.close()


def test_nick_changes_are_announced_to_the_room(chat):
    ana = join(chat.address, "ana")
    bob = join(chat.address, "bob")
    bob.send("/nick roberto")
    assert ana.until("known as roberto")[-1] == "* bob is now known as roberto"
    ana.close()
    bob.close()


def test_rooms_join_leave_who_and_history_replay(chat):
    ana = join(chat.address, "ana")
    ana.send("/join python")
    ana.until("you are in python")
    for n in range(7):  # the room keeps the last 5
        ana.send(f"mensaje {n}")
    ana.until("mensaje 6")
    bob = join(chat.address, "bob")
    bob.send("/join #Python")
    replay = bob.until("you are in python")
    messages = [line for line in replay if line.startswith("[python]")]
    assert messages == [f"[python] ana: mensaje {n}" for n in range(2, 7)]
    assert ana.until("joined python")[-1] == "* bob joined python"
    bob.send("/who")
    assert bob.until("python:")[-1] == "python: ana, bob"
    bob.send("/rooms")
    assert "python (2)" in bob.until("python (")[-1]
    bob.send("/leave")
    bob.until("you are in general")
    assert ana.until("bob went to general")[-1] == "* bob went to general"
    ana.close()
    bob.close()


def test_private_messages_reach_only_the_two(chat):
    ana, bob, eve = (join(chat.address, nick) for nick in ("ana", "bob", "eve"))
    ana.send("/msg BOB secreto")
    assert bob.until("secreto")[-1] == "[private] ana -> bob: secreto"
    assert ana.until("secreto")[-1] == "[private] ana -> bob: secreto"
    eve.send("/ping")
    assert not any("secreto" in line for line in eve.until("pong"))
    ana.send("/msg nadie hola")
    assert ana.until("ERR")[-1].startswith("ERR no_such_nick: ")
    for person in (ana, bob, eve):
        person.close()


def test_a_message_over_4_kib_is_refused_not_truncated(chat):
    ana = join(chat.address, "ana")
    ana.send("x" * 4097)
    assert ana.until("ERR")[-1] == (
        "ERR message_too_long: a message of 4097 bytes exceeds the 4096-byte limit"
    )
    ana.send("y" * 4096)
    assert ana.until("yyyy")[-1] == "[general] ana: " + "y" * 4096
    ana.close()


def test_the_number_of_rooms_is_bounded(chat):
    ana = join(chat.address, "ana")
    for room in ("uno", "dos"):  # with general: 3 rooms, the limit here
        ana.send(f"/join {room}")
        ana.until(f"you are in {room}")
        ana.send("hola")  # a message keeps the room (and its history) alive
        ana.until("hola")
    ana.send("/join tres")
    assert ana.until("ERR")[-1].startswith("ERR too_many_rooms: ")
    ana.close()


def test_leaving_the_chat_is_announced(chat):
    ana = join(chat.address, "ana")
    bob = join(chat.address, "bob")
    bob.sock.shutdown(socket.SHUT_WR)
    assert ana.until("left the chat")[-1] == "* bob left the chat"
    ana.close()
    bob.close()


def test_a_flooder_is_slowed_down_then_disconnected_with_a_reason(serve):
    server = serve(ChatService(flood_burst=5, flood_rate=0.5))
    listener = join(server.address, "ana")
    flooder = join(server.address, "bot")
    for n in range(40):  # far faster than 0.5 a second
        flooder.send(f"spam {n}")
    lines = flooder.until("ERR flooding")
    assert [line for line in lines if line.startswith("[general] bot: ")] == [
        f"[general] bot: spam {n}"
        for n in range(5)  # the burst goes through
    ]
    assert any(line.startswith("ERR flood: slow down") for line in lines)
    assert flooder.file.read() == b""  # then the server closes
    listener.send("/ping")
    assert listener.until("pong")  # everyone else is still served
    listener.close()
    flooder.close()


def test_the_assistants_name_is_reserved(serve):
    service = ChatService(flood_burst=None)
    install_assistant(service, None)
    server = serve(service)
    person = Person(server.address)
    for name in ("assistant", "Assistant", "ASSISTANT"):
        person.send(f"/nick {name}")
        assert person.until("ERR")[-1].startswith("ERR bad_nick: ")
    person.send("/ask what is a socket?")
    assert person.until("ERR")[-1].startswith(
        "ERR ai_unavailable: the AI assistant is not configured"
    )
    person.close()


def test_a_hub_answer_given_up_on_is_cancelled_before_the_asker_hears(monkeypatch):
    # The hub undoes what its asker was told did not happen (a /nick answered
    # hub_timeout) when the answer is cancelled: the chat must cancel it itself,
    # before raising, rather than rely on what asyncio.wrap_future does.
    monkeypatch.setattr(enlace.services.chat, "_HUB_ANSWER_TIMEOUT", 0.05)
    seen: list[bool] = []

    class Watched(concurrent.futures.Future[str]):
        def cancel(self) -> bool:
            seen.append(True)
            return super().cancel()

    answer = Watched()

    async def ask() -> None:
        with pytest.raises(CommandError) as raised:
            await enlace.services.chat._answer(answer)
        assert raised.value.code == "hub_timeout"
        assert seen  # cancelled by the time the error is raised

    asyncio.run(ask())
    assert answer.cancelled()
