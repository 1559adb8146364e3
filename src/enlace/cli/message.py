"""``enlace send`` and ``enlace shell``: clients of the message server.

Both send what the user typed as a JSON request with an id (a ``/command``
line goes in the request's ``line``, so the server splits it exactly as if it
were typed), which keeps replies apart from pushed events. Others choose what
those events say, so the shell prints them through
:func:`~enlace.cli.chat_view.harmless`: no escape sequence of theirs reaches the terminal.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enlace.cli.chat_view import harmless
from enlace.cli.trace import tracer_for_peer
from enlace.exceptions import ConnectionClosed, RequestError
from enlace.protocol.envelope import dumps, loads, render_event, render_result
from enlace.sync import Client

__all__ = ["run_send", "run_shell"]


def run_send(
    host: str,
    port: int,
    message: str,
    *,
    as_json: bool,
    timeout: float | None,
    trace: bool,
    options: dict[str, Any] | None = None,
) -> int:
    """Send one request, print the reply; exit 1 on an error reply.

    ``options`` go to :class:`~enlace.sync.Client` (``ssl``, ``server_hostname``, ``token``).
    """
    request_id: Any = 1
    call: Callable[[Client], Any] = _typed_line(message)
    if as_json and message.lstrip().startswith("{"):
        try:
            request_id, call = _json_object(message)
        except RequestError as exc:
            print(f"enlace: {exc.message}", file=sys.stderr)
            return 2
    tracer = tracer_for_peer((host, port)) if trace else None
    with Client(
        host, port, request_timeout=timeout, trace=tracer, on_event=lambda _: None, **options or {}
    ) as client:
        try:
            result = call(client)
        except RequestError as exc:
            if as_json:
                error = {"code": exc.code, "message": exc.message}
                print(dumps({"id": request_id, "ok": False, "error": error}).decode())
            else:
                print(f"ERR {exc.code}: {exc.message}", file=sys.stderr)
            return 1
    if as_json:
        print(dumps({"id": request_id, "ok": True, "result": result}).decode())
    else:
        print(render_result(result))
    return 0


def _typed_line(line: str) -> Callable[[Client], Any]:
    return lambda client: client.command(line)


def _json_object(message: str) -> tuple[Any, Callable[[Client], Any]]:
    """A JSON request typed by the user: its id, and how to send it."""
    try:
        body = loads(message)
    except ValueError as exc:
        raise RequestError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
        raise RequestError("bad_request", 'a JSON message needs at least {"cmd": "..."}')
    name, line, args = body["cmd"].lstrip("/"), body.get("line"), body.get("args", [])
    if isinstance(line, str):
        return body.get("id", 1), lambda client: client.command(f"/{name} {line}")
    if not isinstance(args, list):
        raise RequestError("bad_request", '"args" must be an array')
    return body.get("id", 1), lambda client: client.request(name, *args)


def _history_file() -> Path | None:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    path = state / "enlace" / "shell_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError:
        return None
    return path


def run_shell(host: str, port: int, *, trace: bool, options: dict[str, Any] | None = None) -> int:
    """An interactive console; pushed events print above the line being typed."""
    options = options or {}
    if not sys.stdin.isatty():
        return _run_plain(host, port, trace=trace, options=options)
    # Imported here: prompt_toolkit takes a while to import, and only the shell needs it.
    from prompt_toolkit import PromptSession  # noqa: PLC0415
    from prompt_toolkit.history import FileHistory, InMemoryHistory  # noqa: PLC0415
    from prompt_toolkit.patch_stdout import patch_stdout  # noqa: PLC0415

    history_path = _history_file()
    history = FileHistory(str(history_path)) if history_path else InMemoryHistory()
    session: PromptSession[str] = PromptSession(history=history)
    closed = threading.Event()

    def leave() -> None:
        # On the prompt's loop; both on_close and pre_run may ask, so only once.
        future = session.app.future
        if future is not None and not future.done():
            session.app.exit()

    def on_close(reason: str) -> None:
        closed.set()
        print(f"* {reason}")
        app = session.app
        if app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(leave)

    def left_meanwhile() -> None:
        # The server may close between the loop's check and the prompt's start, when
        # on_close finds no prompt running to end: the prompt checks again once it runs.
        if closed.is_set():
            leave()

    tracer = tracer_for_peer((host, port)) if trace else None
    with (
        patch_stdout(raw=True),
        Client(
            host,
            port,
            trace=tracer,
            on_event=lambda e: print(harmless(render_event(e))),
            on_close=on_close,
            **options,
        ) as client,
    ):
        print(f"connected to {host}:{port}; /help lists the commands, Ctrl-D leaves")
        while not closed.is_set():
            try:
                line = session.prompt(f"{host}:{port}> ", pre_run=left_meanwhile)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            if line is None or closed.is_set():
                break
            _run_line(client, line)
    return 0


def _run_line(client: Client, line: str) -> None:
    if not line.strip():
        return
    try:
        print(render_result(client.command(line)))
    except RequestError as exc:
        print(f"ERR {exc.code}: {exc.message}")
    except ConnectionClosed:
        pass  # on_close has said why


def _run_plain(host: str, port: int, *, trace: bool, options: dict[str, Any]) -> int:
    """Without a terminal (a pipe, a script): the same, one line at a time."""
    tracer = tracer_for_peer((host, port)) if trace else None
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            print(text, flush=True)

    with Client(
        host,
        port,
        trace=tracer,
        on_event=lambda e: say(harmless(render_event(e))),
        on_close=lambda r: None,
        **options,
    ) as client:
        for line in sys.stdin:
            if client.closed:
                break
            try:
                say(render_result(client.command(line.rstrip("\n"))))
            except RequestError as exc:
                say(f"ERR {exc.code}: {exc.message}")
            except ConnectionClosed:
                break
    return 0
