"""The chat's AI assistant: ``/ask QUESTION``, answered by a Chat Completions endpoint.

Any OpenAI-compatible endpoint answers (OpenAI, llama.cpp's ``llama-server``,
vLLM, Ollama, LM Studio ...). It is configured by three environment variables,
read by :meth:`AssistantConfig.from_env`:

- ``ENLACE_AI_URL``: the API's base URL, such as ``http://127.0.0.1:8000/v1``
  (the request goes to ``{url}/chat/completions``; a URL that already ends
  with ``/chat/completions`` is used as it is);
- ``ENLACE_AI_MODEL``: the model's name, as the endpoint knows it;
- ``ENLACE_AI_KEY``: sent as ``Authorization: Bearer KEY``; optional, since
  local servers usually need none.

:func:`install_assistant` adds ``/ask`` to a :class:`ChatService`. What the
asker's room sees::

    [general] ana: what is a socket?             the question: a message from the asker
    [general] assistant: A socket is one end...  the answer, once complete (kept in history)

The endpoint is asked for a stream (``"stream": true``, Server-Sent Events),
with a short system prompt and the room's last ``max_context`` messages as
context: the assistant's own earlier answers as ``assistant`` messages, the
people's as ``user`` messages written ``nick: text``. JSON clients in the room
also get the answer as it arrives, as ``assistant`` events in order::

    {"event": "assistant", "room": "general", "stream": "assistant-5f2c", "delta": "A sock", ...}

and then the final ``message`` event, which carries the same ``stream``. Text
clients (``nc``, a text-form ``enlace shell``) see only the final message: a
line per fragment would bury the conversation. The asker's own reply comes
when the answer is complete: a JSON asker gets the answer's text as its
``result``; a text asker gets no reply line, since the posted messages are the
answer. The asker's next requests wait for it (a client's requests are served
in order); other clients never wait: the answer streams on the event loop (on
the thread runtime, its helper loop). The answer belongs to the room: it still
comes if the asker disconnects meanwhile.

**Errors.** Refused before anything is posted, to the asker only:

- ``ai_unavailable``: no endpoint is configured (the message says how);
- ``ask_rate``: one ``/ask`` per ``ask_interval`` seconds per client;
- ``ai_busy``: ``max_pending`` answers are already in progress on this server;
- ``bad_arguments``, ``message_too_long``, ``no_room``: as for any chat message.

Once the question is posted, the room waits for an answer, so a failure is
told to everyone: the asker gets the error reply, everyone else in the room an
``assistant`` event with ``error`` and ``text`` (``* the assistant could not
answer ana: ...`` in text form), and nothing is kept in the history:

- ``ai_failed``: the endpoint is unreachable or refused the connection, timed
  out, answered with an HTTP error (its own message is quoted), or sent a
  stream that is malformed, ends too early, or holds no answer;
- ``answer_too_long``: the answer grew past ``max_answer`` bytes. It is
  refused, never cut: the stream is closed there and nothing is posted.

**Limits** (:mod:`enlace.limits`): connecting (:data:`AI_CONNECT_TIMEOUT`),
silence between reads (:data:`AI_READ_TIMEOUT`), the whole answer
(:data:`AI_TOTAL_TIMEOUT`), the answer's size (:data:`MAX_AI_ANSWER`), one
line of the stream (:data:`MAX_AI_LINE`), the context (:data:`MAX_AI_CONTEXT`),
questions per client (:data:`ASK_INTERVAL`) and answers at once
(:data:`MAX_AI_PENDING`). Control characters other than newline and tab are
removed from answers, so an endpoint cannot send terminal escapes to ``nc``
users.

No model runs in enlace's tests: they run ``tests/services/fake_chat_completions.py``,
a local HTTP server that speaks the Chat Completions wire format, streaming included.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from typing import TYPE_CHECKING, Any

from enlace.limits import (
    ASK_INTERVAL,
    MAX_AI_PENDING,
)
from enlace.protocol.ratelimit import TokenBucket
from enlace.services.chat import ChatService
from enlace.services.commands import CommandError, Context
from enlace.services.message import NO_REPLY, Session

if TYPE_CHECKING:
    pass

from enlace.services.completions import (
    AssistantConfig,
    AssistantConfigError,
    AssistantError,
    complete,
)

__all__ = [
    "SYSTEM_PROMPT",
    "Assistant",
    "AssistantConfig",
    "AssistantConfigError",
    "AssistantError",
    "complete",
    "install_assistant",
]

#: The default system prompt; ``{name}``, ``{room}`` and ``{nick}`` (the asker) are filled in.
SYSTEM_PROMPT = (
    "You are {name}, an assistant in the chat room #{room}. The people's messages are "
    "written 'nick: text'. Answer the last one, from {nick}, briefly and in plain text, "
    "in the language it is written in."
)

_NOT_CONFIGURED = (
    "the AI assistant is not configured: set ENLACE_AI_URL (and ENLACE_AI_MODEL, "
    "ENLACE_AI_KEY) to an OpenAI-compatible Chat Completions endpoint, for example "
    "ENLACE_AI_URL=http://127.0.0.1:8000/v1, and restart the server"
)

# -- the /ask command ---------------------------------------------------------------


class Assistant:
    """``/ask`` on one chat service; made by :func:`install_assistant`."""

    def __init__(
        self,
        service: ChatService,
        config: AssistantConfig | None,
        *,
        name: str,
        ask_interval: float | None,
        max_pending: int | None,
        system_prompt: str,
    ) -> None:
        self.service = service
        self.config = config
        self.name = name
        self.ask_interval = ask_interval  # None: no rate limit
        self.max_pending = max_pending  # None: no bound on answers at once
        self.system_prompt = system_prompt
        # Answers in progress. Only the event loop that runs /ask touches it (the
        # server's, or the thread runtime's one helper loop), so it needs no lock;
        # it also holds the tasks, which asyncio itself only references weakly.
        self._pending: set[asyncio.Task[str]] = set()

    @property
    def pending(self) -> int:
        """Answers in progress now."""
        return len(self._pending)

    async def ask(self, ctx: Context, question: str) -> Any:
        """Ask the AI assistant; the question and its answer go to your room."""
        config = self.config
        if config is None:
            raise CommandError("ai_unavailable", _NOT_CONFIGURED)
        service, session = self.service, ctx.session
        # The form of the latest request read, so this one's: read it before the
        # client's next requests (held back while the answer streams) can change it.
        json_form = session.form == "json"
        question = question.strip()
        if not question:
            raise CommandError("bad_arguments", "usage: /ask QUESTION")
        size, limit = len(question.encode()), service.max_message
        if limit is not None and size > limit:
            raise CommandError(
                "message_too_long", f"a message of {size} bytes exceeds the {limit}-byte limit"
            )
        room = service.room_of(session)
        if room is None:
            raise CommandError("no_room", "you are in no room: /join ROOM first")
        if self.max_pending is not None and len(self._pending) >= self.max_pending:
            raise CommandError(
                "ai_busy",
                f"the assistant is answering as many questions as this server allows "
                f"({self.max_pending}); ask again in a moment",
            )
        self._take_turn(session)
        nick = service.nick_of(session)
        earlier = service.recent(room, config.max_context)
        service.post(room, service.event("message", room=room, text=question, **{"from": nick}))
        stream = f"{self.name}-{secrets.token_hex(4)}"
        messages = self._messages(room, nick, earlier, question)
        task = asyncio.get_running_loop().create_task(
            self._answer(config, room, session, stream, messages)
        )
        self._pending.add(task)
        task.add_done_callback(self._forget)
        # Shielded: if the asker disconnects, the room still gets its answer.
        answer = await asyncio.shield(task)
        return answer if json_form else NO_REPLY

    # -- internals -------------------------------------------------------------------

    def _take_turn(self, session: Session) -> None:
        interval = self.ask_interval
        if interval is None:
            return
        bucket = session.data.get("ask_bucket")
        if not isinstance(bucket, TokenBucket):
            bucket = session.data["ask_bucket"] = TokenBucket(burst=1, rate=1 / interval)
        now = time.monotonic()
        if not bucket.take(now):
            wait = max(math.ceil(bucket.retry_after(now) * 10) / 10, 0.1)
            raise CommandError(
                "ask_rate", f"one /ask every {interval:g} s: ask again in {wait:.1f} s"
            )

    def _messages(
        self, room: str, nick: str, earlier: list[dict[str, Any]], question: str
    ) -> list[dict[str, str]]:
        prompt = self.system_prompt
        for field, value in (("{name}", self.name), ("{room}", room), ("{nick}", nick)):
            prompt = prompt.replace(field, value)
        turns: list[tuple[str, str]] = []
        for event in earlier:
            text = event.get("text")
            if event.get("event") != "message" or not isinstance(text, str):
                continue
            # Only the assistant's posts carry a stream: a person named like it is a person.
            if "stream" in event and event.get("from") == self.name:
                turns.append(("assistant", text))
            else:
                turns.append(("user", f"{event.get('from', '?')}: {text}"))
        turns.append(("user", f"{nick}: {question}"))
        # Many models' chat templates require user and assistant turns to alternate,
        # starting with the user: merge runs of one role, drop a leading answer.
        merged: list[dict[str, str]] = []
        for role, content in turns:
            if merged and merged[-1]["role"] == role:
                merged[-1]["content"] += "\n" + content
            elif merged or role == "user":
                merged.append({"role": role, "content": content})
        return [{"role": "system", "content": prompt}, *merged]

    async def _answer(
        self,
        config: AssistantConfig,
        room: str,
        asker: Session,
        stream: str,
        messages: list[dict[str, str]],
    ) -> str:
        service = self.service
        nick = service.nick_of(asker)

        def live(delta: str) -> None:
            event = service.event("assistant", room=room, stream=stream, delta=delta)
            for member in self.service.local_members(room):
                # Only JSON clients: in text form each fragment would be a line of its own.
                if member.form == "json":
                    member.push(event)

        try:
            text = await complete(config, messages, on_delta=live)
            service.post(
                room,
                service.event(
                    "message", room=room, text=text, stream=stream, **{"from": self.name}
                ),
            )
        except (AssistantError, CommandError) as exc:
            self._failed(room, asker, stream, exc.code, exc.message)
            raise CommandError(exc.code, exc.message) from None
        except Exception:
            service.logger.exception("error in /ask from %s", nick)
            self._failed(
                room, asker, stream, "internal_error", "internal error (logged on the server)"
            )
            raise
        return text

    def _failed(self, room: str, asker: Session, stream: str, code: str, message: str) -> None:
        service = self.service
        nick = service.nick_of(asker)
        service.logger.warning("/ask from %s in %s: %s: %s", nick, room, code, message)
        event = service.event(
            "assistant",
            room=room,
            stream=stream,
            error={"code": code, "message": message},
            text=f"the assistant could not answer {nick}: {message}",
        )
        # The asker gets the error as its reply instead.
        for member in self.service.local_members(room):
            if member is not asker:
                member.push(event)

    def _forget(self, task: asyncio.Task[str]) -> None:
        self._pending.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the asker got it, or has gone


def install_assistant(
    service: ChatService,
    config: AssistantConfig | None,
    *,
    name: str = "assistant",
    ask_interval: float | None = ASK_INTERVAL,
    max_pending: int | None = MAX_AI_PENDING,
    system_prompt: str = SYSTEM_PROMPT,
) -> Assistant:
    """Add ``/ask QUESTION`` to ``service``, answered by the endpoint of ``config``.

    With ``config=None`` (:meth:`AssistantConfig.from_env` found no
    ``ENLACE_AI_URL``) ``/ask`` still exists, and answers ``ai_unavailable``
    with how to configure it. ``name`` is the sender of the answers;
    ``ask_interval`` is the seconds a client waits between two questions and
    ``max_pending`` the answers in progress at once on this server (``None``
    disables either). ``system_prompt`` may contain ``{name}``, ``{room}`` and
    ``{nick}`` (the asker). Returns the :class:`Assistant`.
    """
    if ask_interval is not None and not (math.isfinite(ask_interval) and ask_interval > 0):
        raise ValueError(
            f"ask_interval must be a positive number of seconds or None, not {ask_interval!r}"
        )
    if max_pending is not None and max_pending < 1:
        raise ValueError(f"max_pending must be 1 or more, or None, not {max_pending!r}")
    assistant = Assistant(
        service,
        config,
        name=name,
        ask_interval=ask_interval,
        max_pending=max_pending,
        system_prompt=system_prompt,
    )
    service.command(name="ask")(assistant.ask)
    service.reserved_nicks.add(name)  # nobody may speak as the assistant, nor look like it
    return assistant
