"""The message server: framed or line clients, text commands, JSON requests, pushes.

:class:`MessageService` is a stream service, so it runs on either runtime.
Each connection is a :class:`Session`; requests of one session are served in
order, one at a time (an ``async`` command holds the next requests back until
it answers, and past ``max_pipeline`` queued requests the server stops reading
from that client), so text clients, which have no ids, always get their
replies in order. Different sessions never wait for each other.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from enlace.addresses import format_address
from enlace.limits import MAX_FRAME, MAX_JSON, MAX_JSON_DEPTH, MAX_LINE, MAX_PIPELINE
from enlace.logs import logger_for
from enlace.protocol.envelope import (
    BadRequest,
    ChatText,
    JsonRequest,
    Request,
    ServerConnection,
    TextCommand,
)
from enlace.protocol.framing import encode_length_prefixed
from enlace.services.base import StreamHandler, StreamService, Transport
from enlace.services.commands import Command, CommandError, CommandSet, Context

__all__ = ["NO_REPLY", "MessageService", "Session", "Tracer"]

#: Returned by a command whose effect is its own answer (a chat line pushed back to
#: its sender): text clients get no reply, JSON clients a ``null`` result.
NO_REPLY: Any = object()

#: ``trace(direction, peer, payload)``: direction is ``"in"`` or ``"out"``.
Tracer = Callable[[str, tuple[str, int], bytes], None]

# The reply to a text command depends on nothing but its form (text, no id), so the
# fast path answers through this stand-in rather than building a request per command.
_TEXT = TextCommand("", "")

# A result that cannot be sent: a str with a lone surrogate (UnicodeEncodeError, a
# ValueError), or an object JSON cannot encode (orjson's JSONEncodeError, a TypeError).
# The command's bug, answered as its internal error, like an exception it raised.
_UNSENDABLE = (TypeError, ValueError)


class Session:
    """One connected client, as commands see it (``ctx.session``)."""

    def __init__(self, number: int, transport: Transport, protocol: ServerConnection) -> None:
        self.id = number
        self.peer = transport.peer
        #: Free for services and commands to keep per-client state in.
        self.data: dict[str, Any] = {}
        self._transport = transport
        self._protocol = protocol
        self.close_after_reply = False
        # Set (once, before on_start) when the client's kind is known and it is served:
        # a refused TLS client never gets an event, even one pushed from another thread.
        self.started = False

    @property
    def form(self) -> str:
        """``text`` or ``json``: the form of the client's latest request."""
        return self._protocol.form

    @property
    def kind(self) -> str:
        """``framed``, ``lines``, or ``unknown`` before the client's first byte."""
        return self._protocol.kind

    def push(self, event: dict[str, Any]) -> None:
        """Send an event to this client, in the form of its latest request. Any thread.

        Before the session has started (its first byte is not in yet), or on a
        connection that is only refused (a TLS ClientHello), the event is dropped.
        """
        if self.started:
            self._transport.write(self._protocol.event(event))

    def close(self) -> None:
        """Close this session once the reply to the current request is sent."""
        self.close_after_reply = True


