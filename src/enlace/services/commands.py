"""Commands of the message server: plain functions, registered by decorator.

A command is a function whose parameters are its arguments::

    @server.command
    def upper(text: str) -> str:
        "Send the text back in capitals."
        return text.upper()

The same function answers ``/upper hola servidor`` (text: the rest of the line
is split into as many words as the function has parameters, the last one
taking the remainder) and ``{"cmd": "upper", "args": ["hola servidor"]}``
(JSON: positional arguments). Parameters may be ``str``, ``int``, ``float`` or
``bool``; defaults make them optional. A first parameter named ``ctx`` (or
annotated :class:`Context`) receives the calling session and the server, for
commands that push events. ``async def`` commands are awaited; commands marked
``blocking=True`` run in a worker thread so they cannot stall other clients.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from enlace.exceptions import EnlaceError

if TYPE_CHECKING:
    from enlace.services.message import MessageService, Session

__all__ = ["Command", "CommandError", "CommandSet", "Context"]

F = TypeVar("F", bound=Callable[..., Any])
_REQUIRED = inspect.Parameter.empty
_TYPES: dict[Any, type] = {
    str: str, "str": str, int: int, "int": int, float: float, "float": float,
    bool: bool, "bool": bool, _REQUIRED: str,
}  # fmt: skip
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


class CommandError(EnlaceError):
    """Raise from a command to answer with an error of your own ``code``.

    Any other exception becomes an ``internal_error`` reply (and a logged
    traceback); the connection and the server carry on either way.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Context:
    """What a command taking ``ctx`` receives: who called, and on which server."""

    session: Session
    service: MessageService

    def push(self, event: dict[str, Any]) -> None:
        """Send an event to the calling client."""
        self.session.push(event)


@dataclass(frozen=True)
class _Parameter:
    name: str
    kind: type
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def from_text(self, text: str, usage: str) -> Any:
        if self.kind is str:
            return text
        if self.kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
        # Python's int() and float() also take "1_000", "٣", "nan" and "inf";
        # an argument is plain ASCII decimal notation and a finite number.
        elif (_INTEGER if self.kind is int else _NUMBER).fullmatch(text):
            value = self.kind(text)
            if self.kind is int or math.isfinite(value):  # "1e400" overflows to inf
                return value
        raise CommandError("bad_arguments", f"{self.name} must be {self._article}; usage: {usage}")

    def from_json(self, value: Any, usage: str) -> Any:
        # bool is a subclass of int in Python, but true is not a number in JSON.
        if isinstance(value, bool) != (self.kind is bool):
            ok = False
        else:
            ok = isinstance(value, self.kind) or (self.kind is float and isinstance(value, int))
        if not ok:
            raise CommandError(
                "bad_arguments", f"{self.name} must be {self._article}; usage: {usage}"
            )
        return float(value) if self.kind is float else value

    @property
    def _article(self) -> str:
        return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[
            self.kind
        ]


