"""Where the chat keeps its rooms and their recent messages: in memory, or in SQLite.

A :class:`HistoryStore` keeps, for each room, the last ``max_history`` events
posted to it (oldest dropped first) and lists the rooms it keeps messages for.
:class:`~enlace.services.chat.ChatService` uses one for posting, for the replay
on join, for ``/history`` and for ``/rooms``.

- :class:`MemoryStore` (the default) keeps a bounded deque per room; everything
  is gone when the process ends.
- :class:`SqliteStore` keeps them in ``DIR/chat.sqlite3`` (``enlace serve chat
  --data DIR``), so rooms and history survive a restart. It uses :mod:`sqlite3`
  from the standard library: one file, no server to run.

Events are the chat's event dictionaries (``{"event": "message", "room": ...,
"from": ..., "text": ..., "ts": ...}``); a store gives back equal dictionaries,
oldest first. Every method may be called from any thread. Failures of the
storage itself (a full disk, an unreadable file) raise :class:`StoreError`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from enlace.exceptions import EnlaceError
from enlace.limits import MAX_HISTORY, STORE_BUSY_TIMEOUT

__all__ = [
    "DATA_FILE",
    "SCHEMA_VERSION",
    "HistoryStore",
    "MemoryStore",
    "SqliteStore",
    "StoreError",
]

#: The file a :class:`SqliteStore` keeps in its directory.
DATA_FILE = "chat.sqlite3"

#: The layout of :data:`DATA_FILE` this version reads and writes (SQLite's ``user_version``).
SCHEMA_VERSION = 1


# Version 1. `event` is the whole event as JSON, exactly as it was pushed, so that a
# replay after a restart is the same event; ts, sender and text repeat its main fields
# for people who read the file with the sqlite3 shell.
_SCHEMA = (
    """CREATE TABLE rooms (
        id      INTEGER PRIMARY KEY,
        name    TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    )""",
    """CREATE TABLE messages (
        id     INTEGER PRIMARY KEY,
        room   INTEGER NOT NULL REFERENCES rooms (id),
        ts     REAL,
        sender TEXT,
        text   TEXT,
        event  TEXT NOT NULL
    )""",
    # Every query selects one room's newest rows: this index serves them in order.
    "CREATE INDEX messages_by_room ON messages (room, id)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class StoreError(EnlaceError):
    """The chat's store cannot read or write its data (the message says where and why)."""

    code = "store_error"


