"""Tests for the message server's commands in :mod:`enlace.services.commands`.

A command is a plain function registered on a :class:`CommandSet`; its
signature decides its usage string, whether it receives a ``ctx``, and how the
rest of a text command line or a JSON ``args`` array become its arguments.
Registration refuses what cannot be called from the wire (keyword-only
parameters, unsupported types, async and blocking at once), and bad arguments
become a :class:`CommandError` with the code ``bad_arguments``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from enlace.exceptions import EnlaceError
from enlace.protocol.envelope import JsonRequest, TextCommand, parse_payload
from enlace.services.commands import Command, CommandError, CommandSet, Context

# ------------------------------------------------------------------------------------ registration


def test_decorator_without_arguments() -> None:
    commands = CommandSet()

    def upper(text: str) -> str:
        """Send the text back in capitals."""
        return text.upper()

    assert commands.command(upper) is upper  # the function is returned unchanged
    command = commands.get("upper")
    assert isinstance(command, Command)
    assert command.name == "upper"
    assert command.function is upper
    assert not command.blocking
    assert not command.is_async
    assert not command.takes_context
    assert "upper" in commands


def test_decorator_with_arguments() -> None:
    commands = CommandSet()

    @commands.command(name="Shout", blocking=True)
    def loud(text: str) -> str:
        return text.upper()

    assert loud("a") == "A"
    assert commands.get("loud") is None
    assert "loud" not in commands
    command = commands.get("shout")
    assert command is not None
    assert command.name == "shout"
    assert command.blocking
    assert command.usage == "/shout TEXT"


def test_decorator_with_empty_parentheses() -> None:
    commands = CommandSet()

    @commands.command()
    def Ping() -> str:  # the name is lower-cased on registration
        return "pong"

    assert commands.get("ping") is not None
    assert commands.get("Ping") is None


def test_iteration_is_sorted_by_name() -> None:
    commands = CommandSet()
    for name in ("zeta", "Alpha", "mid"):
        commands.command(lambda: None, name=name)
    assert [c.name for c in commands] == ["alpha", "mid", "zeta"]


def test_registering_a_name_again_replaces_it() -> None:
    commands = CommandSet()
    commands.command(lambda: 1, name="x")
    commands.command(lambda a: a, name="X")
    assert [c.usage for c in commands] == ["/x A"]


def test_async_detected() -> None:
    commands = CommandSet()

    @commands.command
    async def slow(text: str) -> str:
        return text

    command = commands.get("slow")
    assert command is not None
    assert command.is_async
    assert not command.blocking


def test_async_and_blocking_is_rejected() -> None:
    commands = CommandSet()

    async def slow() -> None:
        return None

    with pytest.raises(ValueError, match="/slow: an async command cannot also be blocking"):
        commands.command(slow, blocking=True)
    assert "slow" not in commands


def test_keyword_only_parameter_is_rejected() -> None:
    def f(a: str, *, b: str) -> None: ...

    with pytest.raises(ValueError, match="/f: parameter b must be positional"):
        CommandSet().command(f)


@pytest.mark.parametrize("which", ["args", "kwargs"])
def test_variadic_parameters_are_rejected(which: str) -> None:
    def f_args(*args: str) -> None: ...

    def f_kwargs(**kwargs: str) -> None: ...

    function = f_args if which == "args" else f_kwargs
    with pytest.raises(ValueError, match=f"parameter {which} must be positional"):
        CommandSet().command(function, name="f")


def test_positional_only_parameter_is_accepted() -> None:
    def f(a: int, /, b: str = "x") -> None: ...

    command = Command(f, "f", blocking=False)
    assert command.usage == "/f A [B]"
    assert command.arguments_from_text("1") == [1, "x"]


@pytest.mark.parametrize("annotation", [list, dict, bytes, "list[str]", "int | None", "object"])
def test_unsupported_parameter_type_is_rejected(annotation: object) -> None:
    def f(a: str, b: Any) -> None: ...

    f.__annotations__ = {"a": "str", "b": annotation}
    with pytest.raises(ValueError, match="/f: parameter b must be str, int, float or bool"):
        CommandSet().command(f)


def test_string_annotations_are_resolved() -> None:
    def f(a, b, c, d) -> None:  # type: ignore[no-untyped-def]
        ...

    f.__annotations__ = {"a": "str", "b": "int", "c": "float", "d": "bool"}
    command = Command(f, "f", blocking=False)
    assert command.arguments_from_text("x 2 3.5 yes") == ["x", 2, 3.5, True]


def test_unannotated_parameters_are_strings() -> None:
    command = Command(lambda a, b="z": None, "f", blocking=False)
    assert command.usage == "/f A [B]"
    assert command.arguments_from_text("1 2") == ["1", "2"]
    assert command.arguments_from_json(["1"]) == ["1", "z"]
    with pytest.raises(CommandError):
        command.arguments_from_json([1])


# ------------------------------------------------------------------------------- usage and summary


def test_usage_marks_optional_parameters() -> None:
    def add(a: int, b: int = 0) -> int:
        return a + b

    assert Command(add, "add", blocking=False).usage == "/add A [B]"


def test_usage_of_a_command_without_parameters() -> None:
    assert Command(lambda: None, "ping", blocking=False).usage == "/ping"


def test_usage_leaves_out_ctx() -> None:
    def join(ctx: Context, room: str, password: str = "") -> None: ...

    assert Command(join, "join", blocking=False).usage == "/join ROOM [PASSWORD]"


def test_summary_is_the_first_line_of_the_docstring() -> None:
    def f() -> None:
        """Do the thing.

        At length, with details.
        """

    def g() -> None:
        """
        Indented first line.
        Second line.
        """

    def h() -> None: ...

    assert Command(f, "f", blocking=False).summary == "Do the thing."
    assert Command(g, "g", blocking=False).summary == "Indented first line."
    assert Command(h, "h", blocking=False).summary == ""


# ------------------------------------------------------------------------------------------- ctx


def test_ctx_by_name() -> None:
    def f(ctx, text: str) -> None:  # type: ignore[no-untyped-def]
        ...

    command = Command(f, "f", blocking=False)
    assert command.takes_context
    assert command.usage == "/f TEXT"
    assert command.arguments_from_text("a b") == ["a b"]
    assert command.arguments_from_json(["a"]) == ["a"]


def test_ctx_by_annotation() -> None:
    def f(session: Context, n: int) -> None: ...

    command = Command(f, "f", blocking=False)
    assert command.takes_context
    assert command.usage == "/f N"
    assert command.arguments_from_text("3") == [3]


def test_ctx_by_string_annotation_when_others_cannot_be_resolved() -> None:
    # eval_str fails on the undefined return annotation, so the strings are used as they are.
    for context in ("Context", "commands.Context", "enlace.services.commands.Context"):

        def f(session, n):  # type: ignore[no-untyped-def]
            ...

        f.__annotations__ = {"session": context, "n": "int", "return": "Undefined"}
        command = Command(f, "f", blocking=False)
        assert command.takes_context, context
        assert command.usage == "/f N"


def test_ctx_only_as_the_first_parameter() -> None:
    def f(text: str, ctx: str = "") -> None: ...

    command = Command(f, "f", blocking=False)
    assert not command.takes_context
    assert command.usage == "/f TEXT [CTX]"


def test_a_first_parameter_named_otherwise_is_an_argument() -> None:
    def f(context: str) -> None: ...

    assert not Command(f, "f", blocking=False).takes_context


def test_context_push_sends_to_the_session() -> None:
    pushed: list[dict[str, Any]] = []

    class Session:
        def push(self, event: dict[str, Any]) -> None:
            pushed.append(event)

    Context(Session(), object()).push({"event": "x"})  # type: ignore[arg-type]
    assert pushed == [{"event": "x"}]


# ---------------------------------------------------------------------------- arguments from text


def make(function: Any, name: str = "f") -> Command:
    return Command(function, name, blocking=False)


def test_text_last_parameter_takes_the_rest() -> None:
    def f(a: str, b: str) -> None: ...

    command = make(f)
    assert command.arguments_from_text("uno dos tres") == ["uno", "dos tres"]
    assert command.arguments_from_text("uno   dos  tres") == ["uno", "dos  tres"]
    assert command.arguments_from_text("uno dos") == ["uno", "dos"]


def test_text_single_parameter_keeps_the_inner_spaces() -> None:
    def say(text: str) -> None: ...

    assert make(say).arguments_from_text("hola   mundo") == ["hola   mundo"]


def test_text_words_split_on_any_whitespace() -> None:
    def f(a: str, b: str, c: str) -> None: ...

    assert make(f).arguments_from_text("x\ty\u00a0z w") == ["x", "y", "z w"]


def test_text_command_without_parameters() -> None:
    command = make(lambda: None, "ping")
    assert command.arguments_from_text("") == []
    with pytest.raises(CommandError) as info:
        command.arguments_from_text("extra")
    assert info.value.code == "bad_arguments"
    assert info.value.message == "/ping takes no arguments"


def test_text_whitespace_only_is_refused_without_parameters() -> None:
    # Text given as it is; on the wire a rest or a JSON "line" is stripped before it
    # gets here (protocol.md 5.1), so `/ping   ` answers pong.
    with pytest.raises(CommandError, match="/ping takes no arguments"):
        make(lambda: None, "ping").arguments_from_text("   ")
    assert parse_payload(b'{"cmd":"ping","line":"   "}') == JsonRequest(None, "ping", [], "")
    assert parse_payload(b"/ping   ") == TextCommand("ping", "")


def test_text_whitespace_only_gives_no_words() -> None:
    def f(a: str = "d") -> None: ...

    assert make(f).arguments_from_text(" \t ") == ["d"]


def test_text_leading_whitespace_skipped_trailing_kept() -> None:
    def f(nick: str, text: str) -> None: ...

    assert make(f).arguments_from_text("  ana  hola  a todos  ") == ["ana", "hola  a todos  "]


def test_text_missing_required_argument() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    command = make(add, "add")
    for rest, missing in (("", "a"), ("1", "b")):
        with pytest.raises(CommandError) as info:
            command.arguments_from_text(rest)
        assert info.value.code == "bad_arguments"
        assert info.value.message == f"missing {missing}; usage: /add A B"


def test_text_defaults() -> None:
    def f(a: str, b: int = 5, c: bool = False, d: float = 0.5) -> None: ...

    command = make(f)
    assert command.arguments_from_text("x") == ["x", 5, False, 0.5]
    assert command.arguments_from_text("x 1") == ["x", 1, False, 0.5]
    assert command.arguments_from_text("x 1 on 2") == ["x", 1, True, 2.0]


def test_text_default_none_is_kept() -> None:
    def f(a=None) -> None:  # type: ignore[no-untyped-def]
        ...

    assert make(f).arguments_from_text("") == [None]


@pytest.mark.parametrize(
    ("word", "value"),
    [("0", 0), ("42", 42), ("-7", -7), ("+3", 3)],
)
def test_text_int(word: str, value: int) -> None:
    def f(n: int) -> None: ...

    result = make(f).arguments_from_text(word)
    assert result == [value]
    assert type(result[0]) is int


@pytest.mark.parametrize(
    ("word", "value"),
    [("1", 1.0), ("2.5", 2.5), ("-0.5", -0.5), ("1e3", 1000.0), (".5", 0.5), ("7.", 7.0)],
)
def test_text_float(word: str, value: float) -> None:
    def f(x: float) -> None: ...

    result = make(f).arguments_from_text(word)
    assert result == [value]
    assert type(result[0]) is float


@pytest.mark.parametrize("word", ["nan", "inf", "-Infinity", "1e400", "1_000", "\u0663", "0x10"])
def test_text_numbers_are_plain_finite_ascii(word: str) -> None:
    # Python's int() and float() accept most of these; DESIGN.md rules out NaN and Infinity.
    def f(x: float) -> None: ...

    def g(n: int) -> None: ...

    with pytest.raises(CommandError) as caught:
        make(f).arguments_from_text(word)
    assert caught.value.code == "bad_arguments"
    if word not in ("1e400", "nan", "inf", "-Infinity"):
        with pytest.raises(CommandError):
            make(g).arguments_from_text(word)


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("true", True),
        ("YES", True),
        ("On", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("off", False),
        ("0", False),
    ],
)
def test_text_bool(word: str, value: bool) -> None:
    def f(flag: bool) -> None: ...

    assert make(f).arguments_from_text(word) == [value]


@pytest.mark.parametrize(
    ("kind", "word", "article"),
    [
        ("int", "x", "an integer"),
        ("int", "1.5", "an integer"),
        ("int", "1 2", "an integer"),  # the last parameter takes the rest
        ("float", "abc", "a number"),
        ("float", "1,5", "a number"),
        ("bool", "2", "true or false"),
        ("bool", "si", "true or false"),
        ("bool", "", "true or false"),
    ],
)
def test_text_conversion_errors(kind: str, word: str, article: str) -> None:
    def f(v):  # type: ignore[no-untyped-def]
        ...

    f.__annotations__ = {"v": kind}
    command = make(f)
    if word == "":
        # Nothing given is "missing", not a bad value.
        with pytest.raises(CommandError, match="missing v"):
            command.arguments_from_text(word)
        with pytest.raises(CommandError, match=f"v must be {article}; usage: /f V"):
            command.arguments_from_json([""])
        return
    with pytest.raises(CommandError) as info:
        command.arguments_from_text(word)
    assert info.value.code == "bad_arguments"
    assert info.value.message == f"v must be {article}; usage: /f V"


def test_text_conversion_error_names_the_parameter() -> None:
    def add(a: int, b: int = 0) -> None: ...

    with pytest.raises(CommandError, match=r"^b must be an integer; usage: /add A \[B\]$"):
        make(add, "add").arguments_from_text("1 dos")


# ---------------------------------------------------------------------------- arguments from JSON


def typed() -> Command:
    def f(s: str, i: int, x: float, b: bool = True) -> None: ...

    return make(f)


def test_json_exact_types() -> None:
    assert typed().arguments_from_json(["a", 1, 2.5, False]) == ["a", 1, 2.5, False]
    assert typed().arguments_from_json(["", -1, -0.0]) == ["", -1, -0.0, True]


def test_json_int_for_float_is_converted() -> None:
    result = typed().arguments_from_json(["a", 1, 3])
    assert result == ["a", 1, 3.0, True]
    assert type(result[2]) is float


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a", True, 1.0], "i must be an integer"),
        (["a", 1.0, 1.0], "i must be an integer"),
        (["a", "1", 1.0], "i must be an integer"),
        (["a", None, 1.0], "i must be an integer"),
        (["a", 1, True], "x must be a number"),
        (["a", 1, "1.5"], "x must be a number"),
        ([1, 1, 1.0], "s must be a string"),
        ([None, 1, 1.0], "s must be a string"),
        ([["a"], 1, 1.0], "s must be a string"),
        (["a", 1, 1.0, 1], "b must be true or false"),
        (["a", 1, 1.0, 0], "b must be true or false"),
        (["a", 1, 1.0, "true"], "b must be true or false"),
    ],
)
def test_json_wrong_types(args: list[Any], message: str) -> None:
    with pytest.raises(CommandError) as info:
        typed().arguments_from_json(args)
    assert info.value.code == "bad_arguments"
    assert info.value.message == f"{message}; usage: /f S I X [B]"


def test_json_too_many_arguments() -> None:
    with pytest.raises(CommandError) as info:
        typed().arguments_from_json(["a", 1, 1.0, True, "extra"])
    assert (info.value.code, info.value.message) == (
        "bad_arguments",
        "/f takes at most 4 arguments",
    )
    with pytest.raises(CommandError, match="/ping takes at most 0 arguments"):
        make(lambda: None, "ping").arguments_from_json([1])
    assert make(lambda: None, "ping").arguments_from_json([]) == []


def test_json_missing_arguments() -> None:
    with pytest.raises(CommandError) as info:
        typed().arguments_from_json(["a"])
    assert (info.value.code, info.value.message) == (
        "bad_arguments",
        "missing i; usage: /f S I X [B]",
    )


def test_json_large_and_special_values() -> None:
    def f(i: int, x: float) -> None: ...

    assert make(f).arguments_from_json([2**70, 2**70]) == [2**70, float(2**70)]
    result = make(f).arguments_from_json([0, 1e308])
    assert math.isclose(result[1], 1e308)


# ------------------------------------------------------------------------------------ CommandError


def test_command_error_carries_code_and_message() -> None:
    error = CommandError("not_found", "no such room")
    assert error.code == "not_found"
    assert error.message == "no such room"
    assert str(error) == "no such room"
    assert isinstance(error, EnlaceError)


def test_command_error_code_is_per_instance() -> None:
    assert CommandError("a", "x").code == "a"
    assert CommandError("b", "y").code == "b"