class Command:
    """A registered command: its function, arguments, and how to call it."""

    def __init__(self, function: Callable[..., Any], name: str, *, blocking: bool) -> None:
        self.function = function
        self.name = name
        self.blocking = blocking
        self.is_async = inspect.iscoroutinefunction(function)
        if self.is_async and blocking:
            raise ValueError(f"/{name}: an async command cannot also be blocking")
        #: Whether it answers at once, as a plain call (neither async nor blocking).
        self.inline = not (self.is_async or blocking)
        doc = inspect.getdoc(function) or ""
        self.summary = doc.splitlines()[0] if doc else ""
        try:
            signature = inspect.signature(function, eval_str=True)
        except NameError:
            signature = inspect.signature(function)
        params = list(signature.parameters.values())
        self.takes_context = bool(params) and (
            params[0].name == "ctx"
            or params[0].annotation in (Context, "Context")
            or str(params[0].annotation).endswith(".Context")
        )
        if self.takes_context:
            params = params[1:]
        self._params: list[_Parameter] = []
        for param in params:
            if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                raise ValueError(f"/{name}: parameter {param.name} must be positional")
            kind = _TYPES.get(param.annotation)
            if kind is None:
                raise ValueError(f"/{name}: parameter {param.name} must be str, int, float or bool")
            self._params.append(_Parameter(param.name, kind, param.default))
        # Most commands take text only; their text arguments need no conversion.
        self._text_only = all(p.kind is str for p in self._params)
        self._defaults = [p.default for p in self._params]
        self._required = sum(1 for p in self._params if p.required)
        words = [p.name.upper() if p.required else f"[{p.name.upper()}]" for p in self._params]
        self.usage = " ".join([f"/{name}", *words])
        #: :meth:`arguments_from_text` for a stripped ``rest`` in the common case, made
        #: ahead for the message server's fast path: ``None`` where that method would
        #: convert or refuse (the caller then runs it, and it says why).
        self.quick_text = self._quick_text_binder()
        #: Whether a non-empty ``rest`` is the whole argument list as it stands (one
        #: ``str`` parameter, no ``ctx``): the fast path then calls ``function(rest)``.
        self.takes_rest = not self.takes_context and len(self._params) == 1 and self._text_only

    def _quick_text_binder(self) -> Callable[[str], list[Any] | None]:
        count, required, defaults = len(self._params), self._required, self._defaults
        if not self._text_only:
            return lambda rest: None
        if count == 0:
            return lambda rest: None if rest else []
        if count == 1:
            missing = None if required else defaults
            return lambda rest: [rest] if rest else missing and [*missing]

        def bind(rest: str) -> list[Any] | None:
            words = rest.split(None, count - 1) if rest else []
            return words + defaults[len(words) :] if len(words) >= required else None

        return bind

    def arguments_from_text(self, rest: str) -> list[Any]:
        """Split the rest of a text command into arguments: the last one takes the remainder."""
        params = self._params
        if not params:
            if rest:
                raise CommandError("bad_arguments", f"/{self.name} takes no arguments")
            return []
        words = rest.split(None, len(params) - 1) if rest else []
        if len(words) > len(params):
            raise CommandError("bad_arguments", f"too many arguments; usage: {self.usage}")
        if self._text_only and len(words) >= self._required:
            return words + self._defaults[len(words) :]
        return self._bind(words, lambda param, word: param.from_text(word, self.usage))

    def arguments_from_json(self, args: list[Any]) -> list[Any]:
        """Check JSON arguments against the parameters."""
        if len(args) > len(self._params):
            raise CommandError(
                "bad_arguments", f"/{self.name} takes at most {len(self._params)} arguments"
            )
        return self._bind(args, lambda param, value: param.from_json(value, self.usage))

    def _bind(self, values: list[Any], convert: Callable[[_Parameter, Any], Any]) -> list[Any]:
        bound = [convert(param, value) for param, value in zip(self._params, values, strict=False)]
        for param in self._params[len(values) :]:
            if param.required:
                raise CommandError("bad_arguments", f"missing {param.name}; usage: {self.usage}")
            bound.append(param.default)
        return bound


class CommandSet:
    """The commands of one server, by name."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def command(
        self, function: F | None = None, /, *, name: str | None = None, blocking: bool = False
    ) -> Any:
        """Register ``function`` as a command (``/name``; default: the function's name)."""

        def register(function: F) -> F:
            command_name = (name or function.__name__).lower()
            self._commands[command_name] = Command(function, command_name, blocking=blocking)
            return function

        return register if function is None else register(function)

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    @property
    def by_name(self) -> Mapping[str, Command]:
        """The commands by name, live: a command registered later appears in it."""
        return self._commands

    def __iter__(self) -> Iterator[Command]:
        return iter(sorted(self._commands.values(), key=lambda command: command.name))

    def __contains__(self, name: str) -> bool:
        return name in self._commands
