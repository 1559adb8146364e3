"""The chat's history stores (memory and SQLite), and the chat running on them on every runtime."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enlace.exceptions import EnlaceError
from enlace.services.chat import ChatService
from enlace.services.store import (
    DATA_FILE,
    SCHEMA_VERSION,
    HistoryStore,
    MemoryStore,
    SqliteStore,
    StoreError,
)
from tests.services.test_chat import Person, join

MakeStore = Callable[..., HistoryStore]

# Room names, nicknames and messages that would break SQL built from strings.
AWKWARD = [
    "'; DROP TABLE messages; --",
    'Robert"); DROP TABLE rooms;--',
    "50% of _everything_ \\ ? :name ?1 $x @y",
    "nul \x00 inside",
    "\u00f1and\u00fa \u65e5\u672c\u8a9e \U0001f600",
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 (right to left)",
    "e\u0301 (combining) and NFKC-different \uff21",
    "",
]


def message(n: int | str, room: str = "general", sender: str = "ana") -> dict[str, Any]:
    return {"event": "message", "room": room, "from": sender, "text": f"mensaje {n}", "ts": 1.5}


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[HistoryStore] = []

    def make(**options: Any) -> HistoryStore:
        store: HistoryStore
        if request.param == "memory":
            store = MemoryStore(**options)
        else:
            store = SqliteStore(tmp_path / "data", **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def rows(directory: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file as anyone with the sqlite3 shell would."""
    with sqlite3.connect(directory / DATA_FILE) as db:
        return db.execute(sql).fetchall()


# -- both stores ---------------------------------------------------------------------


def test_a_room_keeps_its_newest_events_oldest_first(make_store):
    store = make_store(max_history=5)
    for n in range(8):
        store.append("general", message(n))
    assert store.recent("general", 100) == [message(n) for n in range(3, 8)]
    assert store.recent("general", 2) == [message(6), message(7)]
    assert store.recent("general", 0) == []
    assert store.recent("general", -3) == []
    assert store.recent("nowhere", 5) == []


def test_rooms_are_listed_sorted_and_kept_apart(make_store):
    store = make_store(max_history=3)
    for room in ("python", "general", "java"):
        store.append(room, message(room, room=room))
    assert store.rooms() == ["general", "java", "python"]
    assert store.recent("java", 5) == [message("java", room="java")]


def test_nothing_is_kept_with_max_history_0(make_store):
    store = make_store(max_history=0)
    store.append("general", message(1))
    assert store.recent("general", 5) == []
    assert store.rooms() == []


def test_a_negative_max_history_is_refused(make_store):
    with pytest.raises(ValueError, match="must not be negative"):
        make_store(max_history=-1)


def test_events_come_back_equal_whatever_they_carry(make_store):
    store = make_store()
    event = {
        "event": "message",
        "room": "general",
        "from": "assistant",
        "text": "hola",
        "ts": 1763700000.123,
        "extra": {"model": "x", "tokens": [1, 2, 3], "done": True, "none": None},
    }
    store.append("general", event)
    assert store.recent("general", 1) == [event]


def test_sql_like_and_unicode_content_is_kept_verbatim(make_store):
    store = make_store()
    for text in AWKWARD:
        store.append(text, message(text, room=text, sender=text))
    assert store.rooms() == sorted(AWKWARD)
    for text in AWKWARD:
        assert store.recent(text, 5) == [message(text, room=text, sender=text)]


