"""A chat user for the chat's tests: a line connection (as with nc) that may send JSON."""

from __future__ import annotations

import json

from tests.conftest import connect


class Person:
    """A chat user: on a text line connection (as with nc), or sending JSON requests."""

    def __init__(
        self, address: tuple[str, int], nick: str | None = None, *, json_form: bool = False
    ) -> None:
        self.sock = connect(address)
        self.file = self.sock.makefile("rb")
        self.ids = 0
        if nick is None:
            return  # a guest, as the server named it
        if json_form:
            self.reply(self.request("nick", nick))
        else:
            self.send(f"/nick {nick}")
            self.until(f"you are now {nick}")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def request(self, cmd: str, *args: object) -> int:
        self.ids += 1
        self.send(json.dumps({"id": self.ids, "cmd": cmd, "args": list(args)}))
        return self.ids

    def line(self) -> str:
        data = self.file.readline()
        assert data, "the server closed the connection"
        return data.decode().rstrip("\n")

    def until(self, wanted: str) -> list[str]:
        """Lines up to and including the first that contains ``wanted``."""
        seen = []
        while True:
            seen.append(self.line())
            if wanted in seen[-1]:
                return seen

    def json(self) -> dict:
        """The next JSON payload (the greeting before the first request is text)."""
        while True:
            line = self.line()
            if line.startswith("{"):
                return json.loads(line)

    def event(self, kind: str) -> dict:
        while True:
            payload = self.json()
            if payload.get("event") == kind:
                return payload

    def reply(self, request_id: int) -> dict:
        while True:
            payload = self.json()
            if payload.get("id") == request_id:
                return payload

    def close(self) -> None:
        self.file.close()
        self.sock.close()