class _MessageHandler(StreamHandler):
    def __init__(self, service: MessageService) -> None:
        self._service = service
        self._protocol = ServerConnection(
            max_frame=service.max_frame,
            max_line=service.max_line,
            max_json=service.max_json,
            max_json_depth=service.max_json_depth,
        )
        self._busy = False
        self._paused = False
        self._eof = False
        self._closing = False
        self._backlog: deque[Request | BadRequest] = deque()
        self._command_named = service.commands.by_name.get  # live: later commands appear
        self._text_reply = self._protocol.text_reply
        self.session: Session
        self._context: Context

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self.session = self._service._add(transport, self._protocol)
        # One for the connection's life: a command's ctx is always this session and service.
        self._context = Context(self.session, self._service)
        trace = self._service.trace
        if trace is not None:
            peer = transport.peer
            self._protocol.trace = lambda direction, payload: trace(direction, peer, payload)

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol.kind == "unknown":
            if not protocol.detect(data):
                return
            if not protocol.tls_hello:  # a TLS client is only told so, never served
                # Greet before serving the first requests, in text form, however TCP cut them.
                self.session.started = True
                self._service.on_start(self.session)
        commands = protocol.receive_text_commands(data)
        if commands is None:
            for item in protocol.receive(data):
                self._submit(item)
            return
        # The fast path: what _submit() and _serve() do for text commands, without
        # building a request for each. It serves known commands that answer at once
        # (neither async nor blocking) and whose arguments bind as given; anything else
        # (an unknown command, bad arguments, a busy or closing session) goes through
        # _submit(), which answers exactly as for any other request. Its replies leave in
        # one send with the rest of this callback's writes: the runtime corks them.
        get, context = self._command_named, self._context
        text_reply, write = self._text_reply, self.transport.write
        session = self.session
        for name, rest in commands:
            command = get(name)
            if command is None or not command.inline or self._busy or self._closing:
                self._submit(TextCommand(name, rest))
                continue
            if rest and command.takes_rest:
                args = None  # the one argument is rest, as given: no binding to do
            else:
                args = command.quick_text(rest)
                if args is None:
                    self._serve(TextCommand(name, rest))  # binds as usual, refusing or converting
                    continue
                if command.takes_context:
                    args.insert(0, context)
            try:
                result = command.function(rest) if args is None else command.function(*args)
            except Exception as exc:  # noqa: BLE001 - a command's failure becomes its error reply
                self._answer_error(_TEXT, command, exc)
                continue
            # _answer(), inlined: a text client gets no reply to NO_REPLY.
            if result is not NO_REPLY and not self._closing:
                try:
                    reply = text_reply(result)
                except _UNSENDABLE as exc:
                    self._answer_error(_TEXT, command, exc)
                    continue
                write(reply)
                if session.close_after_reply:
                    self._close()

    def eof_received(self) -> None:
        self._eof = True
        for item in self._protocol.eof():
            self._submit(item)
        self._close_if_done()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closing = True
        self._service._remove(self.session)

    # -- serving requests in order ------------------------------------------------

    def _submit(self, item: Request | BadRequest) -> None:
        if self._closing:
            return
        if self._busy:
            self._backlog.append(item)
            if len(self._backlog) >= self._service.max_pipeline and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        self._serve(item)

    def _serve(self, item: Request | BadRequest) -> None:
        protocol, service = self._protocol, self._service
        if isinstance(item, BadRequest):
            self.transport.write(protocol.error(item, item.code, item.message))
            if item.fatal:
                self._close()
            return
        args: list[Any]
        if isinstance(item, ChatText):
            command, args = service.text_command, [item.text]
        else:
            name = item.name if isinstance(item, TextCommand) else item.cmd
            found = service.commands.get(name)
            if found is None:
                shown = name if len(name) <= 40 else name[:40] + "…"
                message = f"unknown command /{shown} (try /help)"
                self.transport.write(protocol.error(item, "unknown_command", message))
                return
            command = found
            try:
                if isinstance(item, TextCommand):
                    args = command.arguments_from_text(item.rest)
                elif item.line is not None:
                    args = command.arguments_from_text(item.line)
                else:
                    args = command.arguments_from_json(item.args)
            except CommandError as exc:
                self.transport.write(protocol.error(item, exc.code, exc.message))
                return
        if command.takes_context:
            args = [self._context, *args]
        if command.is_async or command.blocking:
            self._busy = True
            work = (
                command.function(*args)
                if command.is_async
                else asyncio.to_thread(command.function, *args)
            )
            self.transport.call_async(work, lambda result, error: self._done(item, result, error))
            return
        try:
            result = command.function(*args)
        except Exception as exc:  # noqa: BLE001 - a command's failure becomes its error reply
            self._answer_error(item, command, exc)
        else:
            self._answer(item, result, command)

    def _done(self, item: Request, result: Any, error: BaseException | None) -> None:
        self._busy = False
        if error is None:
            self._answer(item, result)
        elif isinstance(error, Exception):
            self._answer_error(item, None, error)
        while self._backlog and not self._busy and not self._closing:
            self._serve(self._backlog.popleft())
        if self._paused and len(self._backlog) < self._service.max_pipeline // 2:
            self._paused = False
            self.transport.resume_reading()
        self._close_if_done()

    def _answer(self, item: Request, result: Any, command: Command | None = None) -> None:
        if self._closing:
            return
        if result is NO_REPLY:
            if type(item) is not JsonRequest:
                return  # a text client sees the effect (its chat line, pushed back) instead
            result = None  # a JSON client still gets its reply, matched by id
        try:
            reply = self._protocol.reply(item, result)
        except _UNSENDABLE as exc:
            self._answer_error(item, command, exc)
            return
        self.transport.write(reply)
        if self.session.close_after_reply:
            self._close()

    def _answer_error(self, item: Request, command: Command | None, exc: Exception) -> None:
        if isinstance(exc, CommandError):
            code, message = exc.code, exc.message
        else:
            what = f"/{command.name}" if command else "the command"
            peer = format_address(*self.session.peer)
            self._service.logger.error("error in %s from %s", what, peer, exc_info=exc)
            code, message = "internal_error", f"internal error in {what} (logged on the server)"
        if not self._closing:
            self.transport.write(self._protocol.error(item, code, message))
            if self.session.close_after_reply:
                self._close()

    def _close(self) -> None:
        self._closing = True
        self._backlog.clear()
        self.transport.close()

    def _close_if_done(self) -> None:
        if self._eof and not self._busy and not self._backlog and not self._closing:
            self._close()