def test_many_threads_append_at_once(make_store):
    store = make_store(max_history=1000)
    barrier = threading.Barrier(8)

    def talk(sender: str) -> None:
        barrier.wait()
        for n in range(50):
            store.append("general", message(n, sender=sender))

    threads = [threading.Thread(target=talk, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = store.recent("general", 1000)
    assert len(kept) == 400
    for i in range(8):  # each sender's messages, in the order it sent them
        assert [e["text"] for e in kept if e["from"] == f"t{i}"] == [
            f"mensaje {n}" for n in range(50)
        ]


# -- SQLite --------------------------------------------------------------------------


def test_sqlite_creates_its_directory_and_file(tmp_path):
    data = tmp_path / "a" / "b"
    with SqliteStore(data) as store:
        store.append("general", message(1))
        assert (data / DATA_FILE).is_file()
        assert data.stat().st_mode & 0o777 == 0o700
        assert rows(data, "PRAGMA journal_mode") == [("wal",)]
        assert rows(data, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_sqlite_finds_everything_after_reopening(tmp_path):
    with SqliteStore(tmp_path, max_history=3) as store:
        for n in range(5):
            store.append("python", message(n, room="python"))
        store.append("general", message("g"))
    with SqliteStore(tmp_path, max_history=3) as store:
        assert store.rooms() == ["general", "python"]
        assert store.recent("python", 10) == [message(n, room="python") for n in (2, 3, 4)]
        store.append("python", message(5, room="python"))
        assert store.recent("python", 10) == [message(n, room="python") for n in (3, 4, 5)]
    assert rows(tmp_path, "SELECT count(*) FROM messages") == [(4,)]  # older rows are deleted


def test_sqlite_keeps_what_a_crashed_process_committed(tmp_path):
    program = (
        "import os, sys; from enlace.services.store import SqliteStore\n"
        "store = SqliteStore(sys.argv[1])\n"
        "store.append('general', {'event': 'message', 'text': 'antes del fallo'})\n"
        "os._exit(0)  # no close, no checkpoint: as if killed\n"
    )
    subprocess.run([sys.executable, "-c", program, str(tmp_path)], check=True, timeout=30)
    with SqliteStore(tmp_path) as store:
        assert store.recent("general", 5) == [{"event": "message", "text": "antes del fallo"}]


def test_sqlite_trims_to_a_smaller_max_history_on_opening(tmp_path):
    with SqliteStore(tmp_path, max_history=10) as store:
        for n in range(10):
            store.append("general", message(n))
    with SqliteStore(tmp_path, max_history=3) as store:
        assert store.recent("general", 100) == [message(n) for n in (7, 8, 9)]
    assert rows(tmp_path, "SELECT count(*) FROM messages") == [(3,)]


def test_sqlite_stores_awkward_text_verbatim_in_its_columns(tmp_path):
    with SqliteStore(tmp_path) as store:
        for text in AWKWARD:
            store.append(text, {"event": "message", "from": text, "text": text, "ts": 2.0})
    kept = rows(
        tmp_path,
        "SELECT r.name, m.sender, m.text, m.ts FROM messages m JOIN rooms r ON r.id = m.room",
    )
    assert kept == [(text, text, text, 2.0) for text in AWKWARD]
    tables = rows(tmp_path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables == [("messages",), ("rooms",)]  # nothing was dropped


def test_sqlite_refuses_an_unknown_schema_version(tmp_path):
    with sqlite3.connect(tmp_path / DATA_FILE) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError) as caught:
        SqliteStore(tmp_path)
    assert str(caught.value) == (
        f"cannot open chat data in {tmp_path}: {DATA_FILE} has schema version "
        f"{SCHEMA_VERSION + 1}, and this enlace knows version {SCHEMA_VERSION} "
        f"(written by a newer enlace?)"
    )
    assert isinstance(caught.value, EnlaceError)
    assert caught.value.code == "store_error"


def test_sqlite_refuses_files_that_are_not_its_own(tmp_path):
    with sqlite3.connect(tmp_path / DATA_FILE) as db:
        db.execute("CREATE TABLE notes (text)")
    with pytest.raises(StoreError, match="is not enlace chat data"):
        SqliteStore(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / DATA_FILE).write_bytes(b"these are not the bytes of a database" * 100)
    with pytest.raises(StoreError, match=r"^cannot open chat data in .*other: "):
        SqliteStore(other)


def test_sqlite_refuses_a_directory_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"file: not a directory$"):
        SqliteStore(tmp_path / "file")
    with pytest.raises(StoreError, match=r"sub: not a directory$"):
        SqliteStore(tmp_path / "file" / "sub")


def test_a_full_disk_is_a_store_error_and_loses_nothing_kept(tmp_path):
    with SqliteStore(tmp_path) as store:
        store.append("general", message(1))
        # SQLite's own cap on the file's size: a full disk, without filling one.
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match=r"^cannot write chat data in .*: database or disk"):
            store.append("general", {**message(2), "text": "x" * 20000})
        assert store.recent("general", 5) == [message(1)]  # the failed write left nothing
        store.append("general", message(3))  # small enough for the free space: the store works
        assert store.recent("general", 5) == [message(1), message(3)]


# -- the chat on a store, on every runtime -------------------------------------------


def test_the_chat_on_sqlite_keeps_rooms_and_history_across_a_restart(serve, tmp_path):
    store = SqliteStore(tmp_path, max_history=5)
    server = serve(ChatService(store=store, flood_burst=None))
    ana = join(server.address, "ana")
    ana.send("/join python")
    ana.until("you are in python")
    for n in range(7):
        ana.send(f"mensaje {n}")
    ana.until("mensaje 6")
    watcher = Person(server.address, json_form=True)
    watcher.request("join", "python")
    before = [watcher.event("message") for _ in range(5)]  # the replay, as JSON events
    ana.close()
    watcher.close()
    server.shutdown()
    store.close()

    store = SqliteStore(tmp_path, max_history=5)
    server = serve(ChatService(store=store, flood_burst=None))
    carlos = join(server.address, "carlos")
    carlos.send("/rooms")
    assert carlos.until("python (")[-1] == "python (0)"  # kept, with nobody in it yet
    carlos.send("/join python")
    replay = [line for line in carlos.until("you are in python") if line.startswith("[python]")]
    assert replay == [f"[python] ana: mensaje {n}" for n in range(2, 7)]
    carlos.send("/history 2")
    lines = carlos.until("messages of python")
    assert lines == ["[python] ana: mensaje 5", "[python] ana: mensaje 6", "2 messages of python"]
    again = Person(server.address, json_form=True)
    again.request("join", "python")
    assert [again.event("message") for _ in range(5)] == before  # the same events, same times
    assert all(event["replay"] is True for event in before)
    for person in (carlos, again):
        person.close()
    server.shutdown()
    store.close()


def test_a_message_the_store_cannot_keep_is_refused_with_a_reason(serve, tmp_path, caplog):
    store = SqliteStore(tmp_path)
    server = serve(ChatService(store=store, flood_burst=None))
    ana = join(server.address, "ana")
    bob = join(server.address, "bob")
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    ana.send("x" * 4000)
    assert ana.until("ERR")[-1] == (
        "ERR store_error: the message could not be kept, so nobody got it "
        "(the server's log says why)"
    )
    bob.send("/ping")
    assert not any("xxx" in line for line in bob.until("pong"))  # nobody got it
    assert f"cannot write chat data in {tmp_path}: database or disk is full" in caplog.text
    ana.close()
    bob.close()
    server.shutdown()
    store.close()


class _Unreadable(MemoryStore):
    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        raise StoreError("cannot read chat data in /nowhere: disk I/O error")


def test_a_history_the_store_cannot_read_does_not_stop_the_chat(serve, caplog):
    server = serve(ChatService(store=_Unreadable(), flood_burst=None))
    ana = Person(server.address)
    ana.send("/ping")
    lines = ana.until("pong")
    assert "* the history of general cannot be read now (the server's log says why)" in lines
    ana.send("/history")
    assert ana.until("ERR")[-1].startswith("ERR store_error: the history of general cannot")
    ana.send("hola")
    assert ana.until("hola")[-1].endswith(": hola")  # the room still works
    assert "disk I/O error" in caplog.text
    ana.close()


def test_max_history_belongs_to_the_store_when_one_is_given():
    with pytest.raises(ValueError, match="give max_history to the store"):
        ChatService(store=MemoryStore(), max_history=5)
    assert ChatService(store=MemoryStore(max_history=7)).max_history == 7
    assert ChatService(max_history=4).max_history == 4


def test_events_posted_by_extensions_are_kept_and_replayed(serve, tmp_path):
    store = SqliteStore(tmp_path)
    chat = ChatService(store=store, flood_burst=None)
    server = serve(chat)
    bob = join(server.address, "bob")  # general exists once someone is in it
    chat.post("general", chat.event("message", room="general", text="soy bot", **{"from": "bot"}))
    assert bob.until("soy bot")[-1] == "[general] bot: soy bot"
    assert [e["text"] for e in chat.recent("general", 5)] == ["soy bot"]
    ana = Person(server.address)
    ana.send("/ping")
    assert "[general] bot: soy bot" in ana.until("pong")
    ana.close()
    bob.close()
    server.shutdown()
    store.close()