class HistoryStore(ABC):
    """The last ``max_history`` events of each room, and the rooms that have any.

    Implementations are safe to call from any thread. A store is a context
    manager that closes itself.
    """

    def __init__(self, *, max_history: int = MAX_HISTORY) -> None:
        if max_history < 0:
            raise ValueError(f"max_history must not be negative, got {max_history}")
        #: Events kept per room; the oldest are dropped past it. With 0, nothing is kept.
        self.max_history = max_history

    @abstractmethod
    def append(self, room: str, event: dict[str, Any]) -> None:
        """Keep ``event`` as the newest of ``room`` (which then exists), dropping the oldest."""

    @abstractmethod
    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        """The last ``count`` events of ``room``, oldest first; ``[]`` if it has none."""

    @abstractmethod
    def rooms(self) -> list[str]:
        """The names of the rooms with kept events, sorted."""

    @abstractmethod
    def close(self) -> None:
        """Release what the store holds open; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class MemoryStore(HistoryStore):
    """A bounded deque per room, in this process: the default, gone when it ends."""

    def __init__(self, *, max_history: int = MAX_HISTORY) -> None:
        super().__init__(max_history=max_history)
        self._rooms: dict[str, deque[dict[str, Any]]] = {}
        # Copying a deque while another thread appends to it raises, so one lock guards all.
        self._lock = threading.Lock()

    def append(self, room: str, event: dict[str, Any]) -> None:
        if self.max_history == 0:
            return
        with self._lock:
            kept = self._rooms.get(room)
            if kept is None:
                kept = self._rooms[room] = deque(maxlen=self.max_history)
            kept.append(event)

    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        if count <= 0:
            return []
        with self._lock:
            kept = self._rooms.get(room)
            return list(kept)[-count:] if kept else []

    def rooms(self) -> list[str]:
        with self._lock:
            return sorted(self._rooms)

    def close(self) -> None:
        # Nothing is held open; the events stay readable until the store is dropped.
        pass


class SqliteStore(HistoryStore):
    """Rooms and history in ``directory/chat.sqlite3``, kept across restarts.

    The directory is created (readable by its owner only) if it is missing;
    the file and its tables too. A file written by another version of the
    schema, or that is not enlace chat data, is refused with a
    :class:`StoreError` rather than guessed at. Only the newest
    ``max_history`` messages of each room are kept: older rows are deleted
    as new ones arrive (and when the file is opened, if ``max_history`` shrank).

    One connection serves every thread (``check_same_thread=False``), each
    operation under a lock and in one short transaction. The asyncio runtime
    calls the store inline from its event loop: in WAL mode with
    ``synchronous=NORMAL`` a commit does not wait for the disk, and appending
    one message (insert one row, delete the oldest) takes tens of
    microseconds, less than handing it to a thread would. The price is that a
    stalled disk stalls the loop, and that a commit survives a crash of the
    process but the last ones may be lost if the machine loses power.

    Values always travel as SQL parameters, never inside the SQL text, so room
    names, nicknames and messages are stored verbatim whatever they contain.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, max_history: int = MAX_HISTORY
    ) -> None:
        super().__init__(max_history=max_history)
        self.directory = Path(directory)
        self.path = self.directory / DATA_FILE
        self._lock = threading.Lock()
        self._room_ids: dict[str, int] = {}  # committed rooms only, so a rollback cannot lie
        self._db = self._open()

    # -- HistoryStore ----------------------------------------------------------------

    def append(self, room: str, event: dict[str, Any]) -> None:
        if self.max_history == 0:
            return
        ts, sender, text = event.get("ts"), event.get("from"), event.get("text")
        row = (
            ts if isinstance(ts, int | float) else None,
            sender if isinstance(sender, str) else None,
            text if isinstance(text, str) else None,
            orjson.dumps(event).decode(),
        )
        with self._lock, self._failure("cannot write"):
            with _Transaction(self._db):
                room_id = self._room_ids.get(room)
                if room_id is None:
                    room_id = self._room_id(room)
                self._db.execute(
                    "INSERT INTO messages (room, ts, sender, text, event) VALUES (?, ?, ?, ?, ?)",
                    (room_id, *row),
                )
                # Everything older than the newest max_history rows of the room goes.
                self._db.execute(
                    "DELETE FROM messages WHERE room = ? AND id <= ("
                    " SELECT id FROM messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (room_id, room_id, self.max_history),
                )
            self._room_ids[room] = room_id

    def recent(self, room: str, count: int) -> list[dict[str, Any]]:
        # Rows past max_history can only linger until the next append; never show them.
        count = min(count, self.max_history)
        if count <= 0:
            return []
        with self._lock, self._failure("cannot read"):
            rows = self._db.execute(
                "SELECT event FROM ("
                " SELECT m.id, m.event FROM messages AS m JOIN rooms AS r ON r.id = m.room"
                " WHERE r.name = ? ORDER BY m.id DESC LIMIT ?"
                ") ORDER BY id",
                (room, count),
            ).fetchall()
            return [orjson.loads(event) for (event,) in rows]

    def rooms(self) -> list[str]:
        with self._lock, self._failure("cannot read"):
            rows = self._db.execute(
                "SELECT name FROM rooms WHERE EXISTS"
                " (SELECT 1 FROM messages WHERE messages.room = rooms.id) ORDER BY name"
            ).fetchall()
        return [name for (name,) in rows]

    def close(self) -> None:
        with self._lock:
            # Closing the last connection checkpoints the WAL into the file and removes it.
            self._db.close()

    # -- internals -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        with self._failure("cannot open"):
            if self.directory.exists() and not self.directory.is_dir():
                raise StoreError(f"{self._where('cannot open')}: not a directory")
            # The owner alone may read it: room messages are for the people in the room.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # SQLite would open a read-only file read-only and fail only at the first
            # message; saying so now is clearer (WAL also needs to write in the directory).
            for path, what in ((self.directory, "the directory"), (self.path, DATA_FILE)):
                if path.exists() and not os.access(path, os.W_OK):
                    raise StoreError(f"{self._where('cannot open')}: {what} is not writable")
            db = sqlite3.connect(
                self.path, timeout=STORE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                self._prepare(db)
            except BaseException:
                db.close()
                raise
            return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")  # readers (the sqlite3 shell) never block us
        db.execute("PRAGMA synchronous = NORMAL")  # see the class docstring
        db.execute("PRAGMA foreign_keys = ON")
        # One transaction: of two servers starting on one DIR, one creates, the other reads.
        with _Transaction(db):
            (version,) = db.execute("PRAGMA user_version").fetchone()
            (tables,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            self._check_schema(version, tables)
            if version == 0:  # a new file
                for statement in _SCHEMA:
                    db.execute(statement)
            # Keep the newest max_history of each room, in case it is smaller than last time.
            db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM ("
                " SELECT id, row_number() OVER (PARTITION BY room ORDER BY id DESC) AS age"
                " FROM messages) WHERE age > ?)",
                (self.max_history,),
            )

    def _check_schema(self, version: int, tables: int) -> None:
        """Refuse a file this version cannot read, rather than guess at it."""
        if version == 0 and tables:
            raise StoreError(
                f"{self._where('cannot open')}: {DATA_FILE} is not enlace chat data "
                f"(it has tables but no schema version)"
            )
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(
                f"{self._where('cannot open')}: {DATA_FILE} has schema version {version}, "
                f"and this enlace knows version {SCHEMA_VERSION} (written by a newer enlace?)"
            )

    def _room_id(self, room: str) -> int:
        found = self._db.execute("SELECT id FROM rooms WHERE name = ?", (room,)).fetchone()
        if found is not None:
            return int(found[0])
        cursor = self._db.execute(
            "INSERT INTO rooms (name, created) VALUES (?, ?)", (room, round(time.time(), 3))
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _failure(self, action: str) -> _Failure:
        return _Failure(self, action)

    def _where(self, action: str) -> str:
        return f"{action} chat data in {self.directory}"


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        # IMMEDIATE takes the write lock now, so the transaction cannot fail halfway
        # because another connection started writing first.
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:  # some errors (a full disk) have rolled back already
            self._db.execute("ROLLBACK")


class _Failure:
    """Turns what SQLite and the file system raise into one clear :class:`StoreError`."""

    def __init__(self, store: SqliteStore, action: str) -> None:
        self._store = store
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None or isinstance(error, StoreError):
            return
        if isinstance(error, OSError):
            reason = (error.strerror or str(error)).lower()
        elif isinstance(error, sqlite3.Error | orjson.JSONDecodeError):
            reason = str(error)
        else:
            return  # a bug, not a storage failure: let it surface as it is
        raise StoreError(f"{self._store._where(self._action)}: {reason}") from error