class MessageService(StreamService, CommandSet):
    """A message server: register commands with ``@service.command``; run on any runtime.

    With ``builtins=True`` it answers /help, /echo, /upper, /time, /ping and /quit.
    Plain text (a chat message) goes to :meth:`on_text`, which subclasses override.
    """

    name = "message"

    def __init__(
        self,
        *,
        name: str = "message",
        builtins: bool = True,
        max_frame: int | None = MAX_FRAME,
        max_line: int | None = MAX_LINE,
        max_json: int | None = MAX_JSON,
        max_json_depth: int | None = MAX_JSON_DEPTH,
        max_pipeline: int = MAX_PIPELINE,
        trace: Tracer | None = None,
    ) -> None:
        CommandSet.__init__(self)
        self.name = name
        self.max_frame = max_frame
        self.max_line = max_line
        self.max_json = max_json
        self.max_json_depth = max_json_depth
        self.max_pipeline = max_pipeline
        self.trace = trace
        self.logger = logger_for(self.name)
        self.sessions: dict[int, Session] = {}
        self._lock = threading.Lock()  # sessions come and go on many threads (thread runtime)
        self._numbers = itertools.count(1)
        self.commands: CommandSet = self
        #: Plain text is served as the command /say, so JSON clients can chat too.
        self.text_command = Command(self._say, "say", blocking=False)
        self.command(name="say")(self._say)
        if builtins:
            _add_builtins(self)

    def handler(self) -> StreamHandler:
        return _MessageHandler(self)

    def refusal(self, reason: str) -> bytes:
        # The client's kind is unknown this early; a frame is still readable text in nc.
        return encode_length_prefixed(f"ERR busy: {reason}".encode())

    def broadcast(self, event: dict[str, Any], *, exclude: Session | None = None) -> None:
        """Push ``event`` to every started session except ``exclude``."""
        with self._lock:
            targets = list(self.sessions.values())
        for session in targets:
            if session is not exclude:
                session.push(event)

    # -- hooks for subclasses ------------------------------------------------------

    def on_start(self, session: Session) -> None:
        """The client sent its first byte, so its kind is known: greet it here."""

    def on_end(self, session: Session) -> None:
        """The client is gone."""

    def _say(self, ctx: Context, text: str) -> Any:
        """Send a chat message to your room (what plain text does)."""
        return self.on_text(ctx, text)

    def on_text(self, ctx: Context, text: str) -> Any:
        """Plain text from a client (not a command). Without chat rooms, an error."""
        raise CommandError(
            "no_chat", "this server has no chat rooms; commands start with / (try /help)"
        )

    # -- bookkeeping -----------------------------------------------------------------

    def _add(self, transport: Transport, protocol: ServerConnection) -> Session:
        session = Session(next(self._numbers), transport, protocol)
        with self._lock:
            self.sessions[session.id] = session
        return session

    def _remove(self, session: Session) -> None:
        with self._lock:
            self.sessions.pop(session.id, None)
        self.on_end(session)


def _add_builtins(service: MessageService) -> None:
    @service.command
    def help(ctx: Context) -> str:
        """List the commands."""
        commands = list(ctx.service.commands)
        width = max(len(c.usage) for c in commands)
        return "\n".join(f"{c.usage:<{width}}  {c.summary}" for c in commands)

    @service.command
    def echo(text: str = "") -> str:
        """Send the text back."""
        return text

    @service.command
    def upper(text: str = "") -> str:
        """Send the text back in capitals."""
        return text.upper()

    @service.command
    def time() -> str:
        """The server's time (UTC, ISO 8601)."""
        return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")

    @service.command
    def ping() -> str:
        """Answer pong (to check the connection)."""
        return "pong"

    @service.command
    def quit(ctx: Context) -> str:
        """Say goodbye and close the connection."""
        ctx.session.close()
        return "bye"
